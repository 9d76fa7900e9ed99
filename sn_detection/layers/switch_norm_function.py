"""The autograd core of Switchable Normalization: one autograd node per layer, with as many
passes over the input as GroupNorm: forward computes the per-(n, c) moments (one pass), the
(N, C)-sized mixer (``mixer.py``; in training with the BN branch's batch statistics combined over
processes by a ``BatchReduction``) and ``y = x * scale + shift`` (one pass); backward makes one
reduction pass over (dy, x) and one elementwise pass. Only x and (N, C)-sized tensors are kept
for backward; double backward is refused with an error.

``kernels.select_kernels`` chooses the code of the full-size passes in eager mode. Under a tracer,
exporter or compiler, or for tensor subclasses, the same formulas run as plain PyTorch operations
(``portable.switch_norm_inference`` when the BN branch uses the running statistics under
``torch.jit.trace``/``torch.export``); SyncSN synchronizing a training batch cannot be traced or
exported (an error) and runs eagerly under ``torch.compile``. The pass plan: docs/DESIGN.md.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .kernel_contract import PLAIN_KERNELS, SNKernels
from .kernels import select_kernels
from .mixer import (
    MixerSaved,
    batch_summary,
    compiled_batch_statistics_backward,
    compiled_batch_summary,
    compiled_mix_backward,
    compiled_mix_forward,
    mix_forward,
    split_summary,
)
from .portable import switch_norm_inference


class BatchReduction:
    """How the BN branch combines the samples of several processes: this base class is one
    process (both steps are the identity); SyncSN's subclass sums over a process group.

    ``combine(summary)`` turns this process's ``mixer.batch_summary`` into the summary of every
    process's samples; ``sum_gradients(grads)`` sums the gradients of the BN statistics over
    processes. ``traceable``: whether the steps are plain tensor operations that tracers see.
    """

    traceable = True

    def combine(self, summary: Tensor) -> Tensor:
        return summary

    def sum_gradients(self, grads: Tensor) -> Tensor:
        return grads


LOCAL_BATCH = BatchReduction()

# Where the BN branch takes its statistics from (``switch_norm``'s ``bn``): None (no BN branch),
# the running statistics (mean, var), or the batch, combined over processes by a BatchReduction
BatchNormSource = Union[None, Tuple[Tensor, Tensor], BatchReduction]


class _Forward:
    """The forward computation; keeps what backward needs as attributes."""

    def __init__(self, x, weight, bias, p, q, eps, bn, kernels):
        mean_in, var_in = kernels.moments(x)
        mean_bn = var_bn = count = None
        self.reduction = bn if isinstance(bn, BatchReduction) else None
        if self.reduction is not None:
            summary = self.reduction.combine(compiled_batch_summary(mean_in, var_in))
            mean_bn, var_bn, count = split_summary(summary)
        elif bn is not None:
            mean_bn, var_bn = bn  # running statistics
        scale, shift, self.saved = compiled_mix_forward(
            mean_in, var_in, weight, bias, p, q, mean_bn, var_bn, eps
        )
        self.count = count
        self.batch_stats = None if count is None else (mean_bn, var_bn, count)
        self.y = kernels.apply(x, scale, shift)


def _refuse_double_backward(ctx, *grads):
    raise RuntimeError(
        "SwitchNorm2d does not support double backward (a gradient of its gradient, e.g. "
        "torch.autograd.grad(..., create_graph=True) followed by another backward). Use a "
        "different norm for second-order methods."
    )


class _RefuseDoubleBackward(torch.autograd.Function):
    """A copy of a gradient SN computed, whose own backward raises a clear error. The anchors
    (tensors of the first backward that may require grad) make the copy part of the graph."""

    @staticmethod
    def forward(ctx, t, *anchors):
        return t.clone()

    backward = staticmethod(_refuse_double_backward)


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift, where (scale, shift) = mix_forward(moments(x), params, weights)."""

    @staticmethod
    def forward(ctx, x, weight, bias, p, q, eps, bn, kernels, stats_out):
        fwd = _Forward(x, weight, bias, p, q, eps, bn, kernels)
        stats_out.append(fwd.batch_stats)
        ctx.save_for_backward(x, *fwd.saved)
        ctx.kernels, ctx.reduction, ctx.count = kernels, fwd.reduction, fwd.count
        ctx.param_dtypes = (weight.dtype, bias.dtype, p.dtype, q.dtype)
        return fwd.y

    @staticmethod
    def backward(ctx, dy):
        x, *saved = ctx.saved_tensors
        saved = MixerSaved(*saved)
        kernels = ctx.kernels
        with torch.no_grad():
            if x.is_contiguous() and not dy.is_contiguous():
                dy = dy.contiguous()  # kernels chosen for a contiguous x may assume it of dy
            sum_dy_x, sum_dy = kernels.backward_reduce(dy, x)
            grads = compiled_mix_backward(sum_dy_x, sum_dy, saved)
            grad_mean, grad_var, *param_grads, grad_mean_bn, grad_var_bn = grads
            param_grads = [g.to(dtype) for g, dtype in zip(param_grads, ctx.param_dtypes)]
            mean_in = saved.m
            if ctx.reduction is not None:
                # the gradients of every process's loss with respect to the BN statistics
                grads_bn = ctx.reduction.sum_gradients(torch.cat([grad_mean_bn, grad_var_bn]))
                more_mean, more_var = compiled_batch_statistics_backward(
                    grads_bn, mean_in, saved.mean_bn, ctx.count
                )
                grad_mean, grad_var = grad_mean + more_mean, grad_var + more_var

            dx = None
            if ctx.needs_input_grad[0]:
                hw = x.shape[2] * x.shape[3]
                # d var / d x = 2 (x - mean) / (hw - 1);  d mean / d x = 1 / hw
                c1 = grad_var * (2.0 / (hw - 1)) if hw > 1 else torch.zeros_like(mean_in)
                c0 = grad_mean / hw - c1 * mean_in
                scale = saved.weight.to(mean_in.dtype) * saved.rstd
                dx = kernels.backward_apply(dy, x, scale, c1, c0)
        if torch.is_grad_enabled():  # create_graph=True: refuse a second backward, not ignore it
            anchors = (dy, x, saved.weight)
            dx = None if dx is None else _RefuseDoubleBackward.apply(dx, *anchors)
            param_grads = [_RefuseDoubleBackward.apply(g, *anchors) for g in param_grads]
        needed = ctx.needs_input_grad[1:5]
        param_grads = [g if need else None for g, need in zip(param_grads, needed)]
        return (dx, *param_grads, None, None, None, None)


