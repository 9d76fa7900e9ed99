"""The computational core of Switchable Normalization.

SN needs no more passes over the input than GroupNorm does. Everything beyond the per-(n, c)
moments is arithmetic on (N, C)-sized tensors:

forward
    1. one pass over x: per-(n, c) mean and unbiased variance (``kernels.moments``);
    2. (N, C)-sized "mixer": IN/LN/BN statistics, their softmax-weighted mixture and the affine
       parameters, folded into a per-(n, c) ``scale`` and ``shift``;
    3. one pass: ``y = x * scale + shift`` (``kernels.apply``).
backward
    1. one reduction pass over (dy, x): ``sum(dy * x)`` and ``sum(dy)`` per (n, c)
       (``kernels.backward_reduce``); these are the gradients of ``scale`` and ``shift`` up to
       the (N, C)-sized chain rule, which autograd runs on the small mixer graph;
    2. one elementwise pass: ``dx = dy * scale + x * c1 + c0`` (``kernels.backward_apply``), where
       c1, c0 carry the gradients of the per-(n, c) mean and variance.

Only x and (N, C)-sized tensors are kept for backward. The mixer is ordinary differentiable
PyTorch code run under autograd, so the synchronized variant can put a differentiable all-reduce
into it and get the backward all-reduce for free. Double backward is not supported.

The full-size passes are ``SNKernels`` objects: ``PLAIN_KERNELS`` (PyTorch ops, any device and
dtype) always works; faster kernels can be registered for a device with ``register_kernels``.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

# (mean_in, var_in, weight, bias, mean_logits, var_logits) -> (scale, shift, batch_stats)
Mixer = Callable[..., Tuple[Tensor, Tensor, Optional[Tuple[Tensor, ...]]]]


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


def select_kernels(x: Tensor, use_fast: bool = True) -> SNKernels:
    """The kernels used for ``x``: the first registered fast one that supports it, else plain."""
    if use_fast:
        for kernels in _FAST_KERNELS.get(x.device.type, ()):
            if kernels.supports(x):
                return kernels
    return PLAIN_KERNELS


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift, where (scale, shift) = mixer(moments(x), params)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean_logits, var_logits, mixer, kernels, stats_out):
        mean_in, var_in = kernels.moments(x)
        params = (weight, bias, mean_logits, var_logits)
        with torch.enable_grad():
            # leaves of the small (N, C)-sized graph that backward differentiates
            leaves = [mean_in.requires_grad_(), var_in.requires_grad_()]
            for p, needs_grad in zip(params, ctx.needs_input_grad[1:5]):
                leaves.append(p.detach().requires_grad_(needs_grad))
            scale, shift, batch_stats = mixer(*leaves)
        stats_out.append(batch_stats)
        ctx.save_for_backward(x)
        ctx.graph = (scale, shift, leaves)
        ctx.kernels = kernels
        return kernels.apply(x, scale.detach(), shift.detach())

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        scale, shift, leaves = ctx.graph
        kernels = ctx.kernels
        if x.is_contiguous() and not dy.is_contiguous():
            dy = dy.contiguous()  # kernels chosen for a contiguous x may assume the same of dy
        sum_dy_x, sum_dy = kernels.backward_reduce(dy, x)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        with torch.enable_grad():
            grads = torch.autograd.grad(
                (scale, shift), wanted, (sum_dy_x, sum_dy), allow_unused=True,
                retain_graph=True,  # the small graph lives as long as ctx: backward may run again
            )
        grads = iter(grads)
        grads = [next(grads) if leaf.requires_grad else None for leaf in leaves]
        grad_mean, grad_var = grads[0], grads[1]

        dx = None
        if ctx.needs_input_grad[0]:
            hw = x.shape[2] * x.shape[3]
            mean_in = leaves[0].detach()
            zeros = torch.zeros_like(mean_in)
            grad_mean = zeros if grad_mean is None else grad_mean
            grad_var = zeros if grad_var is None else grad_var
            # d var / d x = 2 (x - mean) / (hw - 1);  d mean / d x = 1 / hw
            c1 = grad_var * (2.0 / max(hw - 1, 1)) if hw > 1 else zeros
            c0 = grad_mean / hw - c1 * mean_in
            dx = kernels.backward_apply(dy, x, scale.detach(), c1, c0)
        return (dx, *grads[2:], None, None, None)


def switch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    mixer: Mixer,
    use_fast_kernels: bool = True,
) -> Tuple[Tensor, Optional[Tuple[Tensor, ...]]]:
    """Apply SN to a 4-D ``x`` with the statistics mixture computed by ``mixer``.

    Returns the output (x's dtype) and whatever (detached) batch statistics ``mixer`` returned,
    for the caller's running-statistics update. Autocast is disabled inside: statistics are
    float32 (float64 for float64 inputs).
    """
    kernels = select_kernels(x, use_fast_kernels)
    with torch.autocast(x.device.type, enabled=False):
        needs_graph = torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, weight, bias, mean_logits, var_logits)
        )
        if not needs_graph:
            # inference: no graph to build, same arithmetic
            mean_in, var_in = kernels.moments(x)
            scale, shift, batch_stats = mixer(mean_in, var_in, weight, bias, mean_logits, var_logits)
            return kernels.apply(x, scale, shift), batch_stats
        stats_out: list = []
        y = _SwitchNormFunction.apply(
            x, weight, bias, mean_logits, var_logits, mixer, kernels, stats_out
        )
        batch_stats = stats_out[0]
        if batch_stats is not None:
            batch_stats = tuple(s.detach() for s in batch_stats)
        return y, batch_stats
