#!/usr/bin/env python
"""Eval-mode latency per image (batch 1) of Mask R-CNN R50-FPN with SN, Sparse SN deployed as
the norms it chose, GN, frozen BN and no norm at all, eager and traced (TorchScript, as
tools/deploy/export_model.py writes it), side by side in one run.

    .venv/bin/python benchmarks/bench_inference.py                  # CPU: 800x1333 and 160x160
    .venv/bin/python benchmarks/bench_inference.py --device cuda
    .venv/bin/python benchmarks/bench_inference.py --sizes 64x96 --repeats 1 --warmup 1 \\
        MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64     # a smoke run

Models (``MODELS``): the COCO configs of configs/COCO-InstanceSegmentation/ (mask_rcnn_R_50_FPN_2x_
{sn,gn,frozenbn}.yaml: the same 4conv1fc box head and mask head, norms everywhere but in the
frozen-BN model's FPN and heads), random weights (SN with random running statistics and logits),
trailing KEY VALUE overrides applied to all:

- "SSN hardened, mixed": the SN config with SSN layers, each fixed (as a trained SSN detector's
  saved state holds it: logits at the choice, fixed flags set) on a choice drawn per layer from
  ``MIX`` with ``--mix-seed``: the backbone mostly BN for both with some IN, LN and IN-mean/BN-var
  layers, the FPN and heads LN or IN, as a trained SSN detector ends; the header says what each
  part became. ``sn_detection.export.deployable`` folds the BN layers into their convolutions
  and turns the others into single norms.
- "hardened, all BN": the same with every layer BN for both: ``deployable`` folds all of them.
- "SN", "GN", "frozen BN": the configs as they are (SN soft: its exported path is
  ``layers/portable.py``).
- "no norm": the SN config with every ``NORM`` key "" (no norm layer at all): the floor, what
  folded norms cost at best.

Every model goes through ``deployable`` (eval mode; a no-op without SN layers), for both its eager
and its traced form. The box head runs on ``RPN.POST_NMS_TOPK_TEST`` (1000) proposals in every
model; what follows depends on each model's scores: the per-class NMS over the candidates above
``ROI_HEADS.SCORE_THRESH_TEST`` (0.05) and the mask head on the kept detections, whose number the
table shows ("dets"). (Do not set the threshold to 0 to equalise the detections: NMS then takes
1000 x 80 candidates, and its cost, which depends on where each model's random weights put the
boxes, swamps the norms'. ``ROI_HEADS.SCORE_THRESH_TEST 1.0`` leaves no detection in any model,
which times everything up to the box head's scores alike.)

Timed: ``model.inference([{"image": x}], do_postprocess=False)`` under ``torch.no_grad`` (eager),
and the traced ``TracingAdapter`` of the same model (traced), on one random (3, H, W) image per
size. Every repeat runs each (model, eager/traced) case once in turn (round robin), so drifting
machine load hits all alike; the median and the best of ``--repeats`` after ``--warmup`` rounds
(TorchScript optimises a traced graph during its first runs). On CUDA the device is synchronised
around each call. Ratios: each median to the floor's ("no norm") and to GN's, same run, same
mode. Per layer, in eval mode: ``benchmarks/bench_norm.py --eval``.
"""

import argparse
import os
import random
import statistics
import time
from collections import Counter
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from tabulate import tabulate

import sn_detection  # noqa: F401  # isort: skip  (first: quiet detectron2 import, SN builders)
from detectron2.modeling import build_model

from sn_detection.export import Deployment, deployable, trace
from sn_detection.layers import SparseSwitchNorm2d, SyncSparseSwitchNorm2d, kernels_status
from sn_detection.layers.sparsestmax import weights_as_logits
from sn_detection.layers.switch_norm import BRANCHES, LOGIT_NAMES, named_switch_norms
from sn_detection.study import norm_overrides
from sn_detection.testing import CONFIGS, load_config, randomize_sn_state

SN_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml"

# (mean branch, variance branch) per part of the model, with the probability of each choice:
# what a trained SSN detector ends with (the backbone mostly BN, the FPN and heads LN or IN)
Choice = Tuple[str, str]
MIX: Dict[str, List[Tuple[Choice, float]]] = {
    "backbone": [
        (("BN", "BN"), 0.7),
        (("IN", "IN"), 0.1),
        (("LN", "LN"), 0.1),
        (("IN", "BN"), 0.1),
    ],
    "FPN": [(("LN", "LN"), 0.5), (("IN", "IN"), 0.5)],
    "heads": [(("LN", "LN"), 0.6), (("IN", "IN"), 0.3), (("IN", "LN"), 0.1)],
}
ALL_BN: Dict[str, List[Tuple[Choice, float]]] = {part: [(("BN", "BN"), 1.0)] for part in MIX}


