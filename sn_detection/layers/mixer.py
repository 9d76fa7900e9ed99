"""SN's (N, C)-sized arithmetic, each function with a hand-derived backward: the BN-branch
batch statistics, summarised per process so that summaries of several processes combine exactly,
and the mixer, which folds the IN/LN/BN statistics, their mix weights (p for the means, q for
the variances: softmax of the logits for SN, sparsestmax for SSN, computed by the layer in front of
the mixer with ordinary autograd) and the affine parameters into a per-(n, c) ``scale`` and
``shift`` (SN's output is ``x * scale + shift``); the mixer's backward gives the gradients of the
weights, which autograd carries on to the logits.

Plain tensor functions without an autograd graph; ``mix_forward`` is also TorchScript-scriptable
(the portable path uses it). On CUDA they are compiled with ``torch.compile``
(``kernels.set_compile_mixer``); a compiled function is checked once per device and dtype against
the eager one, and a failure or mismatch warns once and runs eagerly for good. The formulas and
their derivations are in docs/DESIGN.md.
"""

import warnings
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .kernels import COMPILE_ENV, compiles_mixer_on


class MixerSaved(NamedTuple):
    """What ``mix_backward`` needs from ``mix_forward``, all (N, C)-sized or smaller."""

    m: Tensor
    v: Tensor
    weight: Tensor
    p: Tensor  # the mix weights of the means, in the statistics dtype
    q: Tensor  # the mix weights of the variances
    mean_ln: Tensor
    var_ln: Tensor
    mean_bn: Optional[Tensor]
    var_bn: Optional[Tensor]
    rstd: Tensor  # 1 / sqrt(var + eps)
    mu: Tensor  # the mixed mean


# -- BN-branch batch statistics ------------------------------------------------------------------


def batch_summary(m: Tensor, v: Tensor) -> Tensor:
    """This process's samples summarised for the BN statistics: the vector [mean over samples of
    m (C), M2 = sum over samples of v + (m - mean)^2 (C), sample count (1)]. An empty batch gives
    zeros (and count 0)."""
    count = torch.ones_like(m[:, :1]).sum(dim=0)  # (1,), no host value: compiles for any N
    mean = m.sum(dim=0) / count.clamp(min=1)
    m2 = (v + (m - mean).square()).sum(dim=0)
    return torch.cat([mean, m2, count])


def combine_summaries(summaries: Tensor) -> Tensor:
    """One summary of the samples of several, from their (K, 2C+1) stack (Chan et al.'s parallel
    combination: exact, with any sample counts, including 0)."""
    c = (summaries.shape[1] - 1) // 2
    means, m2s, counts = summaries[:, :c], summaries[:, c : 2 * c], summaries[:, 2 * c :]
    total = counts.sum(dim=0)
    mean = (counts * means).sum(dim=0) / total.clamp(min=1)
    m2 = m2s.sum(dim=0) + (counts * (means - mean).square()).sum(dim=0)
    return torch.cat([mean, m2, total])


