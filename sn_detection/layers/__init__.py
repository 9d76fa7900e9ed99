"""Normalization layers: SN, its frozen and synchronized forms, and the norm registry.

Where to look: the math of the (N, C)-sized statistics in ``mixer.py``; the autograd core in
``switch_norm_function.py``; the contract of the full-size passes and the plain kernels in
``kernel_contract.py``; which code runs them (and how to force the plain path) in ``kernels.py``;
the modules in ``switch_norm.py``, ``sync_switch_norm.py`` and ``sparse_switch_norm.py`` (sparse
SN, with ``sparsestmax.py``); norm names in ``norm.py``.
"""

from .kernels import (
    SNKernels,
    kernels_status,
    register_kernels,
    select_kernels,
    set_compile_mixer,
    set_fast_kernels,
    unregister_kernels,
)
from .norm import NORMS, get_norm, norm_factory, register_norm, valid_norm_names
from .sparse_switch_norm import (
    SparseSwitchNorm2d,
    SyncSparseSwitchNorm2d,
    hold_fixed_logits,
    set_ssn_radius,
    sparse_switch_norms,
)
from .switch_norm import FrozenSwitchNorm2d, SwitchNorm2d, named_switch_norms, nonfinite_batches
from .sync_switch_norm import SyncSwitchNorm2d

__all__ = [
    "SwitchNorm2d",
    "FrozenSwitchNorm2d",
    "SyncSwitchNorm2d",
    "SparseSwitchNorm2d",
    "SyncSparseSwitchNorm2d",
    "sparse_switch_norms",
    "set_ssn_radius",
    "hold_fixed_logits",
    "named_switch_norms",
    "nonfinite_batches",
    "NORMS",
    "get_norm",
    "norm_factory",
    "register_norm",
    "valid_norm_names",
    "SNKernels",
    "register_kernels",
    "unregister_kernels",
    "select_kernels",
    "set_fast_kernels",
    "set_compile_mixer",
    "kernels_status",
]
