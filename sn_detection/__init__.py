"""Switchable Normalization (SN) and synchronized SN for detectron2.

Importing this package registers, with detectron2's registries, the backbones
``build_sn_resnet_backbone`` and ``build_sn_resnet_fpn_backbone``, the RoI heads
``SNFastRCNNConvFCHead`` and ``SNMaskRCNNConvUpsampleHead``, and the datasets ``sn_shapes_train``
and ``sn_shapes_val``.
"""
from . import data  # noqa: F401  (imported for registration: the shapes datasets)
from . import modeling  # noqa: F401  (imported for registration: backbones and RoI heads)
from .config import add_sn_config
from .layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d, get_norm
from .solver import build_sn_optimizer

__all__ = [
    "SwitchNorm2d",
    "FrozenSwitchNorm2d",
    "SyncSwitchNorm2d",
    "get_norm",
    "add_sn_config",
    "build_sn_optimizer",
]
