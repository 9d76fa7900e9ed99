#!/usr/bin/env python
"""How far float32 training drifts from float64: SN against GN.

Builds the demo config's backbone + FPN (R18, FPN 64 channels) with each norm, copies it to
float64 with the same initial weights, and trains both copies with SGD (momentum 0.9, the demo's
linear warm-up from 0.001 x lr over ``WARMUP`` steps) on the same batches of
nuclei images (``sn_detection.data.nuclei``) under a simple loss on the FPN outputs (mean squared
distance to fixed random targets; detectron2's heads refuse float64, its NMS does). After each
step it reports the relative parameter drift ``|w32 - w64| / |w64 - w0|`` (against how far
float64 training moved the weights), ``|w32 - w64| / |w64|``, and the relative loss difference
``|L32 - L64| / |L64|``. SN's drift should be of the order of GN's.

Usage (docs/AB_TESTS.md):
    benchmarks/fp64_drift.py --steps 40 --norms SN GN
"""

import argparse
import copy
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

from sn_detection import add_sn_config
from sn_detection.data.nuclei import NUCLEI
from sn_detection.layers import set_fast_kernels
from sn_detection.utils.cli import InputError, run_tool
from sn_detection.utils.file_io import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_sn_demo.yaml")
WARMUP, WARMUP_FACTOR = 100, 0.001  # the demo's SOLVER.WARMUP_ITERS and detectron2's factor


def build(norm: str, seed: int) -> torch.nn.Module:
    """The demo's backbone + FPN with ``norm`` in every norm key, float32, in training mode."""
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, "MODEL.FPN.NORM", norm])
    torch.manual_seed(seed)
    return build_backbone(cfg).train()


def batches(steps: int, batch: int, size: int, seed: int) -> List[torch.Tensor]:
    """``steps`` float64 batches of nuclei images, resized to ``size``, roughly standardised."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(steps):
        images = [NUCLEI.make_image(rng)[0] for _ in range(batch)]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).double()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
        out.append((x - 128.0) / 64.0)
    return out


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().flatten() for p in model.parameters()])


def drift(norm: str, steps: int, batch: int, size: int, lr: float, seed: int) -> List[Dict]:
    """Train float32 and float64 copies of one model on the same batches; per step, the
    relative parameter and loss drift (module docstring)."""
    model32 = build(norm, seed)
    model64 = copy.deepcopy(model32).double()
    w0 = _flat(model64)
    data = batches(steps, batch, size, seed)
    with torch.no_grad():
        targets = {k: torch.randn_like(v) for k, v in model64(data[0]).items()}
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m in (model32, model64)]
    rows = []
    for step, x in enumerate(data, 1):
        alpha = min(1.0, (step - 1) / WARMUP)
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = lr * (WARMUP_FACTOR * (1 - alpha) + alpha)
        losses = []
        for model, opt, dtype in zip((model32, model64), opts, (torch.float32, torch.float64)):
            outputs = model(x.to(dtype))
            loss = sum(((outputs[k] - t.to(dtype)) ** 2).mean() for k, t in targets.items())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        w32, w64 = _flat(model32), _flat(model64)
        gap = (w32 - w64).norm().item()
        rows.append(
            {
                "step": step,
                "loss64": losses[1],
                "loss_rel": abs(losses[0] - losses[1]) / abs(losses[1]),
                "param_rel_update": gap / max((w64 - w0).norm().item(), 1e-30),
                "param_rel": gap / w64.norm().item(),
            }
        )
    return rows


def table(results: Dict[str, List[Dict]], every: int) -> str:
    """Markdown: per step (every ``every``-th and the last), each norm's drift figures: loss
    |L32 - L64| / |L64|, gap/update |w32 - w64| / |w64 - w0|, gap/weights |w32 - w64| / |w64|."""
    keys = ("loss_rel", "param_rel_update", "param_rel")
    names = [f"{n} {k}" for n in results for k in ("loss", "gap/update", "gap/weights")]
    lines = ["| step | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
    steps = len(next(iter(results.values())))
    for i in range(steps):
        if (i + 1) % every == 0 or i + 1 == steps:
            cells = [f"{rows[i][k]:.1e}" for rows in results.values() for k in keys]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--norms", nargs="+", default=["SN", "GN"], help="SN and/or detectron2 norms")
    p.add_argument("--batch", type=int, default=2, help="images per step (the demo's 2)")
    p.add_argument("--size", type=int, default=160, help="image side (the demo's 160)")
    p.add_argument("--lr", type=float, default=0.02, help="SGD learning rate (the demo's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=5, help="print every N-th step")
    p.add_argument("--plain-kernels", action="store_true", help="SN without the fast kernels")
    p.add_argument("--output", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.size < 32:
        raise InputError("--steps and --batch must be at least 1, --size at least 32")
    return args


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    set_fast_kernels(not args.plain_kernels)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {
        n: drift(n, args.steps, args.batch, args.size, args.lr, args.seed) for n in args.norms
    }
    print(table(results, args.every))
    if args.output:
        with atomic_write(args.output, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
