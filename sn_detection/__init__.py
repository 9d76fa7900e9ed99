"""Switchable Normalization (SN) and synchronized SN for detectron2.

Importing this package registers its backbones and RoI heads with detectron2's registries.
"""
from .layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d, get_norm

__all__ = ["SwitchNorm2d", "FrozenSwitchNorm2d", "SyncSwitchNorm2d", "get_norm"]
