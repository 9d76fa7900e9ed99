#!/usr/bin/env python
"""Mask R-CNN R50-FPN training-iteration time and peak memory for SN, Sparse SN, SyncSN, GN and
FrozenBN.

Each norm's model (the COCO configs of configs/COCO-InstanceSegmentation/, random weights) trains
on the same 2 synthetic images per iteration (forward, backward, SGD step), in a fresh process
of its own, so that memory figures do not mix. Reported: median seconds per iteration and

* CUDA: peak ``torch.cuda.max_memory_allocated`` during the timed iterations;
* CPU: peak resident memory (ru_maxrss) minus the resident memory after building the model, i.e.
  what the training iterations add (activations, gradients, optimizer state, allocator slack).

SyncSN runs in one process, where it equals SN; it shows the cost of the wrapper alone. SSN is
the SN config with every norm "SSN", halfway through its radius schedule (radius ``SSN_RADIUS``,
small distinct logits: the sparsestmax push runs in every layer and none is fixed yet), each
iteration doing what ``SSNSchedule`` adds to training (the radius set before the step, the fixed
logits held after it); the line under the table gives its time and memory over SN's.

    .venv/bin/python benchmarks/bench_model.py                 # CPU, 320x480 images, 2 threads
    .venv/bin/python benchmarks/bench_model.py --device cuda   # 800x1333 images

``--opts KEY VALUE ...`` overrides config keys of every model (the smoke test samples fewer RoIs).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "FrozenBN": "mask_rcnn_R_50_FPN_2x_frozenbn.yaml",
    "GN": "mask_rcnn_R_50_FPN_2x_gn.yaml",
    "SN": "mask_rcnn_R_50_FPN_2x_sn.yaml",
    "SSN": "mask_rcnn_R_50_FPN_2x_sn.yaml",
    "SyncSN": "mask_rcnn_R_50_FPN_2x_syncsn.yaml",
}
NORM_EVERYWHERE = ("SSN",)  # norms without a config of their own: set in every norm key
SSN_RADIUS = 0.5


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _synthetic_batch(height: int, width: int, device: str, images: int = 2):
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(images):
        inst = Instances((height, width))
        boxes, masks = [], torch.zeros(4, height, width, dtype=torch.bool)
        for k in range(4):
            x0, y0 = (
                int(torch.randint(0, width // 2, (1,), generator=g)),
                int(torch.randint(0, height // 2, (1,), generator=g)),
            )
            x1, y1 = x0 + width // 4, y0 + height // 4
            boxes.append([x0, y0, x1, y1])
            masks[k, y0:y1, x0:x1] = True
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.randint(0, 80, (4,), generator=g)
        inst.gt_masks = BitMasks(masks)
        image = torch.rand(3, height, width, generator=g) * 255
        batch.append({"image": image.to(device), "instances": inst.to(device)})
    return batch


def run_one(norm: str, args) -> dict:
    """Time ``args.iters`` training iterations of one config; returns the figures."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from sn_detection import add_sn_config, build_sn_optimizer  # also registers the SN builders
    from sn_detection.layers import hold_fixed_logits, set_ssn_radius
    from sn_detection.layers.sparse_switch_norm import sparse_switch_norms
    from sn_detection.study import norm_overrides

    torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/COCO-InstanceSegmentation", CONFIGS[norm]))
    # random weights: a small learning rate keeps them from diverging in the few timed steps
    cfg.merge_from_list(
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device, "SOLVER.BASE_LR", "0.0001"]
    )
    cfg.merge_from_list((norm_overrides(norm) if norm in NORM_EVERYWHERE else []) + args.opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    sparse = list(sparse_switch_norms(model))
    with torch.no_grad():
        for _, layer in sparse:
            layer.mean_weight.normal_(0.0, 0.1)
            layer.var_weight.normal_(0.0, 0.1)
    optimizer = build_sn_optimizer(cfg, model)
    height, width = args.size
    batch = _synthetic_batch(height, width, args.device)
    cuda = args.device == "cuda"
    rss_before = _rss_mb()
    times = []
    with EventStorage():
        for i in range(args.warmup + args.iters):
            if cuda:
                torch.cuda.synchronize()
                if i == args.warmup:
                    torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            if sparse:
                set_ssn_radius(model, SSN_RADIUS)
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            if sparse:
                hold_fixed_logits(model)
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return {"norm": norm, "median_s": statistics.median(times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--norms", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="image size (default: 320 480 on CPU, 800 1333 on CUDA)",
    )
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for every model, e.g. fewer RoIs for a smoke run",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    args.size = args.size or ([320, 480] if args.device == "cpu" else [800, 1333])

    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return

    results = []
    for norm in args.norms:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            norm,
            "--device",
            args.device,
            "--iters",
            str(args.iters),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--size",
            *map(str, args.size),
            "--opts",
            *args.opts,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{norm} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  measured {norm}", file=sys.stderr, flush=True)

    ref = next((r for r in results if r["norm"] == "GN"), results[0])
    cuda = args.device == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} threads"
    overrides = f"; overrides: {' '.join(args.opts)}" if args.opts else ""
    print(
        f"Mask R-CNN R50-FPN, 2 images of {args.size[0]}x{args.size[1]}, {device}, "
        f"torch {torch.__version__}; median of {args.iters} iterations after {args.warmup}"
        f"{overrides}"
    )
    vs = "vs " + ref["norm"]
    print(f"{'norm':<10}{'s/iter':>10}{vs:>10}{'peak MiB':>12}{vs:>10}")
    for r in results:
        print(
            f"{r['norm']:<10}{r['median_s']:>10.3f}{r['median_s'] / ref['median_s']:>10.2f}"
            f"{r['peak_mb']:>12.0f}{r['peak_mb'] / ref['peak_mb']:>10.2f}"
        )
    by_norm = {r["norm"]: r for r in results}
    if "SSN" in by_norm and "SN" in by_norm:
        ssn, sn = by_norm["SSN"], by_norm["SN"]
        print(
            f"SSN / SN: time {ssn['median_s'] / sn['median_s']:.3f} (target <= 1.05), "
            f"peak memory {ssn['peak_mb'] / sn['peak_mb']:.3f}"
        )


if __name__ == "__main__":
    main()
