"""SN's (N, C)-sized statistics mixer, with a hand-derived backward.

Given the per-(n, c) mean ``m`` and unbiased variance ``v`` of the input, the mixer computes

    s   = v + m^2                                    second moment per (n, c)
    m_L = mean_c m,   v_L = max(mean_c s - m_L^2, 0)  LN statistics, per sample
    m_B = mean_n m,   v_B = max(mean_n s - m_B^2, 0)  BN statistics, per channel (or given ones)
    mu  = p_IN m + p_LN m_L + p_BN m_B                p = softmax(mean logits)
    var = q_IN v + q_LN v_L + q_BN v_B                q = softmax(var logits)
    scale = weight / sqrt(var + eps),  shift = bias - mu * scale

so that SN's output is ``x * scale + shift``. ``mix_forward`` and ``mix_backward`` are plain tensor
functions (no autograd graph): about 25 small operations forward and 45 backward, where autograd
of the same formulas records ~35 nodes and runs ~60 operations. The clamps' gradients follow
autograd's convention (zero where the clamped value is exactly 0).

On CUDA both are compiled with ``torch.compile`` (dynamic shapes) into a few fused kernels, since
dozens of tiny launches per layer would cost more than the full-size passes; see
``compile_mode``. A compilation failure warns once and falls back to the eager functions, which
compute the same numbers.
"""

import os
import warnings
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

# environment variable: "auto" (default: compile on CUDA), "1" (compile on every device), "0"
COMPILE_ENV = "SN_DETECTION_COMPILE_MIXER"


class MixerSaved(NamedTuple):
    """What ``mix_backward`` needs from ``mix_forward``, all (N, C)-sized or smaller."""

    m: Tensor
    v: Tensor
    weight: Tensor
    p: Tensor  # softmax of the mean logits
    q: Tensor  # softmax of the variance logits
    mean_ln: Tensor
    var_ln_raw: Tensor  # before clamping at 0
    mean_bn: Optional[Tensor]
    var_bn_raw: Optional[Tensor]
    rstd: Tensor  # 1 / sqrt(var + eps)
    mu: Tensor  # the mixed mean


def mix_forward(
    m: Tensor,
    v: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    mean_bn: Optional[Tensor],
    var_bn: Optional[Tensor],
    eps: float,
    local_bn: bool,
):
    """The mixer's forward (module docstring). With ``local_bn`` the BN statistics are those of
    the batch, computed from ``m`` and ``v``; otherwise ``mean_bn``/``var_bn`` are used as given
    (the variance is clamped at 0; both None: no BN branch). Returns (scale, shift, mean_bn,
    var_bn, saved), with the BN statistics used and the fields of ``MixerSaved`` as a tuple."""
    dtype = m.dtype
    s = v + m * m
    mean_ln = m.mean(dim=1, keepdim=True)
    var_ln_raw = s.mean(dim=1, keepdim=True) - mean_ln * mean_ln
    p = torch.softmax(mean_logits.to(dtype), dim=0)
    q = torch.softmax(var_logits.to(dtype), dim=0)
    mu = p[0] * m + p[1] * mean_ln
    var = q[0] * v + q[1] * var_ln_raw.clamp(min=0)
    var_bn_raw = var_bn
    if local_bn:
        mean_bn = m.mean(dim=0)
        var_bn_raw = s.mean(dim=0) - mean_bn * mean_bn
    if mean_bn is not None:
        mean_bn, var_bn_raw = mean_bn.to(dtype), var_bn_raw.to(dtype)
        var_bn = var_bn_raw.clamp(min=0)
        mu = mu + p[2] * mean_bn
        var = var + q[2] * var_bn
    rstd = torch.rsqrt(var + eps)
    scale = weight.to(dtype) * rstd
    shift = bias.to(dtype) - mu * scale
    saved = (m, v, weight, p, q, mean_ln, var_ln_raw, mean_bn, var_bn_raw, rstd, mu)
    return scale, shift, mean_bn, var_bn, saved


def _softmax_backward(p: Tensor, grad_p: Tensor) -> Tensor:
    return p * (grad_p - (p * grad_p).sum())


