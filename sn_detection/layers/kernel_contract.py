"""The contract of SN's full-size passes (``SNKernels``), the statistics dtype rule and the plain
PyTorch kernels that always work (any device, dtype and layout) and are the oracle of the fast
ones. Backends import this module; ``kernels.py`` chooses among them."""

from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from torch import Tensor


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are computed in float32 for half/bfloat16 inputs and in float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class SNKernels:
    """The four full-size passes of SN. Each takes and returns tensors as documented below.

    name: what the status, the warnings and the self-check results call these kernels.
    moments(x) -> (mean, var): per-(n, c) mean and unbiased variance of an (N, C, H, W) tensor
        with H*W > 0, (N, C) in ``stats_dtype(x.dtype)``; the variance of a single element
        (H*W = 1) is 0; the variance is never negative.
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
    return (dy * x).sum(dim=(2, 3)), dy.sum(dim=(2, 3))


def _plain_backward_apply(dy: Tensor, x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    dtype = a.dtype
    return (torch.addcmul(_plane(c), x.to(dtype), _plane(b)) + dy.to(dtype) * _plane(a)).to(x.dtype)


PLAIN_KERNELS = SNKernels(
    name="plain",
    moments=_plain_moments,
    apply=_plain_apply,
    backward_reduce=_plain_backward_reduce,
    backward_apply=_plain_backward_apply,
    supports=lambda x: True,
)
