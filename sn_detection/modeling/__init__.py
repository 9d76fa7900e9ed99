"""Builders registered with detectron2's registries when this package is imported: backbones
(ResNet, ResNet-FPN, RetinaNet ResNet-FPN, ResNet v2, RegNet), RoI heads (box, mask, C4 res5),
the semantic FPN head and the RetinaNet meta-architecture, each taking SN/SyncSN or any
detectron2 norm. ``check_sn_builders`` (YAML) and ``check_lazy_norms`` (LazyConfig) name the
constructor to use where a config gives "SN" to a detectron2 one."""

from .backbone import (
    build_sn_resnet_backbone,
    build_sn_resnet_fpn_backbone,
    build_sn_retinanet_resnet_fpn_backbone,
    freeze_switchnorm,
    zero_init_last_switchnorm,
)
from .checks import SN_BUILDERS, check_sn_builders
from .lazy import (
    check_lazy_norms,
    sn_basic_stem,
    sn_fcos_head,
    sn_fpn,
    sn_regnet,
    sn_resnet,
    sn_resnet_stage,
    sn_resnet_stages,
    sn_retinanet_head,
)
from .norms import config_norm, with_norm_callables
from .regnet import build_sn_regnet_backbone, build_sn_regnet_fpn_backbone
from .resnet_v2 import build_sn_resnet_v2_backbone, build_sn_resnet_v2_fpn_backbone
from .retinanet import CycleSwitchNormList, SNRetinaNet
from .roi_heads import SNFastRCNNConvFCHead, SNMaskRCNNConvUpsampleHead, SNRes5ROIHeads
from .semantic_seg import SNSemSegFPNHead

__all__ = [
    "build_sn_resnet_backbone",
    "build_sn_resnet_fpn_backbone",
    "build_sn_retinanet_resnet_fpn_backbone",
    "build_sn_resnet_v2_backbone",
    "build_sn_resnet_v2_fpn_backbone",
    "build_sn_regnet_backbone",
    "build_sn_regnet_fpn_backbone",
    "SNRetinaNet",
    "CycleSwitchNormList",
    "SNFastRCNNConvFCHead",
    "SNMaskRCNNConvUpsampleHead",
    "SNRes5ROIHeads",
    "SNSemSegFPNHead",
    "freeze_switchnorm",
    "zero_init_last_switchnorm",
    "config_norm",
    "with_norm_callables",
    "SN_BUILDERS",
    "check_sn_builders",
    "check_lazy_norms",
    "sn_basic_stem",
    "sn_resnet_stages",
    "sn_resnet",
    "sn_fpn",
    "sn_resnet_stage",
    "sn_retinanet_head",
    "sn_fcos_head",
    "sn_regnet",
]