def batch_statistics(sums: Tensor, channels: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(mean, variance before clamping, sample count) of the BN branch from the vector
    [sum over samples of mean_in (C), of the second moments (C), sample count]."""
    total = sums[2 * channels]
    mean = sums[:channels] / total.clamp(min=1)
    return mean, sums[channels : 2 * channels] / total.clamp(min=1) - mean * mean, total


def batch_statistics_backward(grad_mean_bn, grad_var_bn, mean_bn, count):
    """Gradients of (sum of m, sum of s) over ``count`` samples, given those of the BN statistics
    mean_bn = sum(m) / count and var_bn (before clamping) = sum(s) / count - mean_bn^2."""
    return (grad_mean_bn - 2.0 * mean_bn * grad_var_bn) / count, grad_var_bn / count


def mix_backward(grad_scale: Tensor, grad_shift: Tensor, saved, local_bn: bool):
    """Gradients of ``mix_forward``'s (scale, shift) with respect to its inputs (m, v, weight,
    bias, mean_logits, var_logits, mean_bn, var_bn), given those of scale and shift; the last two
    are None with ``local_bn`` (the BN statistics are then differentiated through m and v) or
    without a BN branch. Gradients are in the statistics dtype (the caller casts)."""
    m, v, weight, p, q, mean_ln, var_ln_raw, mean_bn, var_bn_raw, rstd, mu = saved
    n, c = m.shape
    scale = weight.to(m.dtype) * rstd
    var_ln = var_ln_raw.clamp(min=0)

    grad_bias = grad_shift.sum(dim=0)
    grad_mu = -grad_shift * scale
    grad_scale = grad_scale - grad_shift * mu  # shift depends on scale too
    grad_weight = (grad_scale * rstd).sum(dim=0)
    grad_var = grad_scale * (-0.5 * rstd * rstd * scale)  # d rstd / d var = -rstd^3 / 2

    row_mu = grad_mu.sum(dim=1, keepdim=True)
    row_var = grad_var.sum(dim=1, keepdim=True)
    grad_p = [(grad_mu * m).sum(), (row_mu * mean_ln).sum()]
    grad_q = [(grad_var * v).sum(), (row_var * var_ln).sum()]

    # LN statistics: d var_ln / d s = 1/C and d var_ln / d mean_ln = -2 mean_ln (unless clamped)
    grad_var_ln = q[1] * row_var * (var_ln_raw > 0).to(m.dtype)
    grad_mean_ln = p[1] * row_mu - 2.0 * mean_ln * grad_var_ln
    grad_s = grad_var_ln / c
    grad_m = p[0] * grad_mu + grad_mean_ln / c
    grad_v = q[0] * grad_var

    grad_mean_bn = grad_var_bn = None
    if mean_bn is not None:
        col_mu = grad_mu.sum(dim=0)
        col_var = grad_var.sum(dim=0)
        grad_p.append((col_mu * mean_bn).sum())
        grad_q.append((col_var * var_bn_raw.clamp(min=0)).sum())
        grad_mean_bn = p[2] * col_mu
        grad_var_bn = q[2] * col_var * (var_bn_raw > 0).to(m.dtype)
        if local_bn:
            grad_sum_mean, grad_sum_second = batch_statistics_backward(
                grad_mean_bn, grad_var_bn, mean_bn, n
            )
            grad_m = grad_m + grad_sum_mean
            grad_s = grad_s + grad_sum_second
            grad_mean_bn = grad_var_bn = None

    grad_m = grad_m + 2.0 * m * grad_s  # s = v + m^2
    grad_v = grad_v + grad_s
    grad_mean_logits = _softmax_backward(p, torch.stack(grad_p))
    grad_var_logits = _softmax_backward(q, torch.stack(grad_q))
    return (
        grad_m, grad_v, grad_weight, grad_bias, grad_mean_logits, grad_var_logits,
        grad_mean_bn, grad_var_bn,
    )


def compile_mode() -> str:
    """The value of ``SN_DETECTION_COMPILE_MIXER``: "auto" (the default: compile on CUDA, where
    the mixer is launch-bound), "1" (compile everywhere, e.g. to test it on CPU) or "0" (never)."""
    mode = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"{COMPILE_ENV}={mode!r}: expected one of 'auto', '0', '1'")
    return mode


class _Compiled:
    """``fn`` run through ``torch.compile`` where ``compile_mode`` asks for it, else eagerly.

    The first failure of the compiled function (other than running out of memory) warns and
    switches to eager for good; the eager call then raises the error again if it was not a
    compilation problem."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None
        self.failed = False

    def __call__(self, first: Tensor, *args):
        mode = compile_mode()
        if self.failed or mode == "0" or (mode == "auto" and first.device.type != "cuda"):
            return self.fn(first, *args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        # torch.compile treats parameters' shapes as static, which would specialize the compiled
        # code to each channel count (and hit the recompilation limit): pass plain tensors
        args = [a.detach() if isinstance(a, torch.nn.Parameter) else a for a in args]
        try:
            return self.compiled(first, *args)
        except torch.OutOfMemoryError:
            raise  # not a compilation problem: keep compiling next time
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back to eager
            self.failed = True
            warnings.warn(
                f"torch.compile of SN's {self.fn.__name__} failed ({type(e).__name__}: {e}); "
                f"SN runs it eagerly from now on (set {COMPILE_ENV}=0 to skip compiling)"
            )
            return self.fn(first, *args)


compiled_mix_forward = _Compiled(mix_forward)
compiled_mix_backward = _Compiled(mix_backward)


