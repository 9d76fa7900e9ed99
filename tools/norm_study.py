#!/usr/bin/env python
"""A norm study in one command: the same config trained and evaluated with several norms and
seeds, summarised in a table and curves.

Usage:
    tools/norm_study.py --config-file configs/quick_schedules/mask_rcnn_norm_study.yaml \
        --norms BN GN SN --seeds 0 1 --output output/norm_study
    # a user's COCO-format data, no code (class count as in the json):
    tools/norm_study.py --config-file CFG --coco-train train.json train_images/ \
        --coco-test val.json val_images/ --norms GN SN --seeds 0 1 2 --output DIR \
        MODEL.ROI_HEADS.NUM_CLASSES 7

Each (norm, seed) is one run of ``tools/train_net.py`` in a process of its own (so memory is
isolated and its peak measured), in ``DIR/runs/<norm>/seed<k>``, with

- the norm in every norm key of an R-CNN (``NORM_KEYS``). ``FrozenBN`` needs pretrained weights
  (MODEL.WEIGHTS) and applies to the backbone only: FPN and heads then have no norm, as the "BN+"
  rows of the SN paper;
- ``SEED k``, ``OUTPUT_DIR``, ``TEST.EVAL_PERIOD`` (``--eval-period``, default the config's or a
  quarter of the schedule), and with ``--ims-per-gpu N`` a batch of N images per process
  (``SOLVER.IMS_PER_BATCH`` N x K, ``REFERENCE_WORLD_SIZE`` 0; the learning rate is the config's).

Default norms: FrozenBN where MODEL.WEIGHTS is set, BN, GN, SN, and with ``--num-gpus`` K > 1
the synchronized ones on K processes (SyncBN, or detectron2's naiveSyncBN on the CPU, where
torch's SyncBatchNorm does not run; SyncSN).

A run is finished when its record ``run.json`` exists: a rerun skips it (change ``--output`` to
redo), and restarts an unfinished run from scratch. Everything is checked before anything trains
(config, overrides, norms, dataset names, files): an error is one line, exit status 2.

Written into DIR, each file atomically: ``results.md`` and ``results.csv`` (per norm: box and
mask AP, AP50, AP75 as mean +- std over seeds, time per iteration, peak memory), ``results.json``
(the table, every run with its curves, and for SN/SyncSN the learned IN/LN/BN shares per part of
the model, from ``model_final.pth``), ``ap_curve.png`` (AP against iteration) and ``loss.png``
(total_loss against iteration): one line per norm, the mean over seeds, and a band from the
lowest to the highest seed. Peak memory is the largest resident set of the run's processes on the
CPU, and detectron2's ``max_mem`` (torch.cuda.max_memory_allocated) on a GPU.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from matplotlib.figure import Figure

from sn_detection import add_sn_config  # importing registers the embedded datasets
from sn_detection.analysis import BRANCHES, STATS, load_importances
from sn_detection.analysis_plots import save_png
from sn_detection.data.user_coco import (
    DATASETS_ENV,
    check_coco_files,
    env_value,
    register_coco_datasets,
)
from sn_detection.layers.norm import valid_norm_names
from sn_detection.utils.file_io import atomic_write

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")
NORM_KEYS = (
    "MODEL.RESNETS.NORM",
    "MODEL.FPN.NORM",
    "MODEL.ROI_BOX_HEAD.NORM",
    "MODEL.ROI_MASK_HEAD.NORM",
)
SN_NORMS = ("SN", "SyncSN")
# the names --coco-train / --coco-test register their files under, in every process
COCO_TRAIN, COCO_TEST = "norm_study_train", "norm_study_test"
RUN_RECORD = "run.json"
TASKS = (("bbox", "box"), ("segm", "mask"))
METRICS = ("AP", "AP50", "AP75")
Band = Tuple[List[int], List[float], List[float], List[float]]  # iterations, mean, low, high


class StudyError(ValueError):
    """A problem found before training: reported as one line, exit status 2."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and evaluate one config with several norms and seeds; write a table "
        "(results.md/.csv/.json) and curves (ap_curve.png, loss.png).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: tools/norm_study.py --config-file "
        "configs/quick_schedules/mask_rcnn_norm_study.yaml --norms BN GN SN --seeds 0 1 "
        "--output output/norm_study",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--norms", nargs="+", metavar="NORM",
        help="norms to compare (default: FrozenBN where MODEL.WEIGHTS is set, BN, GN, SN, and "
        "the synchronized norms when --num-gpus > 1)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], metavar="SEED")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run")
    parser.add_argument("--ims-per-gpu", type=int, metavar="N", help="images per process")
    parser.add_argument("--eval-period", type=int, metavar="K", help="evaluate every K iterations")
    parser.add_argument("--coco-train", nargs=2, metavar=("JSON", "IMAGE_DIR"))
    parser.add_argument("--coco-test", nargs=2, metavar=("JSON", "IMAGE_DIR"))
    parser.add_argument("--dataset-train", metavar="NAME", help="a registered dataset name")
    parser.add_argument("--dataset-test", metavar="NAME", help="a registered dataset name")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER,
        help="KEY VALUE config overrides, last (after a one-value option such as --output, or --)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    for a, b in (("coco_train", "dataset_train"), ("coco_test", "dataset_test")):
        if getattr(args, a) and getattr(args, b):
            parser.error(f"give --{a.replace('_', '-')} or --{b.replace('_', '-')}, not both")
    return args


