"""Synchronized norms across processes: SyncSN vs SN vs SyncBatchNorm, forward plus backward.

Starts ``--world-size`` CPU processes on the gloo backend (one thread each) and times each layer on
Mask R-CNN-like shapes (per process), scaled down by default; ``--full`` uses the full sizes
(2 images of 800x1216 per process, 512 box and 128 mask RoIs), ``--quick`` tiny ones for a smoke
run. Reports the median wall time of forward and of forward+backward (slowest rank per
iteration), the cost of synchronizing (SyncSN over SN, the sync BN over BatchNorm2d), and the
calls of torch.distributed collectives per layer in one steady-state iteration (after the first),
forward and backward separately.

torch's ``nn.SyncBatchNorm`` refuses CPU tensors; the script says so and compares against
detectron2's ``NaiveSyncBatchNorm(stats_mode="N")`` (count-weighted, like SyncSN) instead.

    python benchmarks/bench_sync.py            # scaled-down shapes
    python benchmarks/bench_sync.py --full     # Mask R-CNN sizes (slow on CPU)
    python benchmarks/bench_sync.py --quick    # seconds (the smoke test runs this)
"""

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sn_detection.testing import count_collectives

# (name, N, C, H, W) per process
FULL_SHAPES = [
    ("res2 2x800x1216", 2, 256, 200, 304),
    ("res4 2x800x1216", 2, 1024, 50, 76),
    ("box head 512 RoIs", 512, 256, 7, 7),
    ("mask head 128 RoIs", 128, 256, 14, 14),
]
# default: backbone maps at a quarter of the side (a 200x304 image), a quarter of the RoIs
SCALED_SHAPES = [
    ("res2 2x200x304", 2, 256, 50, 76),
    ("res4 2x200x304", 2, 1024, 13, 19),
    ("box head 128 RoIs", 128, 256, 7, 7),
    ("mask head 32 RoIs", 32, 256, 14, 14),
]
QUICK_SHAPES = [
    ("tiny map", 2, 32, 16, 16),
    ("tiny RoIs", 8, 32, 7, 7),
]
COLLECTIVES_ONLY = "gloo all_gather of 2C+1 floats (fwd) + all_reduce of 2C (bwd) alone"


def _torch_sync_bn_error() -> Optional[str]:
    """Why nn.SyncBatchNorm cannot run here (None if it can), from a 1-step try."""
    layer = nn.SyncBatchNorm(4)
    try:
        layer(torch.randn(2, 4, 3, 3)).sum().backward()
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def _layers(sync_bn_error: Optional[str]) -> List[Tuple[str, str, Callable[[int], nn.Module]]]:
    """(name, family, constructor); each family's unsynchronized layer comes first."""
    from detectron2.layers import NaiveSyncBatchNorm

    from sn_detection.layers import SwitchNorm2d, SyncSwitchNorm2d

    layers = [
        ("SN (no sync)", "SN", SwitchNorm2d),
        ("SyncSN", "SN", SyncSwitchNorm2d),
        ("BatchNorm2d (no sync)", "BN", nn.BatchNorm2d),
    ]
    if sync_bn_error is None:
        layers.append(("nn.SyncBatchNorm", "BN", nn.SyncBatchNorm))
    layers.append(("NaiveSyncBN (N)", "BN", lambda c: NaiveSyncBatchNorm(c, stats_mode="N")))
    return layers


