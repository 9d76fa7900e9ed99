"""Pre-activation ResNet (ResNet v2) backbones in the layout of the official ResNetV2 + SN models.

Each returned feature is the activation the official network computes from that stage's output:
``resK`` is the pre-activation ReLU(res{K+1}.0.norm1(x)) of the next stage's first block, the
last built stage's is ReLU(norm_out(x)); each norm is frozen with the stage that owns it.
docs/DESIGN.md gives the block layout and why.
"""

from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.resnet import BasicStem
from torch import Tensor, nn

from ..layers import FrozenSwitchNorm2d, get_norm
from ..layers.norm import NormArg
from ..utils.cli import InputError
from .backbone import build_fpn_on, freeze_switchnorm, zero_init_last_switchnorm
from .norms import config_norm

__all__ = [
    "PreActBottleneckBlock",
    "ResNetV2",
    "build_sn_resnet_v2_backbone",
    "build_sn_resnet_v2_fpn_backbone",
]

BLOCKS_PER_STAGE = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class PreActBottleneckBlock(CNNBlockBase):
    """Pre-activation bottleneck block (ResNet v2); the stride is in the 3x3 conv.

    ``norm1`` normalises the block input; ``preact`` = ReLU(norm1(x)) feeds ``conv1`` and, in a
    block that changes shape, the projection ``shortcut`` (1x1 conv, no norm). The output is
    ``conv3(...) + shortcut``, not activated.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        norm: NormArg = "SN",
    ):
        super().__init__(in_channels, out_channels, stride)
        if not norm:
            raise ValueError("PreActBottleneckBlock needs a norm")
        self.norm1 = get_norm(norm, in_channels)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=False)
        self.norm2 = get_norm(norm, bottleneck_channels)
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
        )
        self.norm3 = get_norm(norm, bottleneck_channels)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, kernel_size=1, stride=stride, bias=False
            )
        else:
            self.shortcut = None
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def preactivate(self, x: Tensor) -> Tensor:
        """ReLU(norm1(x)): the block's pre-activation."""
        return F.relu(self.norm1(x))

    def forward_preactivated(self, x: Tensor, preact: Tensor) -> Tensor:
        """The block output given its input ``x`` and ``preact = self.preactivate(x)``."""
        out = self.conv1(preact)
        out = self.conv2(F.relu_(self.norm2(out)))
        out = self.conv3(F.relu_(self.norm3(out)))
        shortcut = x if self.shortcut is None else self.shortcut(preact)
        return out + shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preactivated(x, self.preactivate(x))


