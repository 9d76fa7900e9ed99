#!/usr/bin/env python
"""Eval-mode latency per image (batch 1) of Mask R-CNN R50-FPN with SN, GN and frozen BN, eager and
exported (TorchScript tracing, as tools/deploy/export_model.py writes it), side by side.

    .venv/bin/python benchmarks/bench_inference.py                  # CPU: 800x1333 and 160x160
    .venv/bin/python benchmarks/bench_inference.py --device cuda
    .venv/bin/python benchmarks/bench_inference.py --sizes 64x96 --repeats 1 --warmup 1 \\
        MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64     # a smoke run

Models: the COCO configs of configs/COCO-InstanceSegmentation/ (mask_rcnn_R_50_FPN_2x_{sn,gn,
frozenbn}.yaml: the same 4conv1fc box head and mask head, norms everywhere but in the frozen-BN
model's FPN and heads), random weights (SN with random running statistics and importance logits),
trailing KEY VALUE overrides applied to all. The box head runs on ``RPN.POST_NMS_TOPK_TEST``
(1000) proposals in every model; what follows depends on each model's scores: the per-class NMS
over the candidates above ``ROI_HEADS.SCORE_THRESH_TEST`` (0.05) and the mask head on the kept
detections, whose number the table shows ("dets"). (Do not set the threshold to 0 to equalise
the detections: NMS then takes 1000 x 80 candidates, and its cost, which depends on where each
model's random weights put the boxes, swamps the norms'.)

Timed: ``model.inference([{"image": x}], do_postprocess=False)`` under ``torch.no_grad`` (eager),
and the traced ``TracingAdapter`` of the same model (exported), on one random (3, H, W) image per
size. Every repeat runs each (norm, eager/exported) case once in turn (round robin), so drifting
machine load hits all alike; the median and the best of ``--repeats`` after ``--warmup`` rounds
(TorchScript optimises a traced graph during its first runs). On CUDA the device is synchronised
around each call. Per layer, in eval mode: ``benchmarks/bench_norm.py --eval``.
"""

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tabulate import tabulate

import sn_detection  # noqa: F401  # isort: skip  (first: quiet detectron2 import, SN builders)
from detectron2.modeling import build_model

from sn_detection.export import trace
from sn_detection.layers import kernels_status
from sn_detection.testing import CONFIGS, load_config, randomize_sn_state

MODELS = {
    "SN": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml",
    "GN": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_gn.yaml",
    "FrozenBN": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_frozenbn.yaml",
}
BASELINE = "GN"
DEFAULT_SIZES = ("800x1333", "160x160")  # detectron2's test size, and the demo's


def build(norm: str, device: str, opts: Sequence[str]) -> torch.nn.Module:
    """The eval-mode model of ``norm`` with random weights (seeded)."""
    cfg = load_config(
        CONFIGS / MODELS[norm],
        "MODEL.WEIGHTS",
        "",
        "MODEL.DEVICE",
        device,
        *opts,
    )
    torch.manual_seed(0)
    return randomize_sn_state(build_model(cfg)).eval()


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
    """One row per norm: median and best seconds per image, eager and (for the norms in
    ``traced``) exported, and the number of detections."""
    image = _image(size, device)
    cases: Dict[Tuple[str, str], Callable[[], float]] = {}
    for norm, model in models.items():
        cases[norm, "eager"] = _timer(
            lambda m=model: m.inference([{"image": image}], do_postprocess=False), device
        )
        if norm in traced:
            cases[norm, "exported"] = _timer(lambda t=traced[norm]: t(image), device)
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in cases}
    for i in range(warmup + repeats):
        for key, run in cases.items():
            seconds = run()
            if i >= warmup:
                times[key].append(seconds)
    rows = []
    for norm in models:
        with torch.no_grad():
            detections = len(models[norm].inference([{"image": image}], do_postprocess=False)[0])
        row = {"norm": norm, "dets": detections}
        for mode in ("eager", "exported"):
            if (norm, mode) in times:
                row[mode] = statistics.median(times[norm, mode])
                row[mode + " best"] = min(times[norm, mode])
        rows.append(row)
    return rows


def _ratio(rows: List[dict], norm: str, key: str) -> Optional[float]:
    row = next((r for r in rows if r["norm"] == norm), None)
    base = next((r for r in rows if r["norm"] == BASELINE), None)
    if row is None or base is None or key not in row:
        return None
    return row[key] / base[key]


def _table(results: List[Tuple[str, List[dict]]]) -> str:
    lines = []
    for size, rows in results:
        for r in rows:
            cells = [size, r["norm"], str(r["dets"])]
            for key in ("eager", "eager best", "exported", "exported best"):
                cells.append(f"{r[key] * 1e3:.0f}" if key in r else "-")
            for key in ("eager", "exported"):
                ratio = _ratio(rows, r["norm"], key)
                cells.append("-" if ratio is None else f"{ratio:.3f}")
            lines.append(cells)
    headers = ["size", "norm", "dets", "eager ms", "best", "exported ms", "best"]
    headers += [f"eager vs {BASELINE}", f"exported vs {BASELINE}"]
    return tabulate(lines, headers, tablefmt="github", disable_numparse=True)


def _size(text: str) -> Tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="HxW ...")
    parser.add_argument("--norms", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--no-export", action="store_true", help="eager only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if BASELINE not in args.norms:
        args.norms.append(BASELINE)

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
        f"exported = traced TorchScript; overrides: {' '.join(args.opts) or 'none'}"
    )
    models = {norm: build(norm, args.device, args.opts) for norm in args.norms}
    traced = {}
    if not args.no_export:  # traced once, at the first size: the trace keeps sizes dynamic
        example = _image(_size(args.sizes[0]), args.device)
        traced = {norm: trace(model, example)[0] for norm, model in models.items()}
    results = []
    for text in args.sizes:
        rows = measure(models, traced, _size(text), args.device, args.repeats, args.warmup)
        results.append((text, rows))
    print()
    print(_table(results))
    print()
    for text, rows in results:
        for key in ("eager", "exported"):
            ratio = _ratio(rows, "SN", key)
            if ratio is not None:
                print(f"SN / {BASELINE}, {key}, {text}: {ratio:.3f} (target <= 1.05)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
