"""Tables of SN shares: per layer (CSV), per part (markdown), and the JSON report, of one checkpoint
or of two compared layer by layer (matched by short name, see :func:`align`)."""

import csv
import io
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..layers.switch_norm import BRANCHES
from .shares import STATS, AnalysisError, CheckpointShares, LayerShares, Shares, part_rank

COLUMNS = [f"{stat}_{b}" for stat in STATS for b in BRANCHES]
PARTS_HEADER = [
    "| part | layers | mean IN | mean LN | mean BN | var IN | var LN | var BN |",
    "|---|---|---|---|---|---|---|---|",
]
SPARSE_COLUMNS = ["mean_choice", "var_choice", "fixed"]
SPARSE_HEADER = (
    "| part | SSN layers | mean IN | mean LN | mean BN | var IN | var LN | var BN "
    "| mean fixed | var fixed |"
)
WHEN_HEADER = " all fixed from iteration |"


def share_row(shares: Mapping[str, Shares]) -> List[float]:
    """The six shares of ``{"mean": .., "var": ..}`` in table order (mean IN .. var BN)."""
    return [shares[stat][b] for stat in STATS for b in BRANCHES]


def parts_rows(summary: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Markdown rows of a per-part summary (``summarize``), shares in percent."""
    return [
        f"| {part} | {s['layers']} | " + " | ".join(f"{100 * v:.1f}" for v in share_row(s)) + " |"
        for part, s in summary.items()
    ]


def align(
    runs: Sequence[CheckpointShares],
) -> List[Tuple[str, str, List[Optional[LayerShares]]]]:
    """(short name, part, [each run's layer or None]) over the union of the runs' layers, matched
    by short name (so an ImageNet backbone lines up with the detector fine-tuned from it), in the
    network order of the first run, the second run's other layers after those of their part."""
    by_run = [{layer.short_name: layer for layer in run.layers} for run in runs]
    names: List[Tuple[str, str]] = []
    seen = set()
    for run in runs:
        for layer in run.layers:
            if layer.short_name not in seen:
                seen.add(layer.short_name)
                names.append((layer.short_name, layer.part))
    first_seen = {}
    for j, (_, part) in enumerate(names):
        first_seen.setdefault(part, j)  # unknown parts keep their first-seen order
    order = sorted(
        range(len(names)), key=lambda i: (part_rank(names[i][1]), first_seen[names[i][1]], i)
    )
    return [(names[i][0], names[i][1], [r.get(names[i][0]) for r in by_run]) for i in order]


def check_comparable(runs: Sequence[CheckpointShares]) -> None:
    """Raise AnalysisError if two runs have no SN layer in common (nothing to compare)."""
    if len(runs) != 2 or any(all(found) for _, _, found in align(runs)):
        return
    a, b = runs
    raise AnalysisError(
        f"{a.source} and {b.source} have no SN layer in common (layers are matched by name from "
        f"the part on, e.g. {a.layers[0].short_name} and {b.layers[0].short_name}): they are "
        "different models, or their layer names differ in a way the parts do not cover; "
        "compare checkpoints of the same architecture"
    )


def _by_stat(layer: LayerShares) -> Dict[str, Shares]:
    return {"mean": layer.mean, "var": layer.var}


def _sparse_cells(layer: Optional[LayerShares]) -> List[str]:
    """mean_choice, var_choice and fixed ("mean+var", "mean", "var" or "none") of a sparse SN
    layer; empty for an SN layer or a missing one."""
    if layer is None or not layer.sparse:
        return [""] * len(SPARSE_COLUMNS)
    fixed = "+".join(stat for stat, f in zip(STATS, layer.fixed) if f) or "none"
    return [layer.choice("mean") or "", layer.choice("var") or "", fixed]


def layers_csv(runs: Sequence[CheckpointShares], labels: Sequence[str]) -> str:
    """One row per SN layer (network order of the first run, then layers only in the second):
    index, part, layer (short name), the six shares of each run (where a run has sparse SN
    layers, then its ``SPARSE_COLUMNS``), and with two runs their differences (second minus
    first); empty cells where a run lacks the layer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    sparse = [any(layer.sparse for layer in run.layers) for run in runs]
    header = ["index", "part", "layer"]
    for label, has_sparse in zip(labels, sparse):
        header += [f"{label}:{c}" for c in COLUMNS]
        header += [f"{label}:{c}" for c in SPARSE_COLUMNS] if has_sparse else []
    if len(runs) == 2:
        header += [f"delta:{c}" for c in COLUMNS]
    writer.writerow(header)
    for index, (short, part, found) in enumerate(align(runs)):
        row: List[Any] = [index, part, short]
        values = [share_row(_by_stat(layer)) if layer else None for layer in found]
        for v, layer, has_sparse in zip(values, found, sparse):
            row += [f"{x:.6f}" for x in v] if v else [""] * len(COLUMNS)
            row += _sparse_cells(layer) if has_sparse else []
        if len(runs) == 2:
            a, b = values
            row += [f"{y - x:+.6f}" for x, y in zip(a, b)] if a and b else [""] * len(COLUMNS)
        writer.writerow(row)
    return out.getvalue()


def sparse_table(
    summary: Mapping[str, Mapping[str, Any]],
    fixed_at: Optional[Mapping[str, Optional[int]]] = None,
) -> List[str]:
    """Markdown table of the parts with sparse SN layers (none: no lines): how many layers chose
    IN/LN/BN for the mean and the variance and how many are fixed; with ``fixed_at`` (from a
    metrics.json) a column of the iteration from which all of the part's were fixed ("not yet"
    if never, blank if the metrics have no such scalar)."""
    rows = []
    for part, s in summary.items():
        if "ssn" not in s:
            continue
        ssn = s["ssn"]
        counts = [ssn[f"{stat}_choice"][b] for stat in STATS for b in BRANCHES]
        cells = [f"{x:g}" for x in (ssn["layers"], *counts, ssn["mean_fixed"], ssn["var_fixed"])]
        if fixed_at is not None:
            when = fixed_at.get(part, "")
            cells.append("not yet" if part in fixed_at and when is None else str(when))
        rows.append("| " + " | ".join([part, *cells]) + " |")
    if not rows:
        return []
    header = SPARSE_HEADER + (WHEN_HEADER if fixed_at is not None else "")
    return [header, "|---" * header.count(" |") + "|", *rows]


def parts_markdown(
    runs: Sequence[CheckpointShares],
    labels: Sequence[str],
    fixed_at: Optional[Mapping[str, Optional[int]]] = None,
) -> str:
    """A markdown table of the per-part shares (percent) of each run; for a run with sparse SN
    layers, a second one of their choices (``sparse_table``, with ``fixed_at`` for the first)."""
    lines = []
    for i, (run, label) in enumerate(zip(runs, labels)):
        iteration = f", iteration {run.iteration}" if run.iteration is not None else ""
        summary = run.summary()
        lines += [
            f"SN shares of {label} ({run.kind}{iteration}), percent, mean of the part's layers:",
            "",
            *PARTS_HEADER,
            *parts_rows(summary),
            "",
        ]
        table = sparse_table(summary, fixed_at if i == 0 else None)
        if table:
            lines += [
                f"Sparse SN choices of {label}: layers per chosen statistic (a layer not yet "
                "one-hot counts in none), fixed layers:",
                "",
                *table,
                "",
            ]
    return "\n".join(lines)


def report(runs: Sequence[CheckpointShares], labels: Sequence[str]) -> Dict[str, Any]:
    """The JSON report: each run (source, kind, iteration, per-part summary, every layer), and
    with two runs the per-part differences of the shares (second minus first)."""
    out: Dict[str, Any] = {"runs": [{"label": lb, **r.to_dict()} for r, lb in zip(runs, labels)]}
    if len(runs) == 2:
        a, b = (r.summary() for r in runs)
        out["difference"] = {
            part: {s: {x: b[part][s][x] - a[part][s][x] for x in BRANCHES} for s in STATS}
            for part in a
            if part in b
        }
    return out
