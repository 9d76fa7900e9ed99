"""RegNet and RegNet-FPN backbones from YAML, with norms from our registry.

detectron2's :class:`RegNet` takes its norm as "str or callable", but detectron2 builds it only
from LazyConfig (there is no YAML builder and no ``MODEL.REGNETS``): these builders read the
``MODEL.REGNETS`` keys that :func:`sn_detection.add_sn_config` adds and pass our norm callable.
"""
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, RegNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.regnet import (
    ResBasicBlock,
    ResBottleneckBlock,
    ResStem,
    SimpleStem,
    VanillaBlock,
)
from torch import nn

from ..config import sn_options
from ..layers import FrozenSwitchNorm2d, SwitchNorm2d
from .checks import resolve_norm

__all__ = ["build_sn_regnet_backbone", "build_sn_regnet_fpn_backbone", "finish_regnet"]

STEMS = {"SimpleStem": SimpleStem, "ResStem": ResStem}
BLOCKS = {
    "ResBottleneckBlock": ResBottleneckBlock,
    "ResBasicBlock": ResBasicBlock,
    "VanillaBlock": VanillaBlock,
}


def _choice(table: dict, key: str, value: str):
    if value not in table:
        raise ValueError(f"{key} is {value!r}; use one of {', '.join(table)}")
    return table[value]


def finish_regnet(regnet: RegNet, freeze_at: int, last_gamma: bool = False) -> RegNet:
    """Zero-init the last SN of every residual block (``last_gamma``), then make the SN layers of
    the stem and stages frozen by ``RegNet.freeze(freeze_at)`` FrozenSwitchNorm2d (detectron2's
    freeze converts only BatchNorm)."""
    if last_gamma:
        for stage, _ in regnet.stages_and_names:
            for block in stage.children():
                last = {ResBottleneckBlock: "c_bn", ResBasicBlock: "b_bn"}.get(type(block))
                norm = getattr(block.f, last) if last else None
                if isinstance(norm, SwitchNorm2d):
                    nn.init.zeros_(norm.weight)
    if freeze_at >= 1:
        FrozenSwitchNorm2d.convert_frozen_switchnorm(regnet.stem)
    for idx, (stage, _) in enumerate(regnet.stages_and_names, start=2):
        if freeze_at >= idx:
            FrozenSwitchNorm2d.convert_frozen_switchnorm(stage)
    return regnet


@BACKBONE_REGISTRY.register()
def build_sn_regnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> RegNet:
    """detectron2's RegNet from ``MODEL.REGNETS`` with ``MODEL.REGNETS.NORM`` from our norm
    registry; SN layers of frozen stages become FrozenSwitchNorm2d."""
    r = cfg.MODEL.REGNETS
    if input_shape.channels != 3:
        raise ValueError(
            f"detectron2's RegNet takes 3 input channels; MODEL.PIXEL_MEAN has "
            f"{input_shape.channels}"
        )
    # fmt: off
    norm             = resolve_norm(r.NORM, "MODEL.REGNETS.NORM", **sn_options(cfg))
    stem_class       = _choice(STEMS, "MODEL.REGNETS.STEM", r.STEM)
    block_class      = _choice(BLOCKS, "MODEL.REGNETS.BLOCK", r.BLOCK)
    freeze_at        = cfg.MODEL.BACKBONE.FREEZE_AT
    # fmt: on
    regnet = RegNet(
        stem_class=stem_class,
        stem_width=r.STEM_WIDTH,
        block_class=block_class,
        depth=r.DEPTH,
        w_a=r.W_A,
        w_0=r.W_0,
        w_m=r.W_M,
        group_width=r.GROUP_WIDTH,
        bottleneck_ratio=r.BOTTLENECK_RATIO,
        se_ratio=r.SE_RATIO,
        norm=norm,
        out_features=list(r.OUT_FEATURES),
        freeze_at=freeze_at,
    )
    return finish_regnet(regnet, freeze_at, cfg.MODEL.SN.LAST_GAMMA)


@BACKBONE_REGISTRY.register()
def build_sn_regnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN (``MODEL.FPN.NORM`` from our norm registry) on :func:`build_sn_regnet_backbone`; set
    ``MODEL.FPN.IN_FEATURES`` to RegNet stage names (``["s1", "s2", "s3", "s4"]``)."""
    bottom_up = build_sn_regnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=resolve_norm(cfg.MODEL.FPN.NORM, "MODEL.FPN.NORM", **sn_options(cfg)),
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
