"""Normalization layers: SN, its frozen and synchronized forms, and the norm registry."""
from . import cpu_kernels  # noqa: F401  (imported for registration: the C++ CPU kernels)
from .norm import NORMS, get_norm, norm_factory, register_norm, valid_norm_names
from .switch_norm import FrozenSwitchNorm2d, SwitchNorm2d
from .switch_norm_function import register_kernels, select_kernels
from .sync_switch_norm import SyncSwitchNorm2d


def fast_kernels_status() -> str:
    """Which SN kernels an fp32 CPU tensor gets (for collect_env)."""
    import torch

    return select_kernels(torch.zeros(1, 1, 1, 1)).name


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
    "select_kernels",
    "fast_kernels_status",
]
