"""ImageNet Sparse SN (SSN) checkpoints in the official layout: conversion, exact loading into SSN
and SN backbones, the converter tool, and the SSN checkpoints that are refused.

The official model (``sn_detection.testing.OfficialResNet(sparse=True)``: the ``resnet_v1_ssn``
module names, ``SSN2d`` state with radius 0.5 and three quarters of the weight vectors fixed)
is saved as the official SSN training script saves it (bare keys, (1,C,1,1)/(1,C,1) norm tensors,
(1,) SSN buffers).
"""

import copy
import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model

from sn_detection import add_sn_config
from sn_detection.checkpoint import (
    CheckpointError,
    SNCheckpointer,
    convert_official,
    inspect_state_dict,
    read_checkpoint,
)
from sn_detection.layers import SparseSwitchNorm2d, named_switch_norms
from sn_detection.layers.switch_norm import BRANCHES
from sn_detection.testing import (
    CONFIGS,
    OfficialResNet,
    OfficialSSN,
    load_config,
    load_script,
    save_official,
)
from sn_detection.utils.cli import run_tool

INPUT = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
SN_2X = CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml"
# OfficialResNet's narrow widths: stem 16, res2 64 out / 16 bottleneck
NARROW = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
]  # fmt: skip
RADIUS = 0.5


def reference_features(model):
    """The official network's stage outputs in float64 (the loaded backbone is compared in
    float64 too: one-hot IN variances on 2x2 maps amplify float32 rounding)."""
    with torch.no_grad():
        return copy.deepcopy(model).double().eval().features(INPUT.double())


@pytest.fixture(scope="module")
def ssn(tmp_path_factory):
    """(official SSN ResNet-50 v1, its float64 features, path of its checkpoint)."""
    torch.manual_seed(0)
    model = OfficialResNet("v1", sparse=True, radius=RADIUS).eval()
    path = tmp_path_factory.mktemp("ssn") / "model-best.pth"
    save_official(model, path)
    return model, reference_features(model), str(path)


@pytest.fixture(scope="module")
def sn(tmp_path_factory):
    """(official SN ResNet-50 v1, its float64 features, path of its checkpoint)."""
    torch.manual_seed(1)
    model = OfficialResNet("v1").eval()
    path = tmp_path_factory.mktemp("sn") / "resnet50v1_sn.pth"
    save_official(model, path)
    return model, reference_features(model), str(path)


def backbone(norm, *opts):
    """Our ResNet-50 v1 backbone (FREEZE_AT 2: stem and res2 frozen) with ``norm``."""
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(str(SN_2X))
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "build_sn_resnet_backbone", *NARROW])
    cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, *opts])
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))


class RecordingCheckpointer(SNCheckpointer):
    """SNCheckpointer that keeps what loading the model returned (missing, unexpected keys)."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def assert_same_features(ours, want):
    with torch.no_grad():
        got = ours.double().eval()(INPUT.double())
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4, msg=name)


def official_layers(model, path):
    """{our layer name: the OfficialSSN it comes from}, by the conversion's mapping."""
    modules = dict(model.named_modules())
    rows = convert_official(read_checkpoint(path)).mapping
    return {
        dst[: -len(".mean_weight")]: modules[src[: -len(".mean_weight")]]
        for src, dst, _, _ in rows
        if dst.endswith(".mean_weight")
    }


def choice(weights):
    """The branch a weight vector uses alone, or None."""
    top, index = weights.max(0)
    return BRANCHES[int(index)] if top >= 1 - 1e-6 else None


# ------------------------------------------------------------------------------------------
# Recognition and conversion


def test_ssn_checkpoint_is_recognised_and_needs_norm_ssn(ssn):
    state = read_checkpoint(ssn[2])["state_dict"]
    info = inspect_state_dict(state)
    assert (info.version, info.depth, info.using_bn, info.sparse) == ("v1", 50, True, True)
    assert info.name == "ResNet-50 v1 + SSN (IN/LN/BN)"
    assert info.required_settings()["MODEL.RESNETS.NORM"] == "SSN"


def test_conversion_gives_every_tensor_of_the_ssn_backbone_its_name_shape_and_dtype(ssn):
    model, _, path = ssn
    conversion = convert_official(read_checkpoint(path))
    assert len(conversion.mapping) == len(model.state_dict()) - 2  # all but fc.weight, fc.bias
    ours = backbone("SSN", "MODEL.BACKBONE.FREEZE_AT", "0").state_dict()
    want = {k: (v.shape, v.dtype) for k, v in ours.items() if not k.endswith(".num_batches")}
    assert {k: (v.shape, v.dtype) for k, v in conversion.state.items()} == want


