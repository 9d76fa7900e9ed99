"""Normalization layers: SN, its frozen and synchronized forms, and the norm registry."""
from . import cpu_kernels  # noqa: F401  (imported for registration: the C++ CPU kernels)
from . import triton_kernels  # noqa: F401  (imported for registration: Triton, CUDA)
from .norm import NORMS, get_norm, norm_factory, register_norm, valid_norm_names
from .switch_norm import FrozenSwitchNorm2d, SwitchNorm2d
from .switch_norm_function import register_kernels, select_kernels, unregister_kernels
from .sync_switch_norm import SyncSwitchNorm2d


def fast_kernels_status(device="cpu", dtype=None, use_fast: bool = True) -> str:
    """The name of the SN kernels a tensor on ``device`` of ``dtype`` (default float32) gets."""
    import torch

    x = torch.zeros(1, 1, 1, 1, device=device, dtype=dtype or torch.float32)
    return select_kernels(x, use_fast).name


__all__ = [
    "SwitchNorm2d",
    "FrozenSwitchNorm2d",
    "SyncSwitchNorm2d",
    "NORMS",
    "get_norm",
    "norm_factory",
    "register_norm",
    "valid_norm_names",
    "register_kernels",
    "unregister_kernels",
    "select_kernels",
    "fast_kernels_status",
]
