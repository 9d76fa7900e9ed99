"""SN written as portable PyTorch: what tracers, exporters and TorchScript see of an SN layer.

Design (issue 13). SN's fast kernels (C++/OpenMP on CPU, Triton on CUDA, under a custom autograd
Function) stay an eager-mode implementation detail. Whenever SN runs under
``torch.jit.trace``, ``torch.jit.script``, ``torch.export`` (strict or not, and the ONNX exporters
built on them) or ``torch.compile``, it dispatches to plain PyTorch operators instead of
exposing its kernels as ``torch.library`` custom ops. Why:

- an exported artifact must run where sn_detection is not installed (a TorchScript file loaded
  by ``torch.jit.load`` in C++ or Python, an ONNX graph in onnxruntime, an ExportedProgram):
  custom ops are recorded by name and need our extension loaded wherever the file runs, and
  onnxruntime has no implementation of them;
- ``torch.compile`` fuses the plain formulas itself (inductor: the moments and the apply pass
  each become one loop, 0.96x-1.16x GroupNorm's time for forward plus backward, measured in
  SN_REFERENCE.md), so an opaque custom op would only block that fusion;
- one formula, here, serves every tool and is tested against the eager layer; a kernel that a
  tracer cannot see is never recorded (a trace of a C++ kernel records ``empty_like``: the
  silently wrong trace of issue 13). Under ``torch.jit.trace`` or ``torch.export``, a layer that
  cannot take this path (SyncSN synchronizing a training batch) raises instead.

What runs where (``switch_norm_function.switch_norm`` decides):

- eval mode and FrozenSwitchNorm2d (BN branch from the running statistics) under jit.trace,
  jit.script and torch.export: :func:`switch_norm_inference`, below. Two read-only reductions per
  plane (``mean`` and ``vector_norm``, the fast vectorized reductions of ATen; ``var_mean`` is a
  scalar Welford loop on CPU, 20-40x slower, measured) and ``x * scale + shift`` as a multiply and an in-place add. Statistics in float32 (float64 for float64).
  The variance is E[x^2] - E[x]^2 of the float32 sums: its relative error is about
  1e-7 * (mean / std)^2 per plane, 1e-5 at a mean 10 times the spread (what conv features
  have), 1e-3 at 100 times; the eager C++ kernels and ``torch.compile`` have no such limit.
- training mode under a tracer, and everything under ``torch.compile``: the plain kernels
  (``kernels.PLAIN_KERNELS``, ``var_mean``) and the mixer's formulas, which inductor fuses.

Every function here is TorchScript-scriptable (``SwitchNorm2d`` scripts through
``switch_norm_inference``) and takes no host value from a tensor (no ``.item()``): traced and
exported graphs keep dynamic spatial sizes and batch sizes.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def _plane_count(x: Tensor, dtype: torch.dtype) -> Tensor:
    """H * W of x as a 0-d tensor: traced as a size computation, not as a constant, so a traced
    model stays right for other image sizes."""
    if torch.jit.is_tracing():
        return torch._shape_as_tensor(x)[2:].prod().to(dtype)
    return torch.full((), x.shape[2] * x.shape[3], dtype=dtype, device=x.device)


def moments_inference(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(n, c) mean and unbiased variance of a 4-D x with H*W > 0, in float32 (float64 for
    float64 inputs), from two read-only reductions (module docstring for the precision). The
    variance of a single element is 0 and no variance is negative."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(dtype)
    hw = _plane_count(x, dtype)
    mean = xs.mean(dim=(2, 3))
    mean_square = torch.linalg.vector_norm(xs, 2.0, dim=(2, 3)).square() / hw
    var = (mean_square - mean.square()).clamp(min=0.0) * (hw / (hw - 1.0).clamp(min=1.0))
    return mean, var


def mix_scale_shift(
    m: Tensor,
    v: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    mean_bn: Optional[Tensor],
    var_bn: Optional[Tensor],
    eps: float,
) -> Tuple[Tensor, Tensor]:
    """``mixer.mix_forward``'s (scale, shift), the same formulas in scriptable form."""
    dtype = m.dtype
    mean_ln = m.mean(dim=1, keepdim=True)
    var_ln = (v + (m - mean_ln).square()).mean(dim=1, keepdim=True)
    p = torch.softmax(mean_logits.to(dtype), dim=0)
    q = torch.softmax(var_logits.to(dtype), dim=0)
    mu = p[0] * m + p[1] * mean_ln
    var = q[0] * v + q[1] * var_ln
    if mean_bn is not None and var_bn is not None:
        mu = mu + p[2] * mean_bn.to(dtype)
        var = var + q[2] * var_bn.to(dtype).clamp(min=0.0)
    scale = weight.to(dtype) * torch.rsqrt(var + eps)
    shift = bias.to(dtype) - mu * scale
    return scale, shift


def apply_inference(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with (N, C) scale and shift, in the statistics dtype, returned in x's
    dtype: a multiply, then an in-place add on its fresh result (two vectorized loops, no extra
    temporary; faster on CPU than ``addcmul`` with broadcast operands, and right for N = 0)."""
    y = x.to(scale.dtype) * scale[:, :, None, None]
    return y.add_(shift[:, :, None, None]).to(x.dtype)


def switch_norm_inference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    eps: float,
) -> Tensor:
    """SN of a 4-D x with H*W > 0 whose BN branch (if any: ``running_mean``/``running_var`` not
    None) uses the running statistics: eval mode and the frozen layer, in portable PyTorch."""
    mean, var = moments_inference(x)
    scale, shift = mix_scale_shift(
        mean, var, weight, bias, mean_logits, var_logits, running_mean, running_var, eps
    )
    return apply_inference(x, scale, shift)