class Model(NamedTuple):
    """A benchmarked model: its row label, config, overrides and, for SSN, the choices to fix."""

    label: str
    config: str
    opts: Tuple[str, ...] = ()
    mix: Optional[Dict[str, List[Tuple[Choice, float]]]] = None


def _norm_opts(norm: str) -> Tuple[str, ...]:
    return tuple(norm_overrides(norm))  # every norm key of the config


MODELS = {
    "SSN-mixed": Model("SSN hardened, mixed", SN_CONFIG, _norm_opts("SSN"), MIX),
    "BN-folded": Model("hardened, all BN", SN_CONFIG, _norm_opts("SSN"), ALL_BN),
    "SN": Model("SN", SN_CONFIG),
    "GN": Model("GN", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_gn.yaml"),
    "FrozenBN": Model("frozen BN", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_frozenbn.yaml"),
    "NoNorm": Model("no norm", SN_CONFIG, _norm_opts("")),
}
BASELINE = "GN"
FLOOR = "NoNorm"
MODES = ("eager", "traced")
DEFAULT_SIZES = ("800x1333", "160x160")  # detectron2's test size, and the demo's


def _part(name: str) -> str:
    if name.startswith("backbone.bottom_up"):
        return "backbone"
    return "FPN" if name.startswith("backbone") else "heads"


@torch.no_grad()
def fix_ssn_choices(model: torch.nn.Module, mix: Dict[str, List[Tuple[Choice, float]]], seed: int):
    """Fix every SN layer of an SSN ``model`` on a (mean, variance) choice drawn from ``mix`` for
    its part (``_part``), deterministically from ``seed``, in place, as a trained SSN detector
    saves it: an SSN layer's logits at the choice (1 for the chosen branch, 0 for the others) and
    its fixed flags set, loaded back (which rebuilds the choice from the logits); a frozen layer
    (``MODEL.BACKBONE.FREEZE_AT``) with the logits whose softmax is that one-hot choice."""
    draw = random.Random(seed)
    for name, layer in named_switch_norms(model):
        sparse = isinstance(layer, (SparseSwitchNorm2d, SyncSparseSwitchNorm2d))
        choices, weights = zip(*mix[_part(name)])
        for logit_name, branch in zip(LOGIT_NAMES, draw.choices(choices, weights)[0]):
            one_hot = torch.eye(len(BRANCHES))[BRANCHES.index(branch)]
            getattr(layer, logit_name).copy_(one_hot if sparse else weights_as_logits(one_hot))
        if sparse:
            layer.mean_fixed.fill_(1)
            layer.var_fixed.fill_(1)
            layer.load_state_dict(layer.state_dict())


def build(key: str, device: str, opts: Sequence[str], seed: int) -> Deployment:
    """The deployed eval-mode model ``key`` of ``MODELS`` with random weights (seeded), and what
    each of its SN layers became."""
    spec = MODELS[key]
    settings = ("MODEL.WEIGHTS", "", "MODEL.DEVICE", device, *spec.opts, *opts)
    cfg = load_config(CONFIGS / spec.config, *settings)
    torch.manual_seed(0)
    model = randomize_sn_state(build_model(cfg))
    if spec.mix is not None:
        fix_ssn_choices(model, spec.mix, seed)
    return deployable(model)


def became(deployment: Deployment) -> str:
    """What the SN layers of a deployed model became, counted per part."""
    parts: Dict[str, Counter] = {part: Counter() for part in MIX}
    for name, what in deployment.layers.items():
        parts[_part(name)][what] += 1
    return "; ".join(
        f"{part}: " + ", ".join(f"{what} ({n})" for what, n in counts.most_common())
        for part, counts in parts.items()
        if counts
    )


def _image(size: Tuple[int, int], device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(3, *size, generator=gen) * 255).to(device)


def _timer(fn: Callable[[], object], device: str) -> Callable[[], float]:
    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def measure(
    models: Dict[str, torch.nn.Module],
    traced: Dict[str, torch.jit.ScriptModule],
    size: Tuple[int, int],
    device: str,
    repeats: int,
    warmup: int,
) -> List[dict]:
    """One row per model: median and best seconds per image, eager and (for the models in
    ``traced``) traced, and the number of detections."""
    image = _image(size, device)
    cases: Dict[Tuple[str, str], Callable[[], float]] = {}
    for key, model in models.items():
        cases[key, "eager"] = _timer(
            lambda m=model: m.inference([{"image": image}], do_postprocess=False), device
        )
        if key in traced:
            cases[key, "traced"] = _timer(lambda t=traced[key]: t(image), device)
    times: Dict[Tuple[str, str], List[float]] = {case: [] for case in cases}
    for i in range(warmup + repeats):
        for case, run in cases.items():
            seconds = run()
            if i >= warmup:
                times[case].append(seconds)
    rows = []
    for key in models:
        with torch.no_grad():
            detections = len(models[key].inference([{"image": image}], do_postprocess=False)[0])
        row = {"key": key, "dets": detections}
        for mode in MODES:
            if (key, mode) in times:
                row[mode] = statistics.median(times[key, mode])
                row[mode + " best"] = min(times[key, mode])
        rows.append(row)
    return rows


def ratio(rows: List[dict], key: str, to: str, mode: str) -> Optional[float]:
    """The median time of model ``key`` over that of model ``to`` in ``mode``, if both ran."""
    row = next((r for r in rows if r["key"] == key), None)
    base = next((r for r in rows if r["key"] == to), None)
    if row is None or base is None or mode not in row or mode not in base:
        return None
    return row[mode] / base[mode]


def _table(results: List[Tuple[str, List[dict]]]) -> str:
    lines = []
    for size, rows in results:
        for r in rows:
            cells = [size, MODELS[r["key"]].label, str(r["dets"])]
            for key in ("eager", "eager best", "traced", "traced best"):
                cells.append(f"{r[key] * 1e3:.0f}" if key in r else "-")
            for to in (FLOOR, BASELINE):
                for mode in MODES:
                    value = ratio(rows, r["key"], to, mode)
                    cells.append("-" if value is None else f"{value:.3f}")
            lines.append(cells)
    headers = ["size", "model", "dets", "eager ms", "best", "traced ms", "best"]
    headers += [f"{mode} vs {MODELS[to].label}" for to in (FLOOR, BASELINE) for mode in MODES]
    return tabulate(lines, headers, tablefmt="github", disable_numparse=True)


# (model, compared with, target) of the summary lines
TARGETS = (("BN-folded", FLOOR, 1.05), ("SSN-mixed", BASELINE, 1.0), ("SN", BASELINE, 1.05))


def _size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HxW ...")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--mix-seed", type=int, default=0, help="draws the SSN layers' choices")
    parser.add_argument("--no-trace", action="store_true", help="eager only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    for key in (FLOOR, BASELINE):
        if key not in args.models:
            args.models.append(key)

    torch.set_num_threads(args.threads)
    where = f"CPU, {args.threads} threads"
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    print(
        f"Mask R-CNN R50-FPN inference, batch 1, {where}, torch {torch.__version__}, SN kernels "
        f"{kernels_status(args.device)}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"ms per image: median (and best) of {args.repeats} after {args.warmup} warm-up; "
        f"every model through sn_detection.export.deployable; traced = TorchScript trace; "
        f"overrides: {' '.join(args.opts) or 'none'}"
    )
    deployments = {key: build(key, args.device, args.opts, args.mix_seed) for key in args.models}
    for key, deployment in deployments.items():
        if MODELS[key].mix is not None:
            print(f"{MODELS[key].label} (seed {args.mix_seed}): {became(deployment)}")
    models = {key: deployment.model for key, deployment in deployments.items()}
    traced = {}
    if not args.no_trace:  # traced once, at the first size: the trace keeps sizes dynamic
        example = _image(_size(args.sizes[0]), args.device)
        traced = {key: trace(model, example)[0] for key, model in models.items()}
    results = []
    for text in args.sizes:
        rows = measure(models, traced, _size(text), args.device, args.repeats, args.warmup)
        results.append((text, rows))
    print()
    print(_table(results))
    print()
    for text, rows in results:
        for key, to, target in TARGETS:
            for mode in MODES:
                value = ratio(rows, key, to, mode)
                if value is not None:
                    what = f"{MODELS[key].label} / {MODELS[to].label}, {mode}, {text}"
                    print(f"{what}: {value:.3f} (target <= {target})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
