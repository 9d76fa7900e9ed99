#!/usr/bin/env python
"""A/B accuracy check: train one config at two git revisions with the same seeds and data, and
compare their box and mask AP per norm with a paired test.

Each revision is checked out as a git worktree under ``OUTPUT/worktrees`` (its C++ kernels built
in place unless ``--no-build``: both sides then run the plain PyTorch kernels). The dataset is
generated once, with this checkout's code, as COCO json + PNGs, and every run registers it with
detectron2's ``register_coco_instances`` before running its revision's ``tools/train_net.py`` as
``__main__`` (``PYTHONPATH`` = the worktree). The config is copied into each worktree, so its
``_BASE_`` resolves to that revision's own files. Runs go ``--jobs`` at a time, one thread each;
a finished run (its ``result.json``) is skipped, so an interrupted comparison resumes. The first
failed run, Ctrl-C or SIGTERM stops the comparison and kills the running trainings.

Usage (docs/AB_TESTS.md):
    benchmarks/ab_compare.py --rev-a c89deeb --rev-b 01094f8 --seeds 0-5 --norms SN GN
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from scipy import stats

from sn_detection.data.nuclei import NUCLEI
from sn_detection.study import norm_overrides
from sn_detection.utils.cli import InputError, run_tool
from sn_detection.utils.file_io import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/quick_schedules/mask_rcnn_sn_nuclei.yaml"
TASKS = (("bbox", "box"), ("segm", "mask"))
# run in each training process: register the shared data, then the revision's train_net
RUNNER = """
import runpy, sys
import sn_detection
print("sn_detection from", sn_detection.__file__, flush=True)
from detectron2.data.datasets import register_coco_instances
for name, json_file, image_root in {datasets!r}:
    register_coco_instances(name, {{}}, json_file, image_root)
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""
_children: Dict[int, subprocess.Popen] = {}
_lock = threading.Lock()
_stopping = threading.Event()


def _stop_children() -> None:
    """Kill every running training process (its whole session) and start no other."""
    with _lock:
        _stopping.set()
        for proc in _children.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
    if out.returncode:
        raise InputError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def prepare_worktree(rev: str, root: str, config: str, build: bool) -> str:
    """A worktree of ``rev`` under ``root`` (reused if present) holding ``config``; built in
    place with ``build``. Returns its path."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = os.path.join(root, sha[:12])
    if not os.path.isdir(path):
        _git("worktree", "add", "--detach", path, sha)
    dest = os.path.join(path, os.path.relpath(config, REPO))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(config, dest)
    built = any(f.startswith("_C.") for f in os.listdir(os.path.join(path, "sn_detection")))
    if build and not built:
        print(f"building the C++ kernels of {rev} in {path} ...", flush=True)
        cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
        if subprocess.run(cmd, cwd=path, capture_output=True).returncode:
            raise InputError(f"building {rev}'s kernels failed: run `{' '.join(cmd)}` in {path}")
    return path


def prepare_data(root: str, images: Optional[Sequence[int]]) -> List[List[str]]:
    """Generate the nuclei data once with this checkout's code; [name, json, image dir] each."""
    dataset = NUCLEI
    if images:
        splits = {s: (n, NUCLEI.splits[s][1]) for s, n in zip(("train", "val"), images)}
        dataset = replace(NUCLEI, splits=splits)
    paths = dataset.prepare(root)
    return [[f"ab_nuclei_{s}", paths[s], os.path.join(root, s)] for s in ("train", "val")]


def read_ap(metrics_file: str) -> Dict[str, float]:
    """The last evaluation's box and mask AP (percent) in detectron2's metrics.json."""
    ap = {}
    with open(metrics_file) as f:
        for line in f:
            record = json.loads(line) if line.strip() else {}
            ap.update({label: record[f"{t}/AP"] for t, label in TASKS if f"{t}/AP" in record})
    if len(ap) != len(TASKS):
        raise RuntimeError(f"{metrics_file} holds no final box and mask AP")
    return ap