def test_report_says_how_many_layers_are_fixed_and_what_each_chose(ssn):
    model, _, path = ssn
    layers = [m for m in model.modules() if isinstance(m, OfficialSSN)]
    report = convert_official(read_checkpoint(path), source=path).report()
    assert f"{len(layers)} SSN layers, radius {RADIUS:g}; mean: " in report
    for row, (stat, flag) in enumerate((("mean", "mean_fixed"), ("var", "var_fixed"))):
        chosen = [choice(m.mix_weights()[row]) for m in layers]
        fixed = sum(int(getattr(m, flag)) for m in layers)
        counts = ", ".join(f"{b} {chosen.count(b)}" for b in BRANCHES)
        assert f"{stat}: {fixed} fixed, chose {counts}, {chosen.count(None)} still mixing" in report


# ------------------------------------------------------------------------------------------
# Loading into detectron2 backbones


def test_ssn_backbone_loads_every_tensor_and_reproduces_the_official_network(ssn):
    model, features, path = ssn
    ours = backbone("SSN")
    checkpointer = RecordingCheckpointer(ours)
    checkpointer.load(path)
    assert checkpointer.unloaded_keys() == []
    assert checkpointer.incompatible.unexpected_keys == []
    assert_same_features(ours, features)


def test_ssn_layers_hold_the_official_weights_one_hot_where_fixed(ssn):
    model, _, path = ssn
    ours = backbone("SSN")
    SNCheckpointer(ours).load(path)
    official = official_layers(model, path)
    sparse = 0
    for name, layer in named_switch_norms(ours):  # frozen stem and res2 layers included
        want = official[name]
        for stat, weights in zip(("mean", "var"), want.mix_weights()):
            got = layer.shares()[stat]
            assert [got[b] for b in BRANCHES] == pytest.approx(weights.tolist(), abs=1e-6)
        for stat, fixed in (("mean", want.mean_fixed), ("var", want.var_fixed)):
            assert not int(fixed) or max(layer.shares()[stat].values()) == 1.0, name
        if isinstance(layer, SparseSwitchNorm2d):
            sparse += 1
            assert int(layer.mean_fixed) == int(want.mean_fixed), name
            assert int(layer.var_fixed) == int(want.var_fixed), name
            assert float(layer.radius) == RADIUS
    assert sparse == 42  # res3..res5: 42 of the 53 layers


def test_ssn_weights_into_an_sn_model_keep_the_choices_with_one_warning(ssn, caplog, recwarn):
    model, features, path = ssn
    ours = backbone("SN")
    checkpointer = RecordingCheckpointer(ours)
    with caplog.at_level(logging.WARNING):
        checkpointer.load(path)
    assert checkpointer.unloaded_keys() == []
    assert checkpointer.incompatible.unexpected_keys == []  # the SSN buffers were absorbed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "MODEL.RESNETS.NORM SSN" in warnings[0], warnings
    assert "42 of them as SN" in warnings[0] and "softmax logits" in warnings[0]
    assert not [w for w in recwarn if "SSN" in str(w.message)]
    official = official_layers(model, path)
    for name, layer in named_switch_norms(ours):
        assert type(layer) is not SparseSwitchNorm2d
        got = layer.shares()["var"]
        want = official[name].mix_weights()[1]
        assert [got[b] for b in BRANCHES] == pytest.approx(want.tolist(), abs=1e-6)
    assert_same_features(ours, features)


