"""ResNet, ResNet-FPN and RetinaNet ResNet-FPN backbones whose norms may be SN, SyncSN or any
detectron2 norm, and what every backbone builder of this package does after detectron2's: freeze
SN layers, zero-init the last SN of each block, put an FPN on top."""

from typing import Iterable

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone, ResNet, build_resnet_backbone
from detectron2.modeling.backbone.fpn import (
    LastLevelMaxPool,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from detectron2.modeling.backbone.regnet import ResBasicBlock, ResBottleneckBlock
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from torch import nn

from ..layers import FrozenSwitchNorm2d, SwitchNorm2d
from .norms import config_norm, with_norm_callables


def freeze_switchnorm(stem: nn.Module, stages: Iterable[nn.Module], freeze_at: int) -> None:
    """Turn the SN layers of the stem (``freeze_at >= 1``) and of the first ``freeze_at - 1``
    ``stages`` into FrozenSwitchNorm2d, as detectron2's ``freeze(freeze_at)`` of ResNet and
    RegNet does for BatchNorm only."""
    for idx, part in enumerate([stem, *stages], start=1):
        if freeze_at >= idx:
            FrozenSwitchNorm2d.convert_frozen_switchnorm(part)


def _last_norm(block: nn.Module) -> nn.Module:
    """The last norm of a residual block: before the sum in v1 ResNet and RegNet blocks, before
    the last conv in pre-activation (v2) blocks; None for a block without one."""
    if isinstance(block, BottleneckBlock):
        return block.conv3.norm
    if isinstance(block, BasicBlock):
        return block.conv2.norm
    if isinstance(block, ResBottleneckBlock):
        return block.f.c_bn
    if isinstance(block, ResBasicBlock):
        return block.f.b_bn
    return getattr(block, "norm3", None)  # resnet_v2.PreActBottleneckBlock


def zero_init_last_switchnorm_of(blocks: Iterable[nn.Module]) -> None:
    """Start the last SN of each residual block of ``blocks`` with weight 0 (MODEL.SN.LAST_GAMMA),
    so that each block starts as the identity (in v2 blocks the branch outputs conv3(ReLU(0)))."""
    for block in blocks:
        last = _last_norm(block)
        if isinstance(last, SwitchNorm2d):
            nn.init.zeros_(last.weight)


def zero_init_last_switchnorm(resnet: ResNet) -> None:
    """Start the last SN of every residual block of ``resnet`` with weight 0
    (MODEL.SN.LAST_GAMMA)."""
    zero_init_last_switchnorm_of(block for stage in resnet.stages for block in stage.children())


def finish_resnet(resnet: ResNet, freeze_at: int, last_gamma: bool = False) -> ResNet:
    """What our ResNet builders do after detectron2's: zero-init the last SN of every block
    (``last_gamma``), then make the SN layers of the stages frozen by ``freeze_at``
    FrozenSwitchNorm2d. Shared by the YAML builders and the LazyConfig targets."""
    if last_gamma:
        zero_init_last_switchnorm(resnet)
    freeze_switchnorm(resnet.stem, resnet.stages, freeze_at)
    return resnet


def _finish_resnet(resnet: ResNet, cfg: CfgNode) -> ResNet:
    return finish_resnet(resnet, cfg.MODEL.BACKBONE.FREEZE_AT, cfg.MODEL.SN.LAST_GAMMA)


def build_fpn_on(bottom_up: Backbone, cfg: CfgNode) -> FPN:
    """detectron2's FPN (P2-P6, as ``build_resnet_fpn_backbone``) on ``bottom_up``, from
    ``MODEL.FPN`` with ``MODEL.FPN.NORM`` from our norm registry."""
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=config_norm(cfg, "FPN"),
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_sn_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ResNet with ``MODEL.RESNETS.NORM`` from our norm registry ("SN", "SyncSN",
    or any detectron2 norm); SN layers of frozen stages become FrozenSwitchNorm2d."""
    resnet = build_resnet_backbone(with_norm_callables(cfg, ["RESNETS"]), input_shape)
    return _finish_resnet(resnet, cfg)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's ResNet-FPN with ``MODEL.RESNETS.NORM`` and ``MODEL.FPN.NORM`` from our norm
    registry; SN layers of frozen stages become FrozenSwitchNorm2d."""
    backbone = build_resnet_fpn_backbone(with_norm_callables(cfg, ["RESNETS", "FPN"]), input_shape)
    _finish_resnet(backbone.bottom_up, cfg)
    return backbone


@BACKBONE_REGISTRY.register()
def build_sn_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's RetinaNet ResNet-FPN (P3-P7: P6/P7 from res5) with ``MODEL.RESNETS.NORM``
    and ``MODEL.FPN.NORM`` from our norm registry; SN layers of frozen stages become
    FrozenSwitchNorm2d. (P6/P7 are plain convs in detectron2: they have no norm.)"""
    norm_cfg = with_norm_callables(cfg, ["RESNETS", "FPN"])
    backbone = build_retinanet_resnet_fpn_backbone(norm_cfg, input_shape)
    _finish_resnet(backbone.bottom_up, cfg)
    return backbone
