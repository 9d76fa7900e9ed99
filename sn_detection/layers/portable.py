"""SN as portable PyTorch, what tracers, exporters and TorchScript see of an SN layer whose BN
branch uses the running statistics (eval mode, the frozen layer): no custom ops, so an exported
file runs where sn_detection is not installed. Every function is scriptable and takes no host
value from a tensor, so traced graphs keep dynamic batch and spatial sizes. Per layer: two
read-only reductions (the moments), the (N, C) mixer, one pass for the output.

Caveat: the variance is E[x^2] - E[x]^2 of float32 sums (float64 for float64), with a relative
error of about 1e-7 * (mean / std)^2 per plane (1e-5 at a mean 10 times the spread, 1e-3 at 100
times); the eager kernels have no such limit. Why this path and not custom ops, and why not
``torch.var_mean`` (one pass, exact, but several times slower on CPU): docs/DESIGN.md.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .kernel_contract import stats_dtype
from .mixer import mix_forward


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
    dtype = stats_dtype(x.dtype)
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
    p: Tensor,
    q: Tensor,
    mean_bn: Optional[Tensor],
    var_bn: Optional[Tensor],
    eps: float,
) -> Tuple[Tensor, Tensor]:
    """``mixer.mix_forward``'s (scale, shift), without what its backward keeps."""
    scale, shift, _ = mix_forward(m, v, weight, bias, p, q, mean_bn, var_bn, eps)
    return scale, shift


@torch.jit.unused
def _onnx_exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


def apply_inference(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x * scale + shift`` with (N, C) scale and shift (or (1, C): the same for every sample),
    in the statistics dtype, returned in x's dtype: one pass, ``native_batch_norm`` in inference
    mode over the N * C planes as channels, with the scales and shifts as its affine parameters
    and statistics 0 and 1 (eps 0: it multiplies by exactly ``scale``), right for N = 0. The ONNX
    exporter has no symbolic for that op (and ``batch_norm``'s fails on empty inputs): there, a
    broadcast multiply and add."""
    dtype = scale.dtype
    xs = x.to(dtype)
    if not torch.jit.is_scripting() and _onnx_exporting():
        return (xs * scale[:, :, None, None] + shift[:, :, None, None]).to(x.dtype)
    n, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    planes = n * c
    scale = scale.expand(n, c).reshape(planes)
    shift = shift.expand(n, c).reshape(planes)
    zero, one = torch.zeros_like(scale), torch.ones_like(scale)
    y = torch.native_batch_norm(
        xs.reshape(1, planes, h, w), scale, shift, zero, one, False, 0.0, 0.0
    )
    return y[0].reshape(n, c, h, w).to(x.dtype)


def switch_norm_inference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    p: Tensor,
    q: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    eps: float,
) -> Tensor:
    """SN of a 4-D x with H*W > 0 with mix weights ``p``/``q`` (the layer's ``mix_weights()``)
    whose BN branch (if any: ``running_mean``/``running_var`` not None) uses the running
    statistics: eval mode and the frozen layer, in portable PyTorch."""
    mean, var = moments_inference(x)
    scale, shift = mix_scale_shift(mean, var, weight, bias, p, q, running_mean, running_var, eps)
    return apply_inference(x, scale, shift)