def split_summary(summary: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(mean, variance, sample count) of the BN branch from a summary vector."""
    c = (summary.shape[0] - 1) // 2
    count = summary[2 * c]
    return summary[:c], summary[c : 2 * c] / count.clamp(min=1), count


def batch_statistics_backward(
    grads: Tensor, m: Tensor, mean_bn: Tensor, count: Tensor
) -> Tuple[Tensor, Tensor]:
    """Gradients of (m, v) of this process's samples from ``grads`` = [G_mean (C), G_var (C)],
    the gradients of every process's loss with respect to the BN statistics:
    ``G_mean / N + 2 G_var (m - m_B) / N`` and ``G_var / N`` for N samples in all."""
    c = mean_bn.shape[0]
    count = count.clamp(min=1)
    grad_mean, grad_var = grads[:c] / count, grads[c:] / count
    return grad_mean + 2.0 * grad_var * (m - mean_bn), grad_var.expand_as(m)


# -- the mixer -----------------------------------------------------------------------------------


def mix_forward(
    m: Tensor,
    v: Tensor,
    weight: Tensor,
    bias: Tensor,
    p: Tensor,
    q: Tensor,
    mean_bn: Optional[Tensor],
    var_bn: Optional[Tensor],
    eps: float,
):
    """The mixer's forward: with p, q the mix weights of the means and variances and the LN
    statistics ``m_L = mean_c m``, ``v_L = mean_c (v + (m - m_L)^2)``::

        mu  = p_IN m + p_LN m_L + p_BN m_B,    var = q_IN v + q_LN v_L + q_BN v_B
        scale = weight / sqrt(var + eps),      shift = bias - mu * scale

    ``mean_bn``/``var_bn`` are the BN statistics to use (batch or running; both None: no BN
    branch; a negative given variance counts as 0). Returns (scale, shift, saved), with the fields
    of ``MixerSaved`` as a tuple."""
    dtype = m.dtype
    mean_ln = m.mean(dim=1, keepdim=True)
    var_ln = (v + (m - mean_ln).square()).mean(dim=1, keepdim=True)
    p = p.to(dtype)
    q = q.to(dtype)
    mu = p[0] * m + p[1] * mean_ln
    var = q[0] * v + q[1] * var_ln
    if mean_bn is not None and var_bn is not None:
        mean_bn, var_bn = mean_bn.to(dtype), var_bn.to(dtype).clamp(min=0.0)
        mu = mu + p[2] * mean_bn
        var = var + q[2] * var_bn
    rstd = torch.rsqrt(var + eps)
    scale = weight.to(dtype) * rstd
    shift = bias.to(dtype) - mu * scale
    saved = (m, v, weight, p, q, mean_ln, var_ln, mean_bn, var_bn, rstd, mu)
    return scale, shift, saved


def mix_backward(grad_scale: Tensor, grad_shift: Tensor, saved):
    """Gradients of ``mix_forward``'s (scale, shift) with respect to its inputs (m, v, weight,
    bias, p, q, mean_bn, var_bn), given those of scale and shift; the last two
    are None without a BN branch. Gradients are in the statistics dtype (the caller casts). The
    gradient of var_bn is that of the variance used: batch variances are never negative, and a
    negative given one (counted as 0) is a running statistic, which takes no gradient."""
    m, v, weight, p, q, mean_ln, var_ln, mean_bn, var_bn, rstd, mu = saved
    c = m.shape[1]
    scale = weight.to(m.dtype) * rstd

    grad_bias = grad_shift.sum(dim=0)
    grad_mu = -grad_shift * scale
    grad_scale = grad_scale - grad_shift * mu  # shift depends on scale too
    grad_weight = (grad_scale * rstd).sum(dim=0)
    grad_var = grad_scale * (-0.5 * rstd * rstd * scale)  # d rstd / d var = -rstd^3 / 2

    row_mu = grad_mu.sum(dim=1, keepdim=True)
    row_var = grad_var.sum(dim=1, keepdim=True)
    grad_p = [(grad_mu * m).sum(), (row_mu * mean_ln).sum()]
    grad_q = [(grad_var * v).sum(), (row_var * var_ln).sum()]

    # LN statistics: d m_L / d m = 1/C; d v_L / d v = 1/C, d v_L / d m = 2 (m - m_L) / C
    grad_mean_ln = p[1] * row_mu
    grad_var_ln = q[1] * row_var
    grad_m = p[0] * grad_mu + (grad_mean_ln + 2.0 * grad_var_ln * (m - mean_ln)) / c
    grad_v = q[0] * grad_var + grad_var_ln / c

    grad_mean_bn = grad_var_bn = None
    if mean_bn is not None:
        col_mu = grad_mu.sum(dim=0)
        col_var = grad_var.sum(dim=0)
        grad_p.append((col_mu * mean_bn).sum())
        grad_q.append((col_var * var_bn).sum())
        grad_mean_bn = p[2] * col_mu
        grad_var_bn = q[2] * col_var

    return (
        grad_m,
        grad_v,
        grad_weight,
        grad_bias,
        torch.stack(grad_p),
        torch.stack(grad_q),
        grad_mean_bn,
        grad_var_bn,
    )


# -- compilation ---------------------------------------------------------------------------------


def _close(a, b) -> bool:
    """Whether two results (tensors, tuples of tensors or None) agree to compilation noise."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    tol = 1e-9 if a.dtype == torch.float64 else 1e-4
    return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol)


class _Compiled:
    """``fn`` run through ``torch.compile`` where ``kernels.compiles_mixer_on`` says so, else
    eagerly.

    The first compiled call on each device and dtype is checked against the eager function. A
    failure of the compiled function (other than running out of memory) or a mismatch warns and
    switches to eager for good; the eager call then raises the error again if it was not a
    compilation problem."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None
        self.failed = False
        self.checked = set()  # (device, dtype) where the compiled function matched the eager one

    def __call__(self, first: Tensor, *args):
        if self.failed or not compiles_mixer_on(first.device):
            return self.fn(first, *args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True)
        # torch.compile treats parameters' shapes as static, which would specialize the compiled
        # code to each channel count (and hit the recompilation limit), and inspects the autograd
        # state of tensors that require grad (the mix weights): pass plain tensors
        args = [a.detach() if isinstance(a, Tensor) else a for a in args]
        try:
            out = self.compiled(first, *args)
        except torch.OutOfMemoryError:
            raise  # not a compilation problem: keep compiling next time
        except Exception as e:  # any compiler failure falls back to eager
            return self._fall_back(f"failed ({type(e).__name__}: {e})", first, args)
        key = (str(first.device), first.dtype)
        if key not in self.checked:
            if not _close(out, self.fn(first, *args)):
                return self._fall_back(f"differs from the eager function on {key}", first, args)
            self.checked.add(key)
        return out

    def _fall_back(self, problem: str, first: Tensor, args):
        self.failed = True
        warnings.warn(
            f"torch.compile of SN's {self.fn.__name__} {problem}; SN runs it eagerly from now on "
            f"(set {COMPILE_ENV}=0 to skip compiling)"
        )
        return self.fn(first, *args)


compiled_batch_summary = _Compiled(batch_summary)
compiled_batch_statistics_backward = _Compiled(batch_statistics_backward)
compiled_mix_forward = _Compiled(mix_forward)
compiled_mix_backward = _Compiled(mix_backward)
