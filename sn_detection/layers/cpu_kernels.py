"""The C++/OpenMP CPU kernels of SN (``sn_detection._C``) as ``SNKernels``, when they are built.

The extension is built by ``setup.py`` (``make setup``); ``kernels.py`` registers ``CPU_KERNELS``
for "cpu". Without it (a source checkout that was never built) ``CPU_KERNELS`` is None and SN runs
on the plain PyTorch kernels; an extension that
exists but fails to load gives a warning, then the same fallback.

dtypes: float32 and float64 (``_DTYPES``). Other inputs, e.g. the bfloat16 that a convolution gives
under CPU autocast (``SOLVER.AMP.PRECISION bfloat16``), run the plain kernels, whose statistics
are float32 as well (``kernel_contract.stats_dtype``).
"""

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .kernel_contract import SNKernels

try:
    from sn_detection import _C
except ModuleNotFoundError:
    _C = None
except ImportError as e:  # built, but for another torch or platform
    warnings.warn(f"sn_detection._C failed to load ({e}); SN uses the plain PyTorch kernels")
    _C = None

_DTYPES = (torch.float32, torch.float64)


def _supports(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _DTYPES and x.dim() == 4 and x.is_contiguous()


def _like(dy: Tensor, x: Tensor) -> Tensor:
    """dy as the kernels need it: x's dtype, contiguous NCHW."""
    return dy.to(x.dtype).contiguous()


def _backward_reduce(dy: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
    return _C.backward_reduce(_like(dy, x), x)


def _backward_apply(dy: Tensor, x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return _C.backward_apply(_like(dy, x), x, a, b, c)


CPU_KERNELS: Optional[SNKernels] = None
if _C is not None:
    CPU_KERNELS = SNKernels(
        name="cpu-openmp",
        moments=_C.moments,
        apply=_C.apply,
        backward_reduce=_backward_reduce,
        backward_apply=_backward_apply,
        supports=_supports,
    )