def norm_overrides(norm: str) -> List[str]:
    """KEY VALUE pairs that put ``norm`` in every norm key (FrozenBN: the backbone only)."""
    pairs = []
    for key in NORM_KEYS:
        pairs += [key, norm if norm != "FrozenBN" or key == NORM_KEYS[0] else ""]
    return pairs


def _on_cpu(cfg) -> bool:
    return cfg.MODEL.DEVICE == "cpu" or not torch.cuda.is_available()


def default_norms(cfg, num_gpus: int) -> List[str]:
    norms = (["FrozenBN"] if cfg.MODEL.WEIGHTS else []) + ["BN", "GN"]
    if num_gpus > 1:
        norms.append("naiveSyncBN" if _on_cpu(cfg) else "SyncBN")
    return norms + ["SN"] + (["SyncSN"] if num_gpus > 1 else [])


@dataclass
class Study:
    """What to run, checked: the config file, the overrides common to all runs, and where."""

    config_file: str
    overrides: List[str]
    norms: List[str]
    seeds: List[int]
    output: str
    num_gpus: int
    max_iter: int
    datasets: Dict[str, Tuple[str, str]] = field(default_factory=dict)  # --coco-* files

    def run_dir(self, norm: str, seed: int) -> str:
        return os.path.join(self.output, "runs", norm, f"seed{seed}")


def _load_config(config_file: str, overrides: List[str]):
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(overrides)
    return cfg


def _check_dataset_classes(cfg, json_file: str) -> None:
    with open(json_file) as f:
        categories = json.load(f).get("categories", [])
    if len(categories) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise StudyError(
            f"{json_file} has {len(categories)} categories but MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: add MODEL.ROI_HEADS.NUM_CLASSES "
            f"{len(categories)} to the command"
        )


