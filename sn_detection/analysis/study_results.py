"""The norm study's results from its run records: per norm the final AP as mean +- std over seeds,
time and memory (:func:`table_rows`), as CSV and markdown, the learned SN shares per part, and the
curves (AP and loss against iteration) as figures.

A record is a run's ``run.json`` (``sn_detection.study``): ``status`` "finished" (``final``,
``curves``, ``time_per_iter``, ``peak_memory_mib``, ``settings``, ...) or "failed" (``exit_status``,
``log_tail``). Failed runs count as missing: the table says how many runs each row averages.
"""

import csv
import io
import math
import os
import statistics
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..layers.switch_norm import BRANCHES
from .metrics import METRICS, TASKS
from .plots import Band, curves_figure, png_bytes
from .shares import STATS
from .tables import PARTS_HEADER, parts_rows, sparse_table

Record = Dict[str, Any]
FINISHED, FAILED = "finished", "failed"


def finished(records: Sequence[Record], norm: Optional[str] = None) -> List[Record]:
    """The finished runs among ``records`` (of ``norm`` if given)."""
    return [
        r for r in records if r.get("status") == FINISHED and (norm is None or r["norm"] == norm)
    ]


def mean_std(values: Sequence[Optional[float]]) -> Tuple[float, float]:
    """(mean, sample std) of the finite values (std 0 for one value; NaN, NaN for none)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table_rows(records: Sequence[Record], norms: Sequence[str], seeds: int) -> List[Dict[str, Any]]:
    """One row per norm: ``runs`` (finished) of ``planned`` (``seeds``), ``<task>_<metric>``
    (mean, std) over the finished seeds, time per iteration and peak memory."""
    rows = []
    for norm in norms:
        runs = finished(records, norm)
        row: Dict[str, Any] = {"norm": norm, "runs": len(runs), "planned": seeds}
        for _, label in TASKS:
            for m in METRICS:
                row[f"{label}_{m}"] = mean_std(
                    [r["final"][label][m] for r in runs if label in r["final"]]
                )
        row["time_per_iter_s"] = mean_std([r["time_per_iter"] for r in runs])
        row["peak_memory_mib"] = mean_std([r["peak_memory_mib"] for r in runs])
        row["peak_memory_kind"] = runs[0]["peak_memory_kind"] if runs else ""
        rows.append(row)
    return rows


def _value_columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    keys = [f"{label}_{m}" for _, label in TASKS for m in METRICS]
    keys = [k for k in keys if any(not math.isnan(r[k][0]) for r in rows)]
    return keys + ["time_per_iter_s", "peak_memory_mib"]


def results_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """The table as CSV: norm, runs, planned, ``<column>_mean``/``_std``, peak memory kind; empty
    cells where no run of the norm finished."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _value_columns(rows)
    writer.writerow(
        [
            "norm",
            "runs",
            "planned",
            *(f"{c}_{s}" for c in columns for s in ("mean", "std")),
            "peak_memory",
        ]
    )
    for r in rows:
        cells = ["" if math.isnan(x) else f"{x:.4f}" for c in columns for x in r[c]]
        writer.writerow([r["norm"], r["runs"], r["planned"], *cells, r["peak_memory_kind"]])
    return out.getvalue()


def shares_summary(records: Sequence[Record], norm: str) -> Dict[str, Any]:
    """The per-part SN shares of ``norm``'s finished runs, averaged over seeds; for sparse SN,
    also the part's ``"ssn"`` choices and fixed counts (``analysis.shares.sparse_summary``),
    averaged over seeds."""
    summaries = [r["sn_shares"] for r in finished(records, norm) if "sn_shares" in r]
    out: Dict[str, Any] = OrderedDict()
    for part in summaries[0] if summaries else []:
        out[part] = {
            "layers": summaries[0][part]["layers"],
            **{
                s: {b: statistics.fmean(x[part][s][b] for x in summaries) for b in BRANCHES}
                for s in STATS
            },
        }
        ssn = [x[part]["ssn"] for x in summaries if "ssn" in x.get(part, {})]
        if ssn:
            out[part]["ssn"] = {
                key: (
                    {b: statistics.fmean(c[key][b] for c in ssn) for b in BRANCHES}
                    if isinstance(value, dict)
                    else statistics.fmean(c[key] for c in ssn)
                )
                for key, value in ssn[0].items()
            }
    return out


def trained_settings(records: Sequence[Record]) -> str:
    """What the finished runs were trained with, from their records: iterations and the
    overrides common to every run."""
    runs = finished(records)
    iterations = sorted({r["settings"]["config"]["SOLVER.MAX_ITER"] for r in runs})
    overrides = {tuple(r["settings"]["overrides"]) for r in runs}
    text = f"{', '.join(map(str, iterations)) or 'no'} iterations"
    if len(overrides) == 1:
        common = " ".join(next(iter(overrides)))
        text += f", overrides `{common}`" if common else ", no overrides"
    return text


