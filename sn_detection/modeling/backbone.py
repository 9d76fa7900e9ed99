"""ResNet, ResNet-FPN and RetinaNet ResNet-FPN backbones whose norms may be SN, SyncSN or any
detectron2 norm."""
from typing import Iterable

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet, build_resnet_backbone
from detectron2.modeling.backbone.fpn import (
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock
from torch import nn

from ..config import sn_options
from ..layers import FrozenSwitchNorm2d, SwitchNorm2d
from .checks import resolve_norm


def with_norm_callables(cfg: CfgNode, nodes: Iterable[str] = ("RESNETS", "FPN")) -> CfgNode:
    """A private copy of ``cfg`` whose ``MODEL.<node>.NORM`` (for each of ``nodes``) are
    callables from our registry.

    detectron2's builders hand ``NORM`` straight to its blocks, which accept a callable; so the
    stock builders build SN models without being copied or patched. yacs accepts only plain
    values through attribute assignment, so the callables are stored as dict items of the copy,
    which is used for building only (never saved or merged). Unknown names raise here, naming
    the key.
    """
    cfg = cfg.clone()
    options = sn_options(cfg)
    for name in nodes:
        node = cfg.MODEL[name]
        dict.__setitem__(node, "NORM", resolve_norm(node.NORM, f"MODEL.{name}.NORM", **options))
    return cfg


def freeze_switchnorm(resnet: ResNet, freeze_at: int) -> ResNet:
    """Turn the SN layers of the stages frozen by ``ResNet.freeze(freeze_at)`` into
    FrozenSwitchNorm2d (detectron2's freeze converts only BatchNorm)."""
    if freeze_at >= 1:
        FrozenSwitchNorm2d.convert_frozen_switchnorm(resnet.stem)
    for idx, stage in enumerate(resnet.stages, start=2):
        if freeze_at >= idx:
            FrozenSwitchNorm2d.convert_frozen_switchnorm(stage)
    return resnet


def zero_init_last_switchnorm_of(blocks: Iterable[nn.Module]) -> None:
    """Start the last SN of each residual block of ``blocks`` with weight 0; in pre-activation
    (v2) blocks that is ``norm3``, so the branch first outputs conv3(ReLU(0)) = 0."""
    for block in blocks:
        if isinstance(block, BottleneckBlock):
            last = block.conv3.norm
        elif isinstance(block, BasicBlock):
            last = block.conv2.norm
        else:
            last = getattr(block, "norm3", None)  # resnet_v2.PreActBottleneckBlock
        if isinstance(last, SwitchNorm2d):
            nn.init.zeros_(last.weight)


def zero_init_last_switchnorm(resnet: ResNet) -> None:
    """Start the last SN of every residual block of ``resnet`` with weight 0
    (MODEL.SN.LAST_GAMMA)."""
    zero_init_last_switchnorm_of(block for stage in resnet.stages for block in stage.children())


def finish_resnet(resnet: ResNet, freeze_at: int, last_gamma: bool = False) -> ResNet:
    """What our ResNet builders do after detectron2's: zero-init the last SN of every block
    (``last_gamma``, MODEL.SN.LAST_GAMMA), then make the SN layers of the stages frozen by
    ``freeze_at`` FrozenSwitchNorm2d. Shared by the YAML builders and the LazyConfig targets."""
    if last_gamma:
        zero_init_last_switchnorm(resnet)
    return freeze_switchnorm(resnet, freeze_at)


def _finish_resnet(resnet: ResNet, cfg: CfgNode) -> ResNet:
    return finish_resnet(resnet, cfg.MODEL.BACKBONE.FREEZE_AT, cfg.MODEL.SN.LAST_GAMMA)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ResNet with ``MODEL.RESNETS.NORM`` from our norm registry ("SN", "SyncSN",
    or any detectron2 norm); SN layers of frozen stages become FrozenSwitchNorm2d."""
    return _finish_resnet(build_resnet_backbone(with_norm_callables(cfg), input_shape), cfg)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's ResNet-FPN with ``MODEL.RESNETS.NORM`` and ``MODEL.FPN.NORM`` from our norm
    registry; SN layers of frozen stages become FrozenSwitchNorm2d."""
    backbone = build_resnet_fpn_backbone(with_norm_callables(cfg), input_shape)
    _finish_resnet(backbone.bottom_up, cfg)
    return backbone


@BACKBONE_REGISTRY.register()
def build_sn_retinanet_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's RetinaNet ResNet-FPN (P3-P7: P6/P7 from res5) with ``MODEL.RESNETS.NORM``
    and ``MODEL.FPN.NORM`` from our norm registry; SN layers of frozen stages become
    FrozenSwitchNorm2d. (P6/P7 are plain convs in detectron2: they have no norm.)"""
    backbone = build_retinanet_resnet_fpn_backbone(with_norm_callables(cfg), input_shape)
    _finish_resnet(backbone.bottom_up, cfg)
    return backbone