def validate(args: argparse.Namespace) -> Study:
    """Everything checked before anything trains; raises StudyError naming the problem."""
    if not os.path.isfile(args.config_file):
        raise StudyError(f"--config-file {args.config_file} does not exist")
    if len(args.opts) % 2:
        raise StudyError(f"config overrides must be KEY VALUE pairs, got {' '.join(args.opts)}")
    if args.num_gpus < 1 or (args.ims_per_gpu is not None and args.ims_per_gpu < 1):
        raise StudyError("--num-gpus and --ims-per-gpu must be at least 1")
    if len(set(args.seeds)) != len(args.seeds):
        raise StudyError(f"--seeds has repeats: {args.seeds}")
    datasets = {}
    overrides = list(args.opts)
    for files, name, key, given in (
        (args.coco_train, COCO_TRAIN, "DATASETS.TRAIN", args.dataset_train),
        (args.coco_test, COCO_TEST, "DATASETS.TEST", args.dataset_test),
    ):
        if files:
            try:
                datasets[name] = check_coco_files(f"--coco-{name.split('_')[-1]}", files)
            except ValueError as e:
                raise StudyError(str(e)) from None
            given = name
        if given:
            overrides += [key, f"('{given}',)"]
    try:
        register_coco_datasets(datasets)
    except ValueError as e:
        raise StudyError(str(e)) from None
    try:
        cfg = _load_config(args.config_file, overrides)
    except (KeyError, ValueError, TypeError, AssertionError) as e:  # yacs: key, type, value
        raise StudyError(f"{args.config_file} with the overrides: {type(e).__name__}: {e}") from e
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        names = list(cfg.DATASETS[key])
        unknown = [n for n in names if n not in registered]
        if unknown:
            raise StudyError(
                f"dataset {unknown[0]!r} (DATASETS.{key}) is not registered; give a registered "
                f"name (e.g. sn_clutter_{key.lower().replace('test', 'val')}) with "
                f"--dataset-{key.lower()}, or COCO files with --coco-{key.lower()} JSON IMAGE_DIR"
            )
    if len(cfg.DATASETS.TEST) != 1:
        raise StudyError(f"DATASETS.TEST must name one dataset, got {list(cfg.DATASETS.TEST)}")
    for name, (json_file, _) in datasets.items():
        _check_dataset_classes(cfg, json_file)
    norms = args.norms or default_norms(cfg, args.num_gpus)
    valid = ["FrozenBN", *(n for n in valid_norm_names() if n and n != "FrozenBN")]
    for norm in norms:
        if norm not in valid:
            raise StudyError(f"invalid norm {norm!r}; valid norms: {', '.join(valid)}")
        if norm == "FrozenBN" and not cfg.MODEL.WEIGHTS:
            raise StudyError(
                "FrozenBN freezes pretrained BN statistics: it needs MODEL.WEIGHTS (from scratch, "
                "compare BN, GN, SN)"
            )
        if norm in ("SyncBN", "nnSyncBN") and _on_cpu(cfg):
            raise StudyError(
                f"{norm} (torch's SyncBatchNorm) runs on CUDA only; on the CPU use naiveSyncBN"
            )
    if len(set(norms)) != len(norms):
        raise StudyError(f"--norms has repeats: {norms}")
    eval_period = args.eval_period
    if eval_period is None:
        eval_period = cfg.TEST.EVAL_PERIOD or max(cfg.SOLVER.MAX_ITER // 4, 1)
    overrides += ["TEST.EVAL_PERIOD", str(eval_period)]
    if args.ims_per_gpu:
        batch = str(args.ims_per_gpu * args.num_gpus)
        overrides += ["SOLVER.IMS_PER_BATCH", batch, "SOLVER.REFERENCE_WORLD_SIZE", "0"]
    os.makedirs(args.output, exist_ok=True)
    if not os.access(args.output, os.W_OK):
        raise StudyError(f"--output {args.output} is not writable")
    return Study(
        config_file=os.path.abspath(args.config_file),
        overrides=overrides,
        norms=list(norms),
        seeds=list(args.seeds),
        output=os.path.abspath(args.output),
        num_gpus=args.num_gpus,
        max_iter=cfg.SOLVER.MAX_ITER,
        datasets=datasets,
    )


# -- one run ------------------------------------------------------------------------------------


def read_metrics(path: str, max_iter: int) -> Dict[str, Any]:
    """From detectron2's metrics.json: the final evaluation ({"box": {"AP": ..}, "mask": ..}),
    the AP curves and the total_loss curve ([iterations trained, value] pairs), and the median
    seconds per iteration. AP is in percent, as detectron2 reports it."""
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    records.sort(key=lambda r: r["iteration"])
    final: Dict[str, Dict[str, float]] = {}
    curves: Dict[str, List[List[float]]] = {"loss": []}
    times = []
    for r in records:
        trained = min(r["iteration"] + 1, max_iter)  # metrics.json counts from 0
        if "total_loss" in r:
            curves["loss"].append([trained, r["total_loss"]])
        if "time" in r:
            times.append(r["time"])
        for task, label in TASKS:
            if f"{task}/AP" in r:
                curves.setdefault(f"{label}_AP", []).append([trained, r[f"{task}/AP"]])
                final[label] = {m: r[f"{task}/{m}"] for m in METRICS}
    return {
        "final": final,
        "curves": curves,
        "time_per_iter": statistics.median(times) if times else float("nan"),
    }


def _gpu_peak_mib(log_file: str) -> Optional[float]:
    """The largest ``max_mem: <N>M`` that detectron2 printed (GPU runs only)."""
    if not os.path.isfile(log_file):
        return None
    with open(log_file, errors="replace") as f:
        peaks = [float(m) for m in re.findall(r"max_mem: (\d+)M", f.read())]
    return max(peaks) if peaks else None


def _sn_shares(checkpoint: str) -> Dict[str, Any]:
    return dict(load_importances(checkpoint).summary())


def train_one(study: Study, norm: str, seed: int, env: Dict[str, str]) -> Dict[str, Any]:
    """Train and evaluate (norm, seed) in a process of its own; returns its record, also written
    to its directory's run.json (which marks it finished)."""
    run_dir = study.run_dir(norm, seed)
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)  # an unfinished run: metrics.json is appended to, so start afresh
    os.makedirs(run_dir)
    command = [sys.executable, TRAIN_NET, "--num-gpus", str(study.num_gpus)]
    if study.num_gpus > 1:
        command += ["--dist-url", "auto"]  # a free port: studies on one machine do not collide
    command += ["--config-file", study.config_file, *study.overrides, *norm_overrides(norm)]
    command += ["SEED", str(seed), "OUTPUT_DIR", run_dir]
    log_file = os.path.join(run_dir, "train.log")
    start = time.time()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"the {norm} seed {seed} run failed (exit status {proc.returncode}); see {log_file}"
        )
    record = {
        "norm": norm,
        "seed": seed,
        "run_dir": os.path.relpath(run_dir, study.output),
        "command": command[1:],
        "wall_s": time.time() - start,
        **read_metrics(os.path.join(run_dir, "metrics.json"), study.max_iter),
    }
    gpu = _gpu_peak_mib(log_file)
    # ru_maxrss (KiB on Linux): the largest of the run's processes, workers included
    record["peak_memory_mib"] = gpu if gpu is not None else usage.ru_maxrss / 1024
    record["peak_memory_kind"] = "CUDA max allocated" if gpu is not None else "max RSS"
    if norm in SN_NORMS:
        record["sn_shares"] = _sn_shares(os.path.join(run_dir, "model_final.pth"))
    with atomic_write(os.path.join(run_dir, RUN_RECORD), "w") as f:
        json.dump(record, f, indent=1)
    return record


