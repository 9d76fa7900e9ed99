"""The computational core of Switchable Normalization.

SN needs no more passes over the input than GroupNorm does. Everything beyond the per-(n, c)
moments is arithmetic on (N, C)-sized tensors:

forward
    1. one pass over x: per-(n, c) mean and unbiased variance (``kernels.moments``);
    2. the (N, C)-sized mixer (``mixer.mix_forward``): IN/LN/BN statistics, their
       softmax-weighted mixture and the affine parameters, folded into a per-(n, c) ``scale`` and
       ``shift``; SyncSN all-reduces the BN branch's sums here;
    3. one pass: ``y = x * scale + shift`` (``kernels.apply``).
backward
    1. one reduction pass over (dy, x): ``sum(dy * x)`` and ``sum(dy)`` per (n, c)
       (``kernels.backward_reduce``), the gradients of ``scale`` and ``shift``;
    2. the mixer's hand-derived backward (``mixer.mix_backward``), giving the gradients of the
       parameters and of the per-(n, c) mean and variance; SyncSN all-reduces the gradients of the
       BN branch's sums here;
    3. one elementwise pass: ``dx = dy * scale + x * c1 + c0`` (``kernels.backward_apply``), where
       c1, c0 carry the gradients of the per-(n, c) mean and variance.

Only x and (N, C)-sized tensors are kept for backward; the whole layer is one autograd node.
Double backward is not supported.

The full-size passes are ``SNKernels`` objects: ``PLAIN_KERNELS`` (PyTorch ops, any device and
dtype) always works; faster kernels can be registered for a device with ``register_kernels``.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .mixer import (
    MixerSaved,
    batch_statistics,
    batch_statistics_backward,
    compiled_mix_backward,
    compiled_mix_forward,
)

# Where the BN branch takes its statistics from (``switch_norm``'s ``bn``)
LOCAL_BATCH = "local batch"
AllReduceSum = Callable[[Tensor], Tensor]
BatchNormSource = Union[None, str, Tuple[Tensor, Tensor], AllReduceSum]


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are computed in float32 for half/bfloat16 inputs and in float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class SNKernels:
    """The four full-size passes of SN. Each takes and returns tensors as documented below.

    moments(x) -> (mean, var): per-(n, c) mean and unbiased variance of an (N, C, H, W) tensor,
        (N, C) in ``stats_dtype(x.dtype)``; the variance of a single element (H*W = 1) is 0.
    apply(x, scale, shift) -> y: ``x * scale + shift`` with (N, C) scale/shift, y in x's dtype.
    backward_reduce(dy, x) -> (sum(dy * x), sum(dy)) over H, W, each (N, C).
    backward_apply(dy, x, a, b, c) -> ``dy * a + x * b + c`` with (N, C) a, b, c, in x's dtype.
    supports(x) -> whether these kernels handle this tensor (device, dtype, layout).
    """

    name: str
    moments: Callable[[Tensor], Tuple[Tensor, Tensor]]
    apply: Callable[[Tensor, Tensor, Tensor], Tensor]
    backward_reduce: Callable[[Tensor, Tensor], Tuple[Tensor, Tensor]]
    backward_apply: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
    supports: Callable[[Tensor], bool]


def _plane(t: Tensor) -> Tensor:
    """(N, C) -> (N, C, 1, 1) for broadcasting over H, W."""
    return t[:, :, None, None]


def _plain_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    xs = x.to(stats_dtype(x.dtype)).flatten(2)
    if xs.shape[2] == 1:
        # unbiased variance of one element is undefined (NaN in the official code): use 0
        return xs[:, :, 0].clone(), xs.new_zeros(xs.shape[:2])
    var, mean = torch.var_mean(xs, dim=2, correction=1)
    return mean, var


def _plain_apply(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    if x.dtype == scale.dtype:
        return torch.addcmul(_plane(shift), x, _plane(scale))
    return torch.addcmul(_plane(shift), x.to(scale.dtype), _plane(scale)).to(x.dtype)


def _plain_backward_reduce(dy: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
    dtype = stats_dtype(x.dtype)
    dy, x = dy.to(dtype), x.to(dtype)
    return torch.einsum("nchw,nchw->nc", dy, x), dy.sum(dim=(2, 3))


def _plain_backward_apply(dy: Tensor, x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    dtype = a.dtype
    dx = torch.addcmul(_plane(c), x.to(dtype), _plane(b))
    dx.addcmul_(dy.to(dtype), _plane(a))
    return dx.to(x.dtype)


PLAIN_KERNELS = SNKernels(
    name="plain",
    moments=_plain_moments,
    apply=_plain_apply,
    backward_reduce=_plain_backward_reduce,
    backward_apply=_plain_backward_apply,
    supports=lambda x: True,
)

# device type -> kernels tried before the plain ones (when their ``supports`` says yes)
_FAST_KERNELS: Dict[str, List[SNKernels]] = {}


def register_kernels(device_type: str, kernels: SNKernels) -> None:
    """Make ``kernels`` the first choice for inputs on ``device_type`` that they support."""
    _FAST_KERNELS.setdefault(device_type, []).insert(0, kernels)


def unregister_kernels(device_type: str, kernels: SNKernels) -> None:
    """Undo ``register_kernels(device_type, kernels)``."""
    _FAST_KERNELS[device_type].remove(kernels)


def select_kernels(x: Tensor, use_fast: bool = True) -> SNKernels:
    """The kernels used for ``x``: the first registered fast one that supports it, else plain."""
    if use_fast:
        for kernels in _FAST_KERNELS.get(x.device.type, ()):
            if kernels.supports(x):
                return kernels
    return PLAIN_KERNELS


class _Forward:
    """The forward computation; keeps what backward needs as attributes."""

    def __init__(self, x, weight, bias, mean_logits, var_logits, eps, bn, kernels):
        self.all_reduce = None  # SyncSN's sum over processes
        mean_in, var_in = kernels.moments(x)
        local_bn = bn is LOCAL_BATCH
        mean_bn = var_bn = count = None
        if callable(bn):
            # synchronized: the BN statistics of every process's samples together
            self.all_reduce = bn
            c = mean_in.shape[1]
            sums = torch.cat(
                [
                    mean_in.sum(dim=0),
                    (var_in + mean_in * mean_in).sum(dim=0),
                    mean_in.new_full((1,), float(mean_in.shape[0])),
                ]
            )
            mean_bn, var_bn, count = batch_statistics(bn(sums), c)
        elif bn is not None and not local_bn:
            mean_bn, var_bn = bn  # running statistics
        self.local_bn, self.count = local_bn, count
        scale, shift, mean_bn, var_bn, self.saved = compiled_mix_forward(
            mean_in, var_in, weight, bias, mean_logits, var_logits, mean_bn, var_bn, eps, local_bn
        )
        self.batch_stats = None
        if local_bn:
            # new_full fills on the device; new_tensor would copy from the host and, on CUDA,
            # wait for the GPU to finish all queued work
            self.batch_stats = (mean_bn, var_bn, mean_in.new_full((), float(mean_in.shape[0])))
        elif count is not None:
            self.batch_stats = (mean_bn, var_bn, count)
        self.y = kernels.apply(x, scale, shift)


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift, where (scale, shift) = mix_forward(moments(x), params)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean_logits, var_logits, eps, bn, kernels, stats_out):
        fwd = _Forward(x, weight, bias, mean_logits, var_logits, eps, bn, kernels)
        stats_out.append(fwd.batch_stats)
        ctx.save_for_backward(x, *fwd.saved)
        ctx.kernels, ctx.local_bn, ctx.all_reduce = kernels, fwd.local_bn, fwd.all_reduce
        ctx.count = fwd.count
        ctx.param_dtypes = (weight.dtype, bias.dtype, mean_logits.dtype, var_logits.dtype)
        return fwd.y

    @staticmethod
    def backward(ctx, dy):
        x, *saved = ctx.saved_tensors
        saved = MixerSaved(*saved)
        kernels = ctx.kernels
        if x.is_contiguous() and not dy.is_contiguous():
            dy = dy.contiguous()  # kernels chosen for a contiguous x may assume the same of dy
        sum_dy_x, sum_dy = kernels.backward_reduce(dy, x)
        grads = compiled_mix_backward(sum_dy_x, sum_dy, saved, ctx.local_bn)
        grad_mean, grad_var, *param_grads, grad_mean_bn, grad_var_bn = grads
        param_grads = [g.to(dtype) for g, dtype in zip(param_grads, ctx.param_dtypes)]
        mean_in = saved.m
        if ctx.all_reduce is not None:
            # gradients of every process's loss with respect to the sums behind the BN statistics
            count = ctx.count.clamp(min=1)
            grad_sums = batch_statistics_backward(grad_mean_bn, grad_var_bn, saved.mean_bn, count)
            grad_sums = ctx.all_reduce(torch.cat(grad_sums))
            c = mean_in.shape[1]
            grad_sum_mean, grad_sum_second = grad_sums[:c], grad_sums[c:]
            grad_mean = grad_mean + grad_sum_mean + 2.0 * mean_in * grad_sum_second
            grad_var = grad_var + grad_sum_second

        dx = None
        if ctx.needs_input_grad[0]:
            hw = x.shape[2] * x.shape[3]
            # d var / d x = 2 (x - mean) / (hw - 1);  d mean / d x = 1 / hw
            c1 = grad_var * (2.0 / (hw - 1)) if hw > 1 else torch.zeros_like(mean_in)
            c0 = grad_mean / hw - c1 * mean_in
            scale = saved.weight.to(mean_in.dtype) * saved.rstd
            dx = kernels.backward_apply(dy, x, scale, c1, c0)
        needed = ctx.needs_input_grad[1:5]
        param_grads = [g if need else None for g, need in zip(param_grads, needed)]
        return (dx, *param_grads, None, None, None, None)


def switch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    *,
    eps: float,
    bn: BatchNormSource,
    use_fast_kernels: bool = True,
    kernels: Optional[SNKernels] = None,
) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor, Tensor]]]:
    """Apply SN to a 4-D ``x``.

    ``bn`` says where the BN branch takes its statistics from: None (no BN branch),
    ``LOCAL_BATCH`` (this process's batch), a tuple (mean, var) (the running statistics), or a
    function that sums a 1-D tensor over all processes and returns the sum (SyncSN; it is
    called once in forward and once in backward). ``kernels`` overrides the kernel choice.

    Returns the output (x's dtype) and the batch's BN statistics (mean, variance, sample count,
    detached) for the running-statistics update, or None when the BN branch did not use the
    batch. Autocast is disabled inside: statistics are float32 (float64 for float64 inputs).
    """
    if kernels is None:
        kernels = select_kernels(x, use_fast_kernels)
    with torch.autocast(x.device.type, enabled=False):
        needs_graph = torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, weight, bias, mean_logits, var_logits)
        )
        if not needs_graph:
            # inference: no graph to build, same arithmetic
            fwd = _Forward(x, weight, bias, mean_logits, var_logits, eps, bn, kernels)
            return fwd.y, fwd.batch_stats
        stats_out: list = []
        y = _SwitchNormFunction.apply(
            x, weight, bias, mean_logits, var_logits, eps, bn, kernels, stats_out
        )
        return y, stats_out[0]
