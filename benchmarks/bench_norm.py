"""Per-layer cost of SN against BatchNorm2d, GroupNorm(32) and detectron2's FrozenBatchNorm2d.

    python benchmarks/bench_norm.py            # CPU (2 threads) and, when present, CUDA
    python benchmarks/bench_norm.py --quick    # small shapes, few repeats (a smoke test)
    python benchmarks/bench_norm.py --eval     # eval mode: forward only, as at inference

For each (N, C, H, W) shape, all layers are measured side by side in one run, in training mode,
on a leaf input that requires grad, with one fixed random output gradient:

- time: median over ``--repeats`` of forward and of forward+backward, after ``--warmup`` untimed
  rounds; also the best (minimum) forward+backward, less sensitive to other processes. Every
  repeat runs each layer once in turn (round robin), so drifting machine load hits all alike.
  On CUDA the device is synchronised around each measurement.
- saved: the bytes autograd keeps for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``: the sum of ``nbytes`` of the unique storages of
  the tensors packed during forward ("total"), and the same without the input's own storage
  ("beyond input"). SN saves everything it keeps with ``save_for_backward``, so all of it is
  seen: its input and about ten (N, C)-sized tensors of the mixer.
- peak: the most memory allocated at any moment of one forward+backward beyond what was allocated
  before it (input, output gradient and parameters are not counted): output, saved tensors,
  temporaries and the input gradient. On CUDA from ``torch.cuda.max_memory_allocated``; on CPU
  from the allocation and free events that the PyTorch profiler records with
  ``profile_memory=True`` (every allocation of PyTorch's CPU allocator, the C++ kernels'
  included), summed in time order.

Layers: "SN ours" is ``SwitchNorm2d`` with the fastest registered kernels (the C++/OpenMP ones
on CPU when built), "SSN ours" ``SparseSwitchNorm2d`` (same kernels, sparsestmax weights, radius
0.5), "SN ours, plain" the same layer on the plain PyTorch kernels
(``kernels.fast_kernels(False)`` around its forward; backward uses the kernels forward
chose), "SN reference" the official formulas written plainly
(``switch_norm_reference``). CPU runs are float32; CUDA runs float32 and bfloat16 autocast (the
input in bfloat16, as a convolution under autocast produces it). The load average is printed:
other processes on the machine slow multi-threaded runs.

``--eval``: the layers in eval mode, forward only under ``torch.no_grad`` (inference; BatchNorm
and SN's BN branch use the running statistics), on an input that does not require grad; the
table has the forward times and the peak memory only. One more layer is measured: "SN exported",
the portable path that ``torch.jit.trace``, ``torch.export`` and ONNX record for an eval-mode SN
layer (``portable.switch_norm_inference``).
"""

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from tabulate import tabulate
from torch import Tensor, nn

from sn_detection.layers import SparseSwitchNorm2d, SwitchNorm2d, kernels, kernels_status
from sn_detection.layers.portable import switch_norm_inference
from sn_detection.testing import switch_norm_reference

# Mask R-CNN-sized inputs: FPN levels of an 800x1216 image pair, and a batch of RoI features
SHAPES = [(2, 256, 200, 304), (2, 64, 400, 608), (2, 512, 100, 152), (1024, 256, 14, 14)]
QUICK_SHAPES = [(2, 32, 24, 32), (64, 32, 7, 7)]
MB = 2.0**20