def load_or_train(study: Study, norm: str, seed: int, env: Dict[str, str]) -> Dict[str, Any]:
    path = os.path.join(study.run_dir(norm, seed), RUN_RECORD)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return train_one(study, norm, seed, env)


# -- summary ------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table_rows(records: Sequence[Dict[str, Any]], norms: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per norm: ``<task>_<metric>`` (mean, std) over seeds, time and memory."""
    rows = []
    for norm in norms:
        runs = [r for r in records if r["norm"] == norm]
        row: Dict[str, Any] = {"norm": norm, "runs": len(runs)}
        for _, label in TASKS:
            for m in METRICS:
                values = [r["final"][label][m] for r in runs if label in r["final"]]
                row[f"{label}_{m}"] = _mean_std(values)
        row["time_per_iter_s"] = _mean_std([r["time_per_iter"] for r in runs])
        row["peak_memory_mib"] = _mean_std([r["peak_memory_mib"] for r in runs])
        row["peak_memory_kind"] = runs[0]["peak_memory_kind"] if runs else ""
        rows.append(row)
    return rows


def _value_columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    keys = [f"{label}_{m}" for _, label in TASKS for m in METRICS]
    keys = [k for k in keys if any(not math.isnan(r[k][0]) for r in rows)]
    return keys + ["time_per_iter_s", "peak_memory_mib"]


