"""Normalization layers: SN, its frozen and synchronized forms, and the norm registry."""
from . import cpu_kernels  # noqa: F401  (imported for registration: the C++ CPU kernels)
from . import triton_kernels  # noqa: F401  (imported for registration: Triton, CUDA)
from .norm import NORMS, get_norm, norm_factory, register_norm, valid_norm_names
from .switch_norm import FrozenSwitchNorm2d, SwitchNorm2d
from .switch_norm_function import register_kernels, select_kernels, unregister_kernels
from .sync_switch_norm import SyncSwitchNorm2d


def fast_kernels_status(device: str = "cpu") -> str:
    """Which SN kernels an fp32 tensor on ``device`` gets (for collect_env)."""
    import torch

    return select_kernels(torch.zeros(1, 1, 1, 1, device=device)).name


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