class _NextPreActivation(nn.Module):
    """The norm of the first block of a stage that is not built (OUT_FEATURES stops earlier):
    its parameters keep the name ``res{K+1}.0.norm1`` so the ImageNet weights load by name."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm1 = norm


class ResNetV2(ResNet):
    """detectron2's :class:`ResNet` with pre-activation blocks and normalised features.

    See the module docstring for which tensor each returned feature is.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: List[List[PreActBottleneckBlock]],
        *,
        norm: NormArg,
        out_features: List[str],
        freeze_at: int = 0,
    ):
        """
        Args:
            stem, stages, out_features, freeze_at: as :class:`ResNet` (stages beyond the last
                feature of ``out_features`` are dropped).
            norm: the norm (name or callable) of the output normalisation.
        """
        super().__init__(stem, stages, num_classes=None, out_features=out_features, freeze_at=0)
        if not norm:
            raise ValueError("ResNetV2 needs a norm for its output normalisation")
        if not self.stages:
            raise InputError("ResNet v2 needs a res* stage in MODEL.RESNETS.OUT_FEATURES")
        channels = self._out_feature_channels[self.stage_names[-1]]
        last = int(self.stage_names[-1][3:])
        if last == 5:
            self.norm_out = get_norm(norm, channels)
            self._tail_name = "norm_out"
        else:
            self._tail_name = f"res{last + 1}"
            self.add_module(
                self._tail_name, nn.Sequential(_NextPreActivation(get_norm(norm, channels)))
            )
        self.freeze(freeze_at)

    def _tail_norm(self) -> nn.Module:
        tail = getattr(self, self._tail_name)
        return tail if self._tail_name == "norm_out" else tail[0].norm1

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        assert x.dim() == 4, f"ResNetV2 takes an input of shape (N, C, H, W). Got {x.shape}!"
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        previous: Optional[str] = None
        for name, stage in zip(self.stage_names, self.stages):
            first = stage[0]
            preact = first.preactivate(x)
            if previous in self._out_features:
                outputs[previous] = preact
            x = first.forward_preactivated(x, preact)
            for block in stage[1:]:
                x = block(x)
            previous = name
        if previous in self._out_features:
            outputs[previous] = F.relu(self._tail_norm()(x))
        return outputs

    def freeze(self, freeze_at: int = 0) -> "ResNetV2":
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages, as
        :meth:`ResNet.freeze`; their SN layers become FrozenSwitchNorm2d, BN FrozenBatchNorm2d.
        The output normalisation is frozen with the last built stage."""
        super().freeze(freeze_at)
        freeze_switchnorm(self.stem, self.stages, freeze_at)
        if hasattr(self, "_tail_name") and freeze_at >= len(self.stages) + 1:
            tail = getattr(self, self._tail_name)
            for p in tail.parameters():
                p.requires_grad = False
            tail = FrozenBatchNorm2d.convert_frozen_batchnorm(tail)
            setattr(self, self._tail_name, FrozenSwitchNorm2d.convert_frozen_switchnorm(tail))
        return self


@BACKBONE_REGISTRY.register()
def build_sn_resnet_v2_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNetV2:
    """Pre-activation ResNet-50/101/152 (the official ResNet v2 + SN layout) with
    ``MODEL.RESNETS.NORM`` from our norm registry ("SN", "SyncSN" or any detectron2 norm)."""
    # fmt: off
    norm                = config_norm(cfg, "RESNETS")
    freeze_at           = cfg.MODEL.BACKBONE.FREEZE_AT
    out_features        = cfg.MODEL.RESNETS.OUT_FEATURES
    depth               = cfg.MODEL.RESNETS.DEPTH
    num_groups          = cfg.MODEL.RESNETS.NUM_GROUPS
    width_per_group     = cfg.MODEL.RESNETS.WIDTH_PER_GROUP
    in_channels         = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    out_channels        = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    # fmt: on
    if not norm:
        raise InputError('ResNet v2 needs a norm: set MODEL.RESNETS.NORM (e.g. "SN")')
    if depth not in BLOCKS_PER_STAGE:
        raise InputError(
            f"MODEL.RESNETS.DEPTH {depth} is not available for ResNet v2; use one of "
            f"{sorted(BLOCKS_PER_STAGE)}"
        )
    if num_groups != 1:
        raise InputError("ResNet v2 has no grouped convs: set MODEL.RESNETS.NUM_GROUPS to 1")
    if cfg.MODEL.RESNETS.STRIDE_IN_1X1:
        raise InputError(
            "ResNet v2 strides in the 3x3 conv (as the official models): set "
            "MODEL.RESNETS.STRIDE_IN_1X1 to False"
        )
    if cfg.MODEL.RESNETS.RES5_DILATION != 1:
        raise InputError("ResNet v2 supports no dilation: set MODEL.RESNETS.RES5_DILATION to 1")
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        raise InputError(
            "ResNet v2 has no deformable convs: set MODEL.RESNETS.DEFORM_ON_PER_STAGE all False"
        )

    stem = BasicStem(in_channels=input_shape.channels, out_channels=in_channels, norm=norm)
    bottleneck_channels = width_per_group
    stages = []
    for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        stages.append(
            ResNet.make_stage(
                PreActBottleneckBlock,
                num_blocks,
                stride_per_block=[1 if idx == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                bottleneck_channels=bottleneck_channels,
                norm=norm,
            )
        )
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    resnet = ResNetV2(stem, stages, norm=norm, out_features=out_features, freeze_at=0)
    if cfg.MODEL.SN.LAST_GAMMA:
        zero_init_last_switchnorm(resnet)
    return resnet.freeze(freeze_at)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_v2_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """FPN (``MODEL.FPN.NORM`` from our norm registry) on :func:`build_sn_resnet_v2_backbone`;
    it receives the normalised, activated stage features described in this module."""
    return build_fpn_on(build_sn_resnet_v2_backbone(cfg, input_shape), cfg)
