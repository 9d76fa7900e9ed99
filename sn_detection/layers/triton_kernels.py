"""Triton kernels for the four full-size passes of SN on CUDA (``SNKernels`` "cuda-triton").

``kernels.py`` registers them for "cuda" (``default_kernels``) when triton imports and a GPU is
present. Inputs: contiguous (N, C, H, W) float32/bfloat16/float16 (statistics and arithmetic in
float32, outputs in x's dtype) or float64; ``supports`` says False for anything else, and the plain
kernels take over. Reductions are deterministic (no atomics); ``moments`` sums deviations from each
plane's first element, so a mean far above the spread does not cancel.

Caveats: the launch sizes are chosen from the passes being memory-bound and the H100's 132 SMs, not
tuned by measurement; the first call per dtype and tile shape compiles a kernel (about a second,
cached on disk). Tests run the kernels on CPU tensors under the Triton interpreter
(``TRITON_INTERPRET=1``, see ``make_triton_kernels``). Tiling, chunking and the variance formula:
docs/DESIGN.md.
"""

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .kernel_contract import SNKernels, stats_dtype

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: without it nothing is registered
    triton = None


def _interpreted() -> bool:
    """Whether ``@triton.jit`` (run at this module's import) built interpreter kernels."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_MIN_BLOCK = 16  # narrowest tile row: (ROWS, 1)-shaped tiles gain nothing and are rarely exercised


@dataclass(frozen=True)
class LaunchConfig:
    """Launch sizes of the kernels. Tests shrink them so small tensors take the multi-plane and
    multi-chunk paths; tile sizes are elements and must be powers of two."""

    # elements per reduction tile: 16 per thread at 4 warps, two float32 accumulators each, so
    # many programs fit on an SM and keep enough loads in flight for a memory-bound pass
    reduce_tile: int = 2048
    # elements per elementwise tile: 16 per thread at 8 warps; larger tiles only add tail waste
    apply_tile: int = 4096
    # programs a reduction aims for before splitting planes: ~16 per SM of a 132-SM H100
    target_programs: int = 2048
    # elements a reduction program sums at least (4 tiles): shorter chunks would make the partial
    # sums and the extra launch that adds them matter next to the data
    min_chunk: int = 8192
    # elements per tile of the kernel that adds the chunks' partial sums
    combine_tile: int = 1024
    # programs on the second grid axis (chunks, column blocks) at most: CUDA's limit
    max_grid_y: int = 65535
    reduce_warps: int = 4
    apply_warps: int = 8


DEFAULT_CONFIG = LaunchConfig()


class ReducePlan(NamedTuple):
    """How a reduction is launched: tiles of (rows, block), each plane in n_chunks chunks."""

    rows: int
    block: int
    chunk: int
    n_chunks: int


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _vec(hw: int) -> int:
    """The largest power of two (at most 16) that divides hw. Triton specializes on hw % 16 == 0
    only; this lets rows of e.g. 14*14 = 4*49 elements be read with 16-byte loads too."""
    return min(hw & -hw, 16)


def _tile(planes: int, hw: int, tile: int) -> Tuple[int, int]:
    """(rows, block) of a tile of about ``tile`` elements for planes of ``hw`` elements."""
    block = min(max(_pow2(hw), _MIN_BLOCK), tile)
    rows = max(1, min(tile // block, _pow2(planes)))
    return rows, block


def reduction_plan(planes: int, hw: int, config: LaunchConfig = DEFAULT_CONFIG) -> ReducePlan:
    """The tiles and chunks of a reduction over ``planes`` planes of ``hw`` elements."""
    rows, block = _tile(planes, hw, config.reduce_tile)
    row_programs = math.ceil(planes / rows)
    n_chunks = min(
        math.ceil(config.target_programs / row_programs),
        math.ceil(hw / max(config.min_chunk, block)),
        config.max_grid_y,
    )
    n_chunks = max(n_chunks, 1)
    chunk = math.ceil(math.ceil(hw / n_chunks) / block) * block  # whole tiles per chunk
    return ReducePlan(rows, block, chunk, math.ceil(hw / chunk))


if triton is not None:

    @triton.jit
    def _finish_moments(pivot, sum_d, sum_d2, n, dof):
        """Mean and unbiased variance from sums of d = x - pivot over n elements (dof = n - 1,
        or 1 for n = 1, where both sums are 0)."""
        mean = pivot + sum_d / n
        var = tl.maximum(sum_d2 - sum_d * (sum_d / n), 0.0) / dof
        return mean, var

    @triton.jit
    def _plane_sums_kernel(
        a_ptr,
        b_ptr,
        out1_ptr,
        out2_ptr,
        planes,
        hw,
        chunk,
        dof,
        MOMENTS: tl.constexpr,
        FINISH: tl.constexpr,
        VEC: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Sums over chunk ``program_id(1)`` of ROWS planes.

        MOMENTS: a = x, sums of d = x - pivot and d * d (pivot: the plane's first element);
        otherwise a = dy, b = x, sums of dy * x and dy. FINISH (moments in one chunk) writes mean
        and variance to out1/out2 (planes,); else the sums go to out1/out2 (planes, chunks).
        """
        acc_t = out1_ptr.dtype.element_ty
        hw = (hw // VEC) * VEC  # the same hw, known to be a multiple of VEC: vector loads
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < planes
        offset = rows.to(tl.int64) * hw
        a_rows = a_ptr + offset
        b_rows = b_ptr + offset
        if MOMENTS:
            pivot = tl.load(a_rows, mask=row_ok, other=0).to(acc_t)
        start = tl.program_id(1) * chunk
        end = tl.minimum(start + chunk, hw)
        s1 = tl.zeros((ROWS, BLOCK), acc_t)
        s2 = tl.zeros((ROWS, BLOCK), acc_t)
        for k in range(start, end, BLOCK):
            cols = k + tl.arange(0, BLOCK)
            mask = row_ok[:, None] & (cols < end)[None, :]
            a = tl.load(a_rows[:, None] + cols[None, :], mask=mask, other=0).to(acc_t)
            if MOMENTS:
                d = tl.where(mask, a - pivot[:, None], 0.0)
                s1 += d
                s2 += d * d
            else:
                b = tl.load(b_rows[:, None] + cols[None, :], mask=mask, other=0).to(acc_t)
                s1 += a * b
                s2 += a
        t1 = tl.sum(s1, axis=1)
        t2 = tl.sum(s2, axis=1)
        if FINISH:
            mean, var = _finish_moments(pivot, t1, t2, hw, dof)
            tl.store(out1_ptr + rows, mean, mask=row_ok)
            tl.store(out2_ptr + rows, var, mask=row_ok)
        else:
            idx = rows * tl.num_programs(1) + tl.program_id(1)
            tl.store(out1_ptr + idx, t1, mask=row_ok)
            tl.store(out2_ptr + idx, t2, mask=row_ok)

    @triton.jit
    def _combine_kernel(
        p1_ptr,
        p2_ptr,
        x_ptr,
        out1_ptr,
        out2_ptr,
        planes,
        n_chunks,
        hw,
        dof,
        MOMENTS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Adds the (planes, n_chunks) partial sums per plane; MOMENTS turns them into mean and
        variance (the pivot is reloaded from x)."""
        acc_t = out1_ptr.dtype.element_ty
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < planes
        s1 = tl.zeros((ROWS, BLOCK), acc_t)
        s2 = tl.zeros((ROWS, BLOCK), acc_t)
        for k in range(0, n_chunks, BLOCK):
            cols = k + tl.arange(0, BLOCK)
            mask = row_ok[:, None] & (cols < n_chunks)[None, :]
            idx = rows[:, None] * n_chunks + cols[None, :]
            s1 += tl.load(p1_ptr + idx, mask=mask, other=0)
            s2 += tl.load(p2_ptr + idx, mask=mask, other=0)
        t1 = tl.sum(s1, axis=1)
        t2 = tl.sum(s2, axis=1)
        if MOMENTS:
            pivot = tl.load(x_ptr + rows.to(tl.int64) * hw, mask=row_ok, other=0).to(acc_t)
            t1, t2 = _finish_moments(pivot, t1, t2, hw, dof)
        tl.store(out1_ptr + rows, t1, mask=row_ok)
        tl.store(out2_ptr + rows, t2, mask=row_ok)

    @triton.jit
    def _affine_kernel(
        x_ptr,
        dy_ptr,
        out_ptr,
        a_ptr,
        b_ptr,
        c_ptr,
        planes,
        hw,
        BACKWARD: tl.constexpr,
        VEC: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """out = x * a + b (forward) or dy * a + x * b + c (BACKWARD), with per-plane a, b, c,
        computed in their dtype and stored in out's."""
        coef_t = a_ptr.dtype.element_ty
        hw = (hw // VEC) * VEC  # the same hw, known to be a multiple of VEC: vector loads
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_ok = rows < planes
        a = tl.load(a_ptr + rows, mask=row_ok, other=0)[:, None]
        b = tl.load(b_ptr + rows, mask=row_ok, other=0)[:, None]
        if BACKWARD:
            c = tl.load(c_ptr + rows, mask=row_ok, other=0)[:, None]
        offset = (rows.to(tl.int64) * hw)[:, None]
        for k in range(tl.program_id(1) * BLOCK, hw, tl.num_programs(1) * BLOCK):
            cols = (k + tl.arange(0, BLOCK))[None, :]
            mask = row_ok[:, None] & (cols < hw)
            x = tl.load(x_ptr + offset + cols, mask=mask, other=0).to(coef_t)
            if BACKWARD:
                dy = tl.load(dy_ptr + offset + cols, mask=mask, other=0).to(coef_t)
                y = dy * a + x * b + c
            else:
                y = x * a + b
            tl.store(out_ptr + offset + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _device_guard(x: Tensor):
    """Triton launches on the current CUDA device: make it x's."""
    return torch.cuda.device(x.device) if x.is_cuda else nullcontext()


def _check_like(t: Tensor, x: Tensor, name: str) -> Tensor:
    """``t`` (dy) as the kernels read it: contiguous, a float dtype (cast on load), x's device."""
    if t.shape != x.shape or t.device != x.device:
        raise ValueError(
            f"{name} must have x's shape {tuple(x.shape)} and device {x.device}, "
            f"got {tuple(t.shape)} on {t.device}"
        )
    if t.dtype not in _DTYPES:
        t = t.to(x.dtype)
    return t.contiguous()


def _coefficient(p: Tensor, x: Tensor) -> Tensor:
    """An (N, C) per-plane coefficient as a contiguous tensor of the statistics dtype."""
    return p.to(stats_dtype(x.dtype)).expand(x.shape[:2]).contiguous()


def _reduce(a: Tensor, b: Tensor, moments: bool, config: LaunchConfig) -> Tuple[Tensor, Tensor]:
    """Per-plane (mean, var) of a = b = x, or (sum(a * b), sum(a)) of a = dy, b = x."""
    n, c, h, w = a.shape
    planes, hw = n * c, h * w
    dtype = stats_dtype(b.dtype)
    out1 = torch.empty((n, c), dtype=dtype, device=a.device)
    out2 = torch.empty((n, c), dtype=dtype, device=a.device)
    if planes == 0:
        return out1, out2
    if hw == 0:  # as torch.var_mean: NaN moments; sums of nothing are 0
        fill = math.nan if moments else 0.0
        return out1.fill_(fill), out2.fill_(fill)
    plan = reduction_plan(planes, hw, config)
    dof = max(hw - 1, 1)  # H*W = 1: both sums are 0, and so is the variance
    sizes = (planes, hw, plan.chunk, dof)
    meta = dict(MOMENTS=moments, VEC=_vec(hw), ROWS=plan.rows, BLOCK=plan.block)
    meta.update(num_warps=config.reduce_warps)
    grid = (math.ceil(planes / plan.rows), plan.n_chunks)
    with _device_guard(a):
        if plan.n_chunks == 1:
            _plane_sums_kernel[grid](a, b, out1, out2, *sizes, FINISH=moments, **meta)
            return out1, out2
        partials = torch.empty((2, planes, plan.n_chunks), dtype=dtype, device=a.device)
        _plane_sums_kernel[grid](a, b, partials[0], partials[1], *sizes, FINISH=False, **meta)
        # planes * n_chunks is at most ~target_programs here: a tiny launch
        rows, block = _tile(planes, plan.n_chunks, config.combine_tile)
        _combine_kernel[(math.ceil(planes / rows),)](
            *partials,
            a,
            out1,
            out2,
            planes,
            plan.n_chunks,
            hw,
            dof,
            MOMENTS=moments,
            ROWS=rows,
            BLOCK=block,
            num_warps=4,
        )
    return out1, out2


def _affine(
    x: Tensor, dy: Optional[Tensor], coefficients: Tuple[Tensor, ...], config: LaunchConfig
) -> Tensor:
    """x * a + b with (a, b) = coefficients, or dy * a + x * b + c with three of them."""
    n, c, h, w = x.shape
    planes, hw = n * c, h * w
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    coef = [_coefficient(p, x) for p in coefficients]
    coef += coef[-1:] * (3 - len(coef))  # forward has no third coefficient: its pointer is unused
    rows, block = _tile(planes, hw, config.apply_tile)
    grid = (math.ceil(planes / rows), min(math.ceil(hw / block), config.max_grid_y))
    with _device_guard(x):
        _affine_kernel[grid](
            x,
            x if dy is None else dy,
            out,
            *coef,
            planes,
            hw,
            BACKWARD=dy is not None,
            VEC=_vec(hw),
            ROWS=rows,
            BLOCK=block,
            num_warps=config.apply_warps,
        )
    return out


def make_triton_kernels(
    device_types: Iterable[str] = ("cuda",), config: LaunchConfig = DEFAULT_CONFIG
) -> SNKernels:
    """The Triton ``SNKernels`` for tensors on ``device_types``, launched as ``config`` says.

    The result is not registered (``kernels.py`` registers ``default_kernels()`` for "cuda").
    Tests get kernels for CPU tensors with
    ``make_triton_kernels(("cpu",), small_config)`` in a process started with
    ``TRITON_INTERPRET=1`` (read when this module is imported): device types other than "cuda"
    need the interpreter.
    """
    if triton is None:
        raise RuntimeError("the Triton SN kernels need triton, which is not installed")
    device_types = tuple(device_types)
    if not _interpreted() and set(device_types) - {"cuda"}:
        raise RuntimeError(
            f"Triton kernels for {device_types} need TRITON_INTERPRET=1 set before "
            f"{__name__} is imported"
        )

    def supports(x: Tensor) -> bool:
        return (
            x.device.type in device_types
            and x.dtype in _DTYPES
            and x.dim() == 4
            and x.is_contiguous()
        )

    def moments(x: Tensor) -> Tuple[Tensor, Tensor]:
        return _reduce(x, x, True, config)

    def apply(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        return _affine(x, None, (scale, shift), config)

    def backward_reduce(dy: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
        return _reduce(_check_like(dy, x, "dy"), x, False, config)

    def backward_apply(dy: Tensor, x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return _affine(x, _check_like(dy, x, "dy"), (a, b, c), config)

    return SNKernels(
        name="cuda-triton" if device_types == ("cuda",) else f"triton-{'-'.join(device_types)}",
        moments=moments,
        apply=apply,
        backward_reduce=backward_reduce,
        backward_apply=backward_apply,
        supports=supports,
    )


_DEFAULT: list = []


def default_kernels() -> Optional[SNKernels]:
    """The Triton kernels for "cuda" with the default launch sizes when triton imports (compiled,
    not interpreted) and a GPU is present, else None; made once. ``kernels.py`` registers them."""
    if not _DEFAULT:
        # interpreted kernels would be correct on GPU tensors but far slower than the plain ones
        usable = triton is not None and not _interpreted() and torch.cuda.is_available()
        _DEFAULT.append(make_triton_kernels(("cuda",)) if usable else None)
    return _DEFAULT[0]