def _iteration(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Tuple[float, float]:
    """One forward and backward, all ranks starting together: (fwd s, fwd+bwd s) on this rank."""
    x.grad = None
    dist.barrier()  # a rank that waits in the layer's collective counts the wait as its time
    t0 = time.perf_counter()
    y = layer(x)
    t1 = time.perf_counter()
    y.backward(dy)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def _count_calls(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Tuple[int, int]:
    """Collective calls in one forward and in one backward, after a first (checking) iteration."""
    layer(x).backward(dy)
    with count_collectives() as forward:
        y = layer(x)
    with count_collectives() as backward:
        y.backward(dy)
    return sum(forward.values()), sum(backward.values())


def _collectives_only(channels: int) -> Tuple[float, float]:
    """The floor of a synchronized norm: the collectives SyncSN makes, alone: the all_gather of
    2C+1 floats in forward and the all_reduce of 2C in backward: (forward s, both s) on this
    rank. (NaiveSyncBN's forward collective is an all_gather too.)"""
    vec = torch.randn(2 * channels + 1)
    gathered = [torch.empty_like(vec) for _ in range(dist.get_world_size())]
    grads = torch.randn(2 * channels)
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_gather(gathered, vec)
    t1 = time.perf_counter()
    dist.all_reduce(grads)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def _bench_shape(shape: Tuple[int, ...], layers, args: argparse.Namespace) -> List[tuple]:
    """(name, family, fwd ms, fwd+bwd ms, calls fwd, calls bwd) per layer, medians over rounds,
    and a last row for the collectives alone.

    The layers take turns, one iteration each per round, so a busy machine slows them alike.
    """
    x = torch.randn(*shape).requires_grad_()
    dy = torch.randn(*shape)
    modules = [make(shape[1]).train() for _, _, make in layers]
    calls = [_count_calls(m, x, dy) for m in modules] + [(1, 1)]
    times: List[List[Tuple[float, float]]] = [[] for _ in range(len(modules) + 1)]
    for round_ in range(args.warmup + args.iters):
        for m, t in zip(modules, times):
            fwd_total = _iteration(m, x, dy)
            if round_ >= args.warmup:
                t.append(fwd_total)
        fwd_total = _collectives_only(shape[1])
        if round_ >= args.warmup:
            times[-1].append(fwd_total)
    gathered: List[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, times)
    rows = []
    names = [(name, family) for name, family, _ in layers] + [(COLLECTIVES_ONLY, "gloo")]
    for i, (name, family) in enumerate(names):
        # per iteration, the slowest rank
        slowest = [tuple(map(max, zip(*per_rank))) for per_rank in zip(*(g[i] for g in gathered))]
        fwd_ms = statistics.median(t[0] for t in slowest) * 1e3
        total_ms = statistics.median(t[1] for t in slowest) * 1e3
        rows.append((name, family, fwd_ms, total_ms, *calls[i]))
    return rows


def _worker(rank: int, world_size: int, store: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(rank)
        if args.plain_kernels:
            from sn_detection.layers import set_fast_kernels

            set_fast_kernels(False)
        sync_bn_error = _torch_sync_bn_error()
        layers = _layers(sync_bn_error)
        rows = []
        for shape_name, *shape in args.shapes:
            for row in _bench_shape(tuple(shape), layers, args):
                rows.append((shape_name, "x".join(map(str, shape)), *row))
        if rank == 0:
            from sn_detection.layers import kernels_status

            kernels = kernels_status("cpu")
            torch.save({"rows": rows, "sync_bn_error": sync_bn_error, "kernels": kernels}, out)
    finally:
        dist.destroy_process_group()


def _print_report(
    rows: List[tuple], sync_bn_error: Optional[str], args: argparse.Namespace
) -> None:
    print(
        f"# {args.world_size} processes, gloo, CPU, 1 thread each, float32; median of "
        f"{args.iters} iterations after {args.warmup} warm-up (slowest rank per iteration); "
        f"SN kernels: {args.kernels}"
    )
    if sync_bn_error is not None:
        print(f"# nn.SyncBatchNorm does not run on CPU/gloo ({sync_bn_error});")
        print('# compared against detectron2 NaiveSyncBatchNorm(stats_mode="N") instead')
    print(
        "| shape (per process) | N x C x H x W | layer | fwd ms | fwd+bwd ms | vs SN "
        "| sync cost ms | collectives fwd | collectives bwd |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    unsynced: Dict[Tuple[str, str], float] = {}
    for shape_name, dims, layer, family, fwd_ms, total_ms, calls_fwd, calls_bwd in rows:
        if family == "gloo":
            cost = "-"
        elif (shape_name, family) not in unsynced:
            unsynced[shape_name, family] = total_ms
            cost = "-"
        else:
            cost = f"{total_ms - unsynced[shape_name, family]:+.2f}"
        print(
            f"| {shape_name} | {dims} | {layer} | {fwd_ms:.2f} | {total_ms:.2f} "
            f"| {total_ms / unsynced[shape_name, 'SN']:.2f}x | {cost} | {calls_fwd} | {calls_bwd} |"
        )
    print(
        "# sync cost: fwd+bwd time minus that of the same norm without synchronization; "
        f"'{COLLECTIVES_ONLY}': its floor"
    )
    print(
        "# collectives: calls per layer per iteration after the first; SyncSN's first forward "
        "makes one more (the cross-process channel/dtype check)"
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny shapes, few iterations (smoke)")
    size.add_argument("--full", action="store_true", help="full Mask R-CNN sizes (slow on CPU)")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument(
        "--plain-kernels", action="store_true", help="SN on the plain PyTorch kernels, not the C++"
    )
    parser.add_argument("--iters", type=int, default=None, help="timed iterations per layer")
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args(argv)
    args.shapes = QUICK_SHAPES if args.quick else FULL_SHAPES if args.full else SCALED_SHAPES
    if args.iters is None:
        args.iters = 3 if args.quick else 10 if args.full else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.pt")
        mp.start_processes(
            _worker,
            args=(args.world_size, os.path.join(tmp, "store"), args, out),
            nprocs=args.world_size,
            start_method="spawn",
        )
        report = torch.load(out)
    args.kernels = report["kernels"]
    _print_report(report["rows"], report["sync_bn_error"], args)


if __name__ == "__main__":
    main()
