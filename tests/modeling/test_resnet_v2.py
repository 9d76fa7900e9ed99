"""The pre-activation ResNet (v2) backbones: features, freezing, OUT_FEATURES, norms, errors."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d
from sn_detection.layers.switch_norm import TENSOR_NAMES
from sn_detection.modeling.resnet_v2 import PreActBottleneckBlock, ResNetV2
from sn_detection.testing import CONFIGS, load_config
from sn_detection.utils.cli import InputError

SN_2X_V2 = CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50v2_FPN_2x_sn.yaml"
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def v2_cfg(*opts):
    """The R50v2 config with narrow widths (stem 16, res2 64 out, bottleneck 16)."""
    narrow = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    narrow += ["MODEL.RESNETS.WIDTH_PER_GROUP", "16", "MODEL.BACKBONE.FREEZE_AT", "0"]
    return load_config(SN_2X_V2, *narrow, *opts)


def build(cfg, name="build_sn_resnet_v2_backbone"):
    torch.manual_seed(0)
    return BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=3))


def raw_stage_outputs(resnet, x):
    """The un-normalised sums each stage produces (the official network's layer outputs)."""
    outs, x = {}, resnet.stem(x)
    for name, stage in zip(resnet.stage_names, resnet.stages):
        x = outs[name] = stage(x)
    return outs


def test_config_selects_v2_fpn_backbone():
    assert v2_cfg().MODEL.BACKBONE.NAME == "build_sn_resnet_v2_fpn_backbone"


def test_shapes_strides_and_official_block_layout():
    resnet = build(v2_cfg())
    assert isinstance(resnet, ResNetV2)
    shapes = resnet.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res2": (64, 4),
        "res3": (128, 8),
        "res4": (256, 16),
        "res5": (512, 32),
    }
    assert [len(s) for s in resnet.stages] == [3, 4, 6, 3]
    block = resnet.res3[0]
    assert isinstance(block, PreActBottleneckBlock)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # stride in the 3x3
    assert block.shortcut.norm is None and resnet.res3[1].shortcut is None
    assert all(c.norm is None for c in (block.conv1, block.conv2, block.conv3))
    out = resnet.eval()(X)
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (64, 16, 16),
        "res3": (128, 8, 8),
        "res4": (256, 4, 4),
        "res5": (512, 2, 2),
    }


def test_features_are_the_next_preactivation_and_sn_out():
    resnet = build(v2_cfg()).eval()
    with torch.no_grad():
        out, raw = resnet(X), raw_stage_outputs(resnet, X)
        expected = {
            "res2": F.relu(resnet.res3[0].norm1(raw["res2"])),
            "res3": F.relu(resnet.res4[0].norm1(raw["res3"])),
            "res4": F.relu(resnet.res5[0].norm1(raw["res4"])),
            "res5": F.relu(resnet.norm_out(raw["res5"])),
        }
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, msg=name)
        assert out[name].min() >= 0


def test_truncated_out_features_keep_the_next_preactivation_norm():
    resnet = build(v2_cfg("MODEL.RESNETS.OUT_FEATURES", '["res2", "res3"]')).eval()
    assert resnet.stage_names == ("res2", "res3") and not hasattr(resnet, "norm_out")
    assert {k for k in resnet.state_dict() if k.startswith("res4")} == {
        f"res4.0.norm1.{p}" for p in (*TENSOR_NAMES, "num_batches")
    }
    with torch.no_grad():
        out, raw = resnet(X), raw_stage_outputs(resnet, X)
        torch.testing.assert_close(out["res3"], F.relu(resnet.res4[0].norm1(raw["res3"])))
    assert set(out) == {"res2", "res3"}


def test_freeze_at_2_freezes_stem_and_res2_only():
    resnet = build(v2_cfg("MODEL.BACKBONE.FREEZE_AT", "2"))
    for part in (resnet.stem, resnet.res2):
        norms = [m for m in part.modules() if "Norm" in type(m).__name__]
        assert norms and all(isinstance(m, FrozenSwitchNorm2d) for m in norms)
        assert not any(p.requires_grad for p in part.parameters())
    for part in (resnet.res3, resnet.res5, resnet.norm_out):
        assert all(p.requires_grad for p in part.parameters())
        assert not any(isinstance(m, FrozenSwitchNorm2d) for m in part.modules())
    # res2's feature goes through res3.0.norm1, which stays trainable
    resnet.train()
    resnet(X)["res2"].sum().backward()
    assert resnet.res3[0].norm1.weight.grad is not None
    assert resnet.stem.conv1.weight.grad is None


def test_freeze_at_5_freezes_the_output_norm_too():
    resnet = build(v2_cfg("MODEL.BACKBONE.FREEZE_AT", "5"))
    assert isinstance(resnet.norm_out, FrozenSwitchNorm2d)
    assert not any(p.requires_grad for p in resnet.parameters())


@pytest.mark.parametrize("norm", ["GN", "BN", "SyncSN", "FrozenBN"])
def test_other_norms_build_and_run(norm):
    opts = ["MODEL.RESNETS.NORM", norm, "MODEL.BACKBONE.FREEZE_AT", "2"]
    if norm == "GN":  # 32 groups need 32 channels at least
        opts += ["MODEL.RESNETS.STEM_OUT_CHANNELS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "32"]
    resnet = build(v2_cfg(*opts))
    out = resnet.train()(X)
    assert out["res5"].shape[2:] == (2, 2) and torch.isfinite(out["res5"]).all()
    if norm == "SyncSN":
        assert isinstance(resnet.res3[0].norm1, SyncSwitchNorm2d)
    if norm == "BN":
        assert isinstance(resnet.res2[0].norm1, FrozenBatchNorm2d)  # frozen stage


def test_depth_101_has_23_blocks_in_res4():
    resnet = build(v2_cfg("MODEL.RESNETS.DEPTH", "101"))
    assert [len(s) for s in resnet.stages] == [3, 4, 23, 3]


def test_last_gamma_starts_every_block_as_identity():
    resnet = build(v2_cfg("MODEL.SN.LAST_GAMMA", "True")).eval()
    assert all(torch.all(b.norm3.weight == 0) for s in resnet.stages for b in s)
    x = torch.randn(1, 64, 8, 8)
    torch.testing.assert_close(resnet.res2[1](x), x)


def test_fpn_backbone_gets_v2_features():
    backbone = build(v2_cfg(), "build_sn_resnet_v2_fpn_backbone")
    assert isinstance(backbone.bottom_up, ResNetV2)
    assert isinstance(backbone.fpn_lateral2.norm, SwitchNorm2d)
    out = backbone.eval()(X)
    assert sorted(out) == ["p2", "p3", "p4", "p5", "p6"]


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.RESNETS.STRIDE_IN_1X1", "True"], "MODEL.RESNETS.STRIDE_IN_1X1 to False"),
        (["MODEL.RESNETS.DEPTH", "34"], "MODEL.RESNETS.DEPTH 34"),
        (["MODEL.RESNETS.NORM", ""], "set MODEL.RESNETS.NORM"),
        (["MODEL.RESNETS.RES5_DILATION", "2"], "MODEL.RESNETS.RES5_DILATION"),
    ],
)
def test_unsupported_settings_name_the_key(opts, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        build(v2_cfg(*opts))
