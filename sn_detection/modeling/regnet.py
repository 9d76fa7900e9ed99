"""RegNet and RegNet-FPN backbones from YAML, with norms from our registry.

detectron2's :class:`RegNet` takes its norm as "str or callable", but detectron2 builds it only
from LazyConfig (there is no YAML builder and no ``MODEL.REGNETS``): these builders read the
``MODEL.REGNETS`` keys that :func:`sn_detection.add_sn_config` adds and pass our norm callable.
"""

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, RegNet
from detectron2.modeling.backbone.regnet import (
    ResBasicBlock,
    ResBottleneckBlock,
    ResStem,
    SimpleStem,
    VanillaBlock,
)

from ..utils.cli import InputError
from .backbone import build_fpn_on, freeze_switchnorm, zero_init_last_switchnorm_of
from .norms import config_norm

__all__ = ["build_sn_regnet_backbone", "build_sn_regnet_fpn_backbone", "finish_regnet"]

STEMS = {"SimpleStem": SimpleStem, "ResStem": ResStem}
BLOCKS = {
    "ResBottleneckBlock": ResBottleneckBlock,
    "ResBasicBlock": ResBasicBlock,
    "VanillaBlock": VanillaBlock,
}


def _choice(table: dict, key: str, value: str) -> type:
    if value not in table:
        raise InputError(f"{key} is {value!r}; use one of {', '.join(table)}")
    return table[value]


def finish_regnet(regnet: RegNet, freeze_at: int, last_gamma: bool = False) -> RegNet:
    """Zero-init the last SN of every residual block (``last_gamma``), then make the SN layers of
    the stem and stages frozen by ``RegNet.freeze(freeze_at)`` FrozenSwitchNorm2d (detectron2's
    freeze converts only BatchNorm)."""
    stages = [stage for stage, _ in regnet.stages_and_names]
    if last_gamma:
        zero_init_last_switchnorm_of(block for stage in stages for block in stage.children())
    freeze_switchnorm(regnet.stem, stages, freeze_at)
    return regnet


@BACKBONE_REGISTRY.register()
def build_sn_regnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> RegNet:
    """detectron2's RegNet from ``MODEL.REGNETS`` with ``MODEL.REGNETS.NORM`` from our norm
    registry; SN layers of frozen stages become FrozenSwitchNorm2d."""
    r = cfg.MODEL.REGNETS
    if input_shape.channels != 3:
        raise InputError(
            f"detectron2's RegNet takes 3 input channels; MODEL.PIXEL_MEAN has "
            f"{input_shape.channels}"
        )
    # fmt: off
    norm             = config_norm(cfg, "REGNETS")
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
    return build_fpn_on(build_sn_regnet_backbone(cfg, input_shape), cfg)