def train_one(args, worktree: str, run_dir: str, seed: int, norm: str, datasets) -> Dict:
    """Train and evaluate one (revision, norm, seed) in its own process, unless done before."""
    result_file = os.path.join(run_dir, "result.json")
    if os.path.isfile(result_file):
        with open(result_file) as f:
            return json.load(f)
    shutil.rmtree(run_dir, ignore_errors=True)  # unfinished: metrics.json appends, start afresh
    os.makedirs(run_dir)
    overrides = ["SEED", str(seed), "OUTPUT_DIR", run_dir, "DATALOADER.NUM_WORKERS", "0"]
    overrides += ["DATASETS.TRAIN", "('ab_nuclei_train',)", "DATASETS.TEST", "('ab_nuclei_val',)"]
    overrides += norm_overrides(norm)
    config = os.path.join(worktree, os.path.relpath(args.config, REPO))
    argv = ["train_net.py", "--config-file", config, *overrides, *args.opts]
    script = os.path.join(worktree, "tools", "train_net.py")
    code = RUNNER.format(datasets=datasets, argv=argv, script=script)
    env = dict(os.environ, PYTHONPATH=worktree, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log_file = os.path.join(run_dir, "stdout.txt")
    with open(log_file, "w") as log, _lock:
        if _stopping.is_set():
            raise InputError("stopped")
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=worktree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _children[proc.pid] = proc
    rc = proc.wait()
    with _lock:
        _children.pop(proc.pid)
    if rc:
        raise InputError(f"the {norm} run of seed {seed} failed (exit {rc}): see {log_file}")
    result = {"seed": seed, "norm": norm, **read_ap(os.path.join(run_dir, "metrics.json"))}
    with atomic_write(result_file, "w") as f:
        json.dump(result, f)
    return result


def _mean_sd(values: Sequence[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} (sd {sd:.1f})"


def comparison_table(norm: str, a: List[Dict], b: List[Dict], revs: Sequence[str]) -> str:
    """Markdown: each seed's box/mask AP for A and B and B - A, mean (sd); per task the paired
    t-test p, Welch's unpaired p, and the correlation of A and B over seeds (how much pairing
    by seed removes)."""
    cols = {}
    for _, k in TASKS:
        x, y = [r[k] for r in a], [r[k] for r in b]
        cols[f"A {k}"], cols[f"B {k}"], cols[f"B-A {k}"] = x, y, [v - u for u, v in zip(x, y)]
    names = [f"{side} {k}" for side in ("A", "B", "B-A") for _, k in TASKS]
    lines = [
        f"### {norm}: A = {revs[0]}, B = {revs[1]}",
        "",
        "| seed | " + " | ".join(names) + " |",
    ]
    lines.append("|---" * (len(names) + 1) + "|")
    for i, r in enumerate(a):
        lines.append(f"| {r['seed']} | " + " | ".join(f"{cols[c][i]:.1f}" for c in names) + " |")
    lines += ["| mean (sd) | " + " | ".join(_mean_sd(cols[c]) for c in names) + " |", ""]
    for _, k in TASKS:
        x, y = cols[f"A {k}"], cols[f"B {k}"]
        n = len(x)
        paired = stats.ttest_rel(y, x).pvalue if n > 1 else float("nan")
        welch = stats.ttest_ind(y, x, equal_var=False).pvalue if n > 1 else float("nan")
        r = stats.pearsonr(x, y).statistic if n > 2 else float("nan")
        lines.append(
            f"- {k} AP: B - A = {statistics.mean(cols[f'B-A {k}']):+.2f}, paired t-test "
            f"p = {paired:.3f}, Welch p = {welch:.3f}, A-B correlation r = {r:.2f} (n = {n})"
        )
    return "\n".join(lines) + "\n"


def _seeds(text: str) -> List[int]:
    try:
        if "-" in text.lstrip("-"):
            lo, hi = text.split("-")
            return list(range(int(lo), int(hi) + 1))
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are '0-5' or '0,1,2', got {text!r}") from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev-a", required=True, help="the reference revision (any git rev)")
    p.add_argument("--rev-b", required=True, help="the revision under test")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a config of this checkout")
    p.add_argument("--seeds", type=_seeds, default=_seeds("0-5"), help="'0-5' or '0,3,7'")
    p.add_argument("--norms", nargs="+", default=["SN", "GN"], help="SN and/or detectron2 norms")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--output", default="output/ab", help="worktrees, data and runs go here")
    p.add_argument(
        "--images",
        type=int,
        nargs=2,
        metavar=("TRAIN", "VAL"),
        help="a smaller nuclei dataset (default: the full splits)",
    )
    p.add_argument("--no-build", action="store_true", help="plain kernels on both sides")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = p.parse_args(argv)
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    args.config = os.path.abspath(os.path.join(REPO, args.config))
    if not os.path.isfile(args.config) or not args.config.startswith(REPO + os.sep):
        raise InputError(f"--config {args.config}: not a config file of this checkout")
    if len(args.opts) % 2:
        raise InputError("--opts takes KEY VALUE pairs")
    return args


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    output = os.path.abspath(args.output)
    revs = (args.rev_a, args.rev_b)
    if len({_git("rev-parse", "--verify", f"{r}^{{commit}}") for r in revs}) == 1:
        raise InputError(f"--rev-a {revs[0]} and --rev-b {revs[1]} are the same commit")
    trees = [
        prepare_worktree(r, os.path.join(output, "worktrees"), args.config, not args.no_build)
        for r in revs
    ]
    datasets = prepare_data(os.path.join(output, "data"), args.images)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A and B of a seed one after the other, so an interrupted comparison leaves pairs
    runs = [
        (
            tree,
            os.path.join(output, "runs", norm, os.path.basename(tree), f"seed{seed}"),
            seed,
            norm,
        )
        for norm in args.norms
        for seed in args.seeds
        for tree in trees
    ]
    pool = ThreadPoolExecutor(args.jobs)
    try:  # the first failure (or Ctrl-C, SIGTERM) stops the rest; finished runs are kept
        results = list(pool.map(lambda r: train_one(args, *r, datasets), runs))
    finally:
        _stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
    tables = []
    for norm in args.norms:
        mine = [r for r in results if r["norm"] == norm]
        tables.append(comparison_table(norm, mine[0::2], mine[1::2], revs))
    report = "\n".join(tables)
    print(report)
    with atomic_write(os.path.join(output, "table.md"), "w") as f:
        f.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