class ReferenceSN(nn.Module):
    """``switch_norm_reference`` with SN's parameters and running statistics."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        params = (self.weight, self.bias, self.mean_weight, self.var_weight)
        stats = (self.running_mean, self.running_var)
        return switch_norm_reference(x, *params, *stats, training=self.training)


class PlainKernelsSN(SwitchNorm2d):
    """SwitchNorm2d on the plain PyTorch kernels, whatever is registered."""

    def forward(self, x: Tensor) -> Tensor:
        with kernels.fast_kernels(False):
            return super().forward(x)


class ExportedSN(SwitchNorm2d):
    """An eval-mode SwitchNorm2d as exporters record it: the portable inference path."""

    def forward(self, x: Tensor) -> Tensor:
        stats = (self.running_mean, self.running_var)
        p, q = self.mix_weights()
        return switch_norm_inference(x, self.weight, self.bias, p, q, *stats, self.eps)


def sparse_sn(channels: int) -> SparseSwitchNorm2d:
    """A SparseSwitchNorm2d halfway through its radius schedule, with distinct logits: the
    sparsestmax push runs and no weight vector is fixed yet."""
    layer = SparseSwitchNorm2d(channels)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, 0.1, 0.2]))
        layer.var_weight.copy_(torch.tensor([0.1, 0.3, 0.2]))
        layer.radius.fill_(0.5)
    return layer


LAYERS: Dict[str, Callable[[int], nn.Module]] = {
    "SN ours": SwitchNorm2d,
    "SN ours, plain": PlainKernelsSN,
    "SSN ours": sparse_sn,
    "SN reference": ReferenceSN,
    "BatchNorm2d": nn.BatchNorm2d,
    "GroupNorm(32)": lambda c: nn.GroupNorm(32, c),
    "FrozenBatchNorm2d": FrozenBatchNorm2d,
}
EVAL_LAYERS = {"SN ours": SwitchNorm2d, "SN exported": ExportedSN, **LAYERS}
BASELINE = "GroupNorm(32)"


class Case:
    """One layer on one input: runs forward and backward and measures them."""

    def __init__(self, layer: nn.Module, x: Tensor, dy: Tensor, autocast: Optional[torch.dtype]):
        self.layer, self.x, self.dy, self.autocast = layer, x, dy, autocast
        self.device = x.device
        self.eval_mode = not layer.training  # forward only, without autograd

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def forward(self) -> Tensor:
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            return self.layer(self.x)

    def run(self) -> Tuple[float, float]:
        """Seconds of forward and of forward+backward (in eval mode: twice the forward)."""
        if self.eval_mode:
            self._sync()
            start = time.perf_counter()
            with torch.no_grad():
                y = self.forward()
            self._sync()
            del y
            forward = time.perf_counter() - start
            return forward, forward
        self.x.grad = None
        self.layer.zero_grad(set_to_none=True)
        self._sync()
        start = time.perf_counter()
        y = self.forward()
        self._sync()
        forward = time.perf_counter() - start
        y.backward(self.dy.to(y.dtype))
        self._sync()
        total = time.perf_counter() - start
        del y
        return forward, total

    def saved_bytes(self) -> Tuple[int, int]:
        """Bytes saved for backward: (total, beyond the input's storage)."""
        storages: Dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = self.forward()
        del y
        total = sum(storages.values())
        return total, total - storages.get(self.x.untyped_storage().data_ptr(), 0)

    def peak_bytes(self) -> int:
        """The most memory allocated during one forward+backward beyond what was there before."""
        self.x.grad = None
        self.layer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            self._sync()
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.run()
            return torch.cuda.max_memory_allocated(self.device) - before
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
            self.run()
        events = sorted(
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        )
        allocated = peak = 0
        for _, nbytes in events:
            allocated += nbytes
            peak = max(peak, allocated)
        return peak


def measure(
    shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    autocast: Optional[torch.dtype],
    repeats: int,
    warmup: int,
    eval_mode: bool = False,
) -> List[dict]:
    """All layers on one input, interleaved; one result row per layer."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(not eval_mode)
    dy = torch.randn(shape, generator=gen).to(device)
    layers = EVAL_LAYERS if eval_mode else LAYERS
    cases = {
        name: Case(make(shape[1]).to(device).train(not eval_mode), x, dy, autocast)
        for name, make in layers.items()
    }
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in cases}
    for i in range(warmup + repeats):
        for name, case in cases.items():
            result = case.run()
            if i >= warmup:
                times[name].append(result)
    rows = []
    for name, case in cases.items():
        forward = statistics.median(t[0] for t in times[name])
        total = statistics.median(t[1] for t in times[name])
        best = min(t[1] for t in times[name])
        saved, beyond = (0, 0) if eval_mode else case.saved_bytes()
        row = dict(layer=name, forward=forward, total=total, best=best)
        rows.append(dict(row, saved=saved, beyond=beyond, peak=case.peak_bytes()))
    base = next(r for r in rows if r["layer"] == BASELINE)
    for row in rows:
        row["ratio"] = row["total"] / base["total"]
        row["best_ratio"] = row["best"] / base["best"]
    return rows


def _table(results: List[Tuple[str, List[dict]]], eval_mode: bool = False) -> str:
    lines = []
    if eval_mode:  # forward only: no backward, nothing saved
        for shape, rows in results:
            for r in rows:
                times = [r["forward"] * 1e3, r["ratio"], r["best"] * 1e3, r["best_ratio"]]
                cells = [*(f"{t:.2f}" for t in times), f"{r['peak'] / MB:.1f}"]
                lines.append([shape, r["layer"], *cells])
        headers = ["shape", "layer", "fwd ms", "vs GN", "best fwd ms", "best vs GN", "peak MB"]
        return tabulate(lines, headers, tablefmt="github", disable_numparse=True)
    for shape, rows in results:
        for r in rows:
            times = [r["forward"] * 1e3, r["total"] * 1e3, r["ratio"], r["best"] * 1e3]
            sizes = [r["saved"] / MB, r["beyond"] / MB, r["peak"] / MB]
            lines.append(
                [shape, r["layer"], *(f"{t:.2f}" for t in times), f"{r['best_ratio']:.2f}"]
                + [f"{m:.1f}" for m in sizes]
            )
    headers = ["shape", "layer", "fwd ms", "fwd+bwd ms", "vs GN", "best fwd+bwd ms", "best vs GN"]
    headers += ["saved MB", "beyond input MB", "peak MB"]
    return tabulate(lines, headers, tablefmt="github", disable_numparse=True)


def _configs(device: str) -> List[Tuple[str, torch.device, torch.dtype, Optional[torch.dtype]]]:
    configs = []
    if device in ("cpu", "all"):
        configs.append(("cpu fp32", torch.device("cpu"), torch.float32, None))
    if device in ("cuda", "all") and torch.cuda.is_available():
        cuda = torch.device("cuda")
        configs.append(("cuda fp32", cuda, torch.float32, None))
        configs.append(("cuda bf16 autocast", cuda, torch.bfloat16, torch.bfloat16))
    elif device == "cuda":
        raise SystemExit("--device cuda: CUDA is not available")
    return configs


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--eval", action="store_true", help="eval mode, forward only (inference)")
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "all"], default="all", help="all: CPU, and CUDA if any"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2)")
    shape_help = "an input shape (repeatable); default: the Mask R-CNN-sized SHAPES"
    parser.add_argument(
        "--shape", type=int, nargs=4, action="append", metavar=("N", "C", "H", "W"), help=shape_help
    )
    args = parser.parse_args(argv)
    shapes = args.shape or (QUICK_SHAPES if args.quick else SHAPES)
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    torch.set_num_threads(args.threads)
    cpu_kernels = kernels_status("cpu")
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}, SN CPU kernels: {cpu_kernels}"
    )
    timed = "eval-mode forward" if args.eval else "fwd+bwd"
    print(
        f"median (and best) of {repeats} repeats after {warmup} warm-up; "
        f"vs GN = {timed} time / GroupNorm(32)'s"
    )
    for label, device, dtype, autocast in _configs(args.device):
        results = []
        for shape in shapes:
            rows = measure(shape, device, dtype, autocast, repeats, warmup, args.eval)
            results.append(("x".join(map(str, shape)), rows))
        chosen = kernels_status(device, dtype)
        print(f"\n## {label} (SN ours: {chosen} kernels)\n")
        print(_table(results, args.eval))
        print()
        target = 1.1 if args.eval else 1.25
        for layer in ("SN ours", "SN exported") if args.eval else ("SN ours",):
            ours = [next(r for r in rows if r["layer"] == layer) for _, rows in results]
            for key, what in (("ratio", "median"), ("best_ratio", "best")):
                ratios = [r[key] for r in ours]
                listed = ", ".join(f"{r:.2f}" for r in ratios)
                print(
                    f"{layer} / GroupNorm(32), {timed}, {what}: {listed}; "
                    f"worst {max(ratios):.2f} (target <= {target})"
                )
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