def test_sn_weights_into_an_ssn_model_start_unfixed_with_one_warning(sn, caplog, recwarn):
    model, features, path = sn
    ours = backbone("SSN")
    with caplog.at_level(logging.WARNING):
        checkpointer = RecordingCheckpointer(ours)
        checkpointer.load(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "start unfixed from the SN logits" in warnings[0], warnings
    assert "MODEL.RESNETS.NORM SN" in warnings[0]
    assert not [w for w in recwarn if "SSN" in str(w.message)]
    assert checkpointer.unloaded_keys() == []
    layers = dict(named_switch_norms(ours))
    assert int(layers["res3.0.conv1.norm"].mean_fixed) == 0
    torch.testing.assert_close(
        layers["res3.0.conv1.norm"].mean_weight.detach(), model.layer2[0].sn1.mean_weight.detach()
    )


def test_detectron2_checkpoint_of_an_ssn_model_into_an_sn_model_warns_once(
    ssn, tmp_path, caplog, recwarn
):
    source = backbone("SSN")
    SNCheckpointer(source).load(ssn[2])
    SNCheckpointer(source, save_dir=str(tmp_path)).save("model_final")
    ours = backbone("SN")
    with caplog.at_level(logging.WARNING):
        SNCheckpointer(ours).load(str(tmp_path / "model_final.pth"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "MODEL.RESNETS.NORM SSN" in warnings[0], warnings
    assert not [w for w in recwarn if "SSN" in str(w.message)]
    for stat, shares in source.res5[0].conv1.norm.shares().items():
        assert ours.res5[0].conv1.norm.shares()[stat] == pytest.approx(shares, abs=1e-6)


def test_detector_initialises_from_the_official_ssn_file_named_in_model_weights(ssn):
    model, features, path = ssn
    cfg = load_config(SN_2X, *NARROW, "MODEL.RESNETS.NORM", "SSN", "MODEL.WEIGHTS", path)
    detector = build_model(cfg)
    SNCheckpointer(detector).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert_same_features(detector.backbone.bottom_up, features)


def test_converter_tool_writes_weights_that_detectron2_loads_into_an_ssn_backbone(
    ssn, tmp_path, capsys
):
    model, features, path = ssn
    out = str(tmp_path / "R-50-SSN.pkl")
    tool = load_script("tools/convert_sn_imagenet_to_d2.py").main
    assert run_tool(tool, [path, out, "--prefix", ""]) == 0
    stdout = capsys.readouterr().out
    assert "ResNet-50 v1 + SSN (IN/LN/BN)" in stdout and "MODEL.RESNETS.NORM: SSN" in stdout
    assert "layer1.0.sn1.mean_fixed [1] -> res2.0.conv1.norm.mean_fixed" in stdout
    assert "53 SSN layers, radius 0.5" in stdout
    ours = backbone("SSN")
    DetectionCheckpointer(ours).load(out)  # exact names, no heuristics
    assert int(ours.res4[2].conv2.norm.var_fixed) == int(model.layer3[2].sn2.var_fixed)
    assert_same_features(ours, features)


# ------------------------------------------------------------------------------------------
# Refused SSN checkpoints: one line naming the keys


def save_modified(ssn, tmp_path, **changes):
    """The SSN checkpoint with ``changes`` (key with "__" for "." -> tensor, or None: removed)."""
    ckpt = read_checkpoint(ssn[2])
    state = ckpt["state_dict"]
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del state[key]
        else:
            state[key] = value
    path = tmp_path / "changed.pth"
    torch.save(ckpt, path)
    return str(path)


@pytest.mark.parametrize("loader", ["SNCheckpointer", "tool"])
def test_partly_ssn_checkpoint_is_refused_in_one_line_naming_the_keys(
    ssn, tmp_path, capsys, loader
):
    path = save_modified(ssn, tmp_path, layer2__1__sn3__radius=None, layer2__1__sn3__var_fixed=None)
    if loader == "tool":
        tool = load_script("tools/convert_sn_imagenet_to_d2.py").main
        assert run_tool(tool, [path, str(tmp_path / "out.pkl")]) == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and not (tmp_path / "out.pkl").exists()
    else:
        with pytest.raises(CheckpointError) as e:
            SNCheckpointer(backbone("SSN")).load(path)
        message = str(e.value)
        assert "\n" not in message
    assert "partly Sparse SN: 52 of 53 SN layers" in message
    assert "layer2.1.sn3.{radius,var_fixed}" in message and path in message


@pytest.mark.parametrize(
    "changes,expected",
    [
        ({"layer1__0__sn1__mean_fixed": torch.tensor([2])}, "layer1.0.sn1.mean_fixed is 2, not 0"),
        ({"layer3__2__sn2__radius": torch.tensor([1.5])}, "layer3.2.sn2.radius is 1.5, not in"),
        ({"sn1__radius": torch.zeros(2)}, "sn1.radius has shape [2], not [1]"),
        (
            {
                "layer4__0__downsample__1__var_fixed": torch.tensor([1]),
                "layer4__0__downsample__1__var_weight": torch.tensor([1.0, 1.0, 0.0]),
            },
            "layer4.0.downsample.1.var_fixed is 1 but layer4.0.downsample.1.var_weight [1.0, "
            "1.0, 0.0] has no single largest logit",
        ),
    ],
    ids=["flag 2", "radius 1.5", "two radii", "fixed tie"],
)
def test_inconsistent_ssn_buffers_are_refused_in_one_line_naming_the_key(
    ssn, tmp_path, changes, expected
):
    path = save_modified(ssn, tmp_path, **changes)
    with pytest.raises(CheckpointError) as e:
        SNCheckpointer(backbone("SSN")).load(path)
    message = str(e.value)
    assert "\n" not in message and path in message
    assert "radius and fixed flags are inconsistent" in message and expected in message


def test_sn_model_is_still_told_its_norm_for_ssn_weights_it_cannot_hold(ssn):
    with pytest.raises(CheckpointError) as e:
        SNCheckpointer(backbone("FrozenBN")).load(ssn[2])
    assert "set MODEL.RESNETS.NORM to SSN (or SyncSSN)" in str(e.value)