def results_markdown(
    rows: Sequence[Dict[str, Any]],
    records: Sequence[Record],
    config_file: str,
    num_gpus: int,
    command: str,
) -> str:
    """The table in markdown, labelled with the settings the runs were trained with, the runs
    that failed (with where their log is), and the learned shares of the SN norms."""
    columns = _value_columns(rows)
    kind = next((r["peak_memory_kind"] for r in rows if r["peak_memory_kind"]), "")
    names = {"time_per_iter_s": "s/iter", "peak_memory_mib": f"peak memory (MiB, {kind})"}
    header = [names.get(c, c.replace("_", " ")) for c in columns]
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"Norm study of `{os.path.relpath(config_file)}`, seeds {', '.join(map(str, seeds))}, "
        f"{trained_settings(records)}, {num_gpus} process(es) per run. Mean ± std over the "
        "finished seeds; AP in percent.",
        "",
        f"Command: `{command}`",
        "",
        "| norm | runs | " + " | ".join(header) + " |",
        "|---|---|" + "---|" * len(header),
    ]
    for r in rows:
        cells = []
        for c in columns:
            mean, std = r[c]
            digits = 3 if c == "time_per_iter_s" else 0 if c == "peak_memory_mib" else 1
            cells.append("missing" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}")
        runs = f"{r['runs']}" if r["runs"] == r["planned"] else f"{r['runs']} of {r['planned']}"
        lines.append(f"| {r['norm']} | {runs} | " + " | ".join(cells) + " |")
    failed = [r for r in records if r.get("status") == FAILED]
    if failed:
        lines += ["", "Failed runs (not in the table; a rerun trains them again):", ""]
        lines += [
            f"- {r['norm']} seed {r['seed']}: {r['error']}; log: `{r['run_dir']}/train.log`"
            for r in failed
        ]
    for row in rows:
        shares = shares_summary(records, row["norm"])
        if shares:
            lines += [
                "",
                f"Learned shares of {row['norm']} at the end of training (percent, mean over the "
                "part's layers and over seeds):",
                "",
                *PARTS_HEADER,
                *parts_rows(shares),
            ]
            sparse = sparse_table(shares)
            if sparse:
                lines += [
                    "",
                    f"Sparse SN choices of {row['norm']} at the end of training (layers per "
                    "chosen statistic and fixed layers, mean over seeds):",
                    "",
                    *sparse,
                ]
    return "\n".join(lines) + "\n"


def band(records: Sequence[Record], norm: str, curve: str) -> Optional[Band]:
    """(iterations, mean, low, high) of ``curve`` over ``norm``'s finished seeds, at the
    iterations every such seed has; None if there are none."""
    series = [dict(map(tuple, r["curves"].get(curve, []))) for r in finished(records, norm)]
    if not series:
        return None
    its = sorted(set.intersection(*(set(s) for s in series)))
    if not its:
        return None
    values = [[s[i] for s in series] for i in its]
    return (
        its,
        [statistics.fmean(v) for v in values],
        [min(v) for v in values],
        [max(v) for v in values],
    )


def curves_pngs(records: Sequence[Record], norms: Sequence[str], seeds: int) -> Dict[str, bytes]:
    """``ap_curve.png`` (a panel per task with AP) and ``loss.png``: per norm the mean over
    seeds and a band from the lowest to the highest seed."""
    note = f"band: lowest to highest of {seeds} seed(s)"

    def panels(curves: Sequence[Tuple[str, str]]) -> List[Tuple[str, Dict[str, Band]]]:
        out = []
        for curve, ylabel in curves:
            bands = {n: b for n in norms for b in [band(records, n, curve)] if b is not None}
            if bands or curve == "loss":
                out.append((ylabel, bands))
        return out

    ap = panels([(f"{label}_AP", f"{label} AP") for _, label in TASKS])
    return {
        "ap_curve.png": png_bytes(curves_figure(ap, f"AP on the test set ({note})")),
        "loss.png": png_bytes(
            curves_figure(panels([("loss", "total_loss")]), f"Training loss ({note})")
        ),
    }


def results_json(
    rows: Sequence[Dict[str, Any]], records: Sequence[Record], study: Dict[str, Any]
) -> Dict[str, Any]:
    """results.json: the study's settings (``study``), the table, the SN norms' shares and every
    run's record."""
    sn_norms = [r["norm"] for r in rows if shares_summary(records, r["norm"])]
    return {
        **study,
        "table": list(rows),
        "sn_shares": {n: shares_summary(records, n) for n in sn_norms},
        "runs": list(records),
    }