def _exporting() -> bool:
    """Whether a graph is being recorded for export: torch.jit.trace or torch.export."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.jit.is_tracing() or bool(is_exporting and is_exporting())


def _opaque_kernels_unusable(x: Tensor) -> bool:
    """Whether x is being traced, exported or compiled, or is a tensor that opaque kernels cannot
    serve (a subclass: fake and functional tensors; a functorch wrapper: vmap, grad)."""
    if _exporting() or torch.compiler.is_compiling() or type(x) is not Tensor:
        return True
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def _switch_norm_plain_ops(x, weight, bias, p, q, eps, bn):
    """The same computation as plain PyTorch operations differentiated by autograd (the path for
    tracers and compilers; ``bn`` is not a process-group reduction)."""
    mean_in, var_in = PLAIN_KERNELS.moments(x)
    mean_bn = var_bn = None
    batch_stats = None
    if isinstance(bn, BatchReduction):
        mean_bn, var_bn, count = split_summary(bn.combine(batch_summary(mean_in, var_in)))
        batch_stats = (mean_bn.detach(), var_bn.detach(), count.detach())
    elif bn is not None:
        mean_bn, var_bn = bn
    scale, shift, _ = mix_forward(mean_in, var_in, weight, bias, p, q, mean_bn, var_bn, eps)
    return PLAIN_KERNELS.apply(x, scale, shift), batch_stats


def switch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    p: Tensor,
    q: Tensor,
    *,
    eps: float,
    bn: BatchNormSource,
    kernels: Optional[SNKernels] = None,
) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor, Tensor]]]:
    """Apply SN to a 4-D ``x`` with H*W > 0 (the modules handle inputs with no element), with
    ``p``/``q`` the mix weights of the means and variances (the layer's ``mix_weights()``: softmax
    of the logits for SN); their gradients flow back through whatever computed them.

        ``bn`` says where the BN branch takes its statistics from: None (no BN branch), a tuple
        (mean, var) (the running statistics), or a ``BatchReduction`` (the batch: ``LOCAL_BATCH``
        for this process's samples; SyncSN's reduction combines every process's). ``kernels``
        overrides the choice of ``kernels.select_kernels``.

        Returns the output (x's dtype) and the batch's BN statistics (mean, variance, sample count,
        detached) for the running-statistics update, or None when the BN branch did not use the
        batch. Autocast is disabled inside: statistics are float32 (float64 for float64 inputs).
    """
    with torch.autocast(x.device.type, enabled=False):
        if _opaque_kernels_unusable(x):
            if not isinstance(bn, BatchReduction) and _exporting():
                running_mean, running_var = (None, None) if bn is None else bn
                y = switch_norm_inference(x, weight, bias, p, q, running_mean, running_var, eps)
                return y, None
            if not isinstance(bn, BatchReduction) or bn.traceable:
                return _switch_norm_plain_ops(x, weight, bias, p, q, eps, bn)
            if _exporting():
                raise RuntimeError(
                    "SyncSwitchNorm2d cannot be traced or exported while it synchronizes a "
                    "training batch across processes: put the model in eval mode first (export "
                    "with tools/deploy/export_model.py, which does), or trace it in one process"
                )
        if kernels is None:
            kernels = select_kernels(x)
        needs_graph = torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, weight, bias, p, q)
        )
        if not needs_graph:
            # inference: no graph to build, same arithmetic
            fwd = _Forward(x, weight, bias, p, q, eps, bn, kernels)
            return fwd.y, fwd.batch_stats
        stats_out: list = []
        y = _SwitchNormFunction.apply(x, weight, bias, p, q, eps, bn, kernels, stats_out)
        return y, stats_out[0]
