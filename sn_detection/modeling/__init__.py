"""Builders registered with detectron2's registries when this package is imported."""
from .backbone import (
    build_sn_resnet_backbone,
    build_sn_resnet_fpn_backbone,
    freeze_switchnorm,
    with_norm_callables,
)
from .roi_heads import SNFastRCNNConvFCHead, SNMaskRCNNConvUpsampleHead
from .resnet_v2 import build_sn_resnet_v2_backbone, build_sn_resnet_v2_fpn_backbone