def results_csv(rows: Sequence[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _value_columns(rows)
    writer.writerow(
        ["norm", "runs", *(f"{c}_{s}" for c in columns for s in ("mean", "std")), "peak_memory"]
    )
    for r in rows:
        cells = [f"{x:.4f}" for c in columns for x in r[c]]
        writer.writerow([r["norm"], r["runs"], *cells, r["peak_memory_kind"]])
    return out.getvalue()


def shares_summary(records: Sequence[Dict[str, Any]], norm: str) -> Dict[str, Any]:
    """The per-part SN shares of ``norm``'s runs, averaged over seeds."""
    summaries = [r["sn_shares"] for r in records if r["norm"] == norm and "sn_shares" in r]
    out: Dict[str, Any] = OrderedDict()
    for part in summaries[0] if summaries else []:
        out[part] = {
            "layers": summaries[0][part]["layers"],
            **{
                s: {b: statistics.fmean(x[part][s][b] for x in summaries) for b in BRANCHES}
                for s in STATS
            },
        }
    return out


def results_markdown(study: Study, rows, records, command: str) -> str:
    columns = _value_columns(rows)
    names = {
        "time_per_iter_s": "s/iter",
        "peak_memory_mib": f"peak memory (MiB, {rows[0]['peak_memory_kind']})",
    }
    header = [names.get(c, c.replace("_", " ")) for c in columns]
    lines = [
        f"Norm study of `{os.path.relpath(study.config_file)}`, seeds "
        f"{', '.join(map(str, study.seeds))}, {study.max_iter} iterations, {study.num_gpus} "
        "process(es) per run. Mean ± std over seeds; AP in percent.",
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
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {r['norm']} | {r['runs']} | " + " | ".join(cells) + " |")
    for norm in study.norms:
        shares = shares_summary(records, norm)
        if not shares:
            continue
        lines += [
            "",
            f"Learned shares of {norm} at the end of training (percent, mean over the part's "
            "layers and over seeds):",
            "",
            "| part | layers | mean IN | mean LN | mean BN | var IN | var LN | var BN |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for part, s in shares.items():
            cells = " | ".join(f"{100 * s[st][b]:.1f}" for st in STATS for b in BRANCHES)
            lines.append(f"| {part} | {s['layers']} | {cells} |")
    return "\n".join(lines) + "\n"


def _band(records, norm: str, curve: str) -> Optional[Band]:
    """(iterations, mean, low, high) of ``curve`` over ``norm``'s seeds, at the iterations every
    seed has."""
    series = [dict(map(tuple, r["curves"].get(curve, []))) for r in records if r["norm"] == norm]
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


def plot_png(records, norms: Sequence[str], curves: Sequence[Tuple[str, str]], title: str) -> bytes:
    """A PNG with one panel per (curve, y label): per norm the mean over seeds, and a band from
    the lowest to the highest seed (matplotlib's object API: no pyplot, no global state)."""
    fig = Figure(figsize=(5 * len(curves), 3.6))
    for ax, (curve, ylabel) in zip(fig.subplots(1, len(curves), squeeze=False)[0], curves):
        for norm in norms:
            band = _band(records, norm, curve)
            if band is None:
                continue
            its, mean, low, high = band
            (line,) = ax.plot(its, mean, marker="o" if len(its) < 12 else None, label=norm)
            ax.fill_between(its, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out = io.BytesIO()
    save_png(fig, out)
    return out.getvalue()


def write_outputs(study: Study, records: Sequence[Dict[str, Any]], command: str) -> None:
    rows = table_rows(records, study.norms)
    files = {
        "results.csv": results_csv(rows),
        "results.md": results_markdown(study, rows, records, command),
        "results.json": json.dumps(
            {
                "command": command,
                "config_file": study.config_file,
                "overrides": study.overrides,
                "norms": study.norms,
                "seeds": study.seeds,
                "table": rows,
                "sn_shares": {n: shares_summary(records, n) for n in study.norms if n in SN_NORMS},
                "runs": list(records),
            },
            indent=1,
        ),
    }
    for name, text in files.items():
        with atomic_write(os.path.join(study.output, name), "w") as f:
            f.write(text)
    seeds = f"band: lowest to highest of {len(study.seeds)} seed(s)"
    ap_curves = [(f"{label}_AP", f"{label} AP") for _, label in TASKS]
    ap_curves = [c for c in ap_curves if any(c[0] in r["curves"] for r in records)]
    plots = {
        "ap_curve.png": plot_png(records, study.norms, ap_curves, f"AP on the test set ({seeds})"),
        "loss.png": plot_png(
            records, study.norms, [("loss", "total_loss")], f"Training loss ({seeds})"
        ),
    }
    for name, data in plots.items():
        with atomic_write(os.path.join(study.output, name), "wb") as f:
            f.write(data)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        study = validate(args)
    except StudyError as e:
        print(f"norm_study.py: error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if study.datasets:
        env[DATASETS_ENV] = env_value(study.datasets)
    command = " ".join(["tools/norm_study.py", *(argv if argv is not None else sys.argv[1:])])
    records = []
    total = len(study.norms) * len(study.seeds)
    # seeds outer: a study stopped part-way has every norm for the first seeds
    for seed in study.seeds:
        for norm in study.norms:
            finished = os.path.isfile(os.path.join(study.run_dir(norm, seed), RUN_RECORD))
            print(
                f"[norm_study] {len(records) + 1}/{total} {norm} seed {seed}: "
                + ("finished before, skipped" if finished else "training ..."),
                flush=True,
            )
            try:
                record = load_or_train(study, norm, seed, env)
            except RuntimeError as e:
                print(f"norm_study.py: {e}", file=sys.stderr)
                return 1
            records.append(record)
            summary = ", ".join(f"{k} AP {v['AP']:.1f}" for k, v in record["final"].items())
            print(f"[norm_study]   {summary}, {record['time_per_iter']:.3f} s/iter", flush=True)
    write_outputs(study, records, command)
    print(f"[norm_study] wrote {os.path.join(study.output, 'results.md')} and the plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
