"""ImageNet SN checkpoints in the official layout: recognition, conversion, exact loading, errors.

The official models (``sn_detection.testing.OfficialResNet``: narrow widths, random weights,
running statistics and logits) are saved as the official code saves them ('state_dict' with
'module.' keys, (1,C,1,1)/(1,C,1) norm tensors).
"""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from torch import nn

from sn_detection import add_sn_config
from sn_detection.checkpoint import (
    CheckpointError,
    SNCheckpointer,
    convert_official,
    inspect_state_dict,
    read_checkpoint,
)
from sn_detection.checkpoint.fitting import input_convention_warnings
from sn_detection.testing import (
    CONFIGS,
    REPO,
    OfficialResNet,
    OfficialSN,
    load_config,
    load_script,
    run_with_file_size_limit,
    save_official,
)
from sn_detection.utils.cli import run_tool

STEM, PLANES = 16, 16  # OfficialResNet's narrow widths: stem 16, res2 64 out / 16 bottleneck
INPUT = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
TOOL = REPO / "tools/convert_sn_imagenet_to_d2.py"
SN_2X = CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml"
WIDTHS = {
    "MODEL.RESNETS.STEM_OUT_CHANNELS": STEM,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": PLANES * 4,
    "MODEL.RESNETS.WIDTH_PER_GROUP": PLANES,
}
NARROW = [str(x) for key_value in WIDTHS.items() for x in key_value]  # KEY VALUE overrides


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """name -> (eval-mode official model, path of its checkpoint with an uninformative name)."""
    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    out = {}
    for name, version, using_bn in (
        ("v1", "v1", True),
        ("v1_nobn", "v1", False),
        ("v2", "v2", True),
    ):
        model = OfficialResNet(version, using_bn=using_bn).eval()
        with torch.no_grad():
            model.reference = model.features(INPUT)  # computed once for all tests
        path = root / f"{name}.bin"
        save_official(model, path, legacy=name == "v1_nobn")  # also the pre-1.6 format
        out[name] = (model, str(path))
    return out


def convert(*argv: str) -> int:
    """tools/convert_sn_imagenet_to_d2.py run in this process; its exit status."""
    return run_tool(load_script("tools/convert_sn_imagenet_to_d2.py").main, list(argv))


def backbone_cfg(version="v1", using_bn=True, depth=50, narrow=True, *opts):
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(str(SN_2X))
    name = "build_sn_resnet_backbone" if version == "v1" else "build_sn_resnet_v2_backbone"
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", name, "MODEL.RESNETS.DEPTH", str(depth)])
    cfg.merge_from_list(["MODEL.SN.USING_BN", str(using_bn), *(NARROW if narrow else []), *opts])
    return cfg


def build_backbone(cfg):
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))


def load(model, path):
    return SNCheckpointer(model).load(path)


def assert_same_features(backbone, official_model):
    with torch.no_grad():
        ours = backbone.eval()(INPUT)
    ref = official_model.reference
    assert set(ref) == set(ours)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------
# Recognition and conversion


def test_official_checkpoints_are_recognised_by_contents(official):
    expected = {"v1": ("v1", True), "v1_nobn": ("v1", False), "v2": ("v2", True)}
    for name, (version, using_bn) in expected.items():
        state = read_checkpoint(official[name][1])["state_dict"]  # numpy scalar in v1_nobn
        info = inspect_state_dict({k[len("module.") :]: v for k, v in state.items()})
        assert (info.version, info.depth, info.using_bn) == (version, 50, using_bn)
        assert info.blocks == (3, 4, 6, 3) and info.widths == (STEM, PLANES * 4, PLANES)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_depth_101_is_detected_from_the_keys(version):
    model = OfficialResNet(version, depth=101, stem=2, planes=1)
    info = inspect_state_dict(model.state_dict())
    assert (info.version, info.depth, info.blocks) == (version, 101, (3, 4, 23, 3))
    assert info.required_settings()["MODEL.RESNETS.DEPTH"] == 101


def test_conversion_maps_every_tensor_flattens_norms_and_drops_fc(official):
    model, path = official["v1"]
    conversion = convert_official(read_checkpoint(path), "backbone.bottom_up.", path)
    state = model.state_dict()
    assert len(conversion.mapping) == len(state) - 2
    assert [k for k, _ in conversion.dropped] == ["fc.bias", "fc.weight"]
    sn_layers = sum(isinstance(m, OfficialSN) for m in model.modules())
    assert sum(k.endswith(".mean_weight") for k in conversion.state) == sn_layers
    ours = conversion.state
    c = PLANES * 4
    assert ours["backbone.bottom_up.res2.0.shortcut.norm.running_var"].shape == (c,)
    assert ours["backbone.bottom_up.res2.0.conv3.norm.weight"].shape == (c,)
    assert ours["backbone.bottom_up.stem.conv1.norm.mean_weight"].shape == (3,)
    torch.testing.assert_close(
        ours["backbone.bottom_up.res3.0.shortcut.weight"], state["layer2.0.downsample.0.weight"]
    )
    settings = conversion.info.required_settings()
    assert settings["MODEL.RESNETS.STRIDE_IN_1X1"] is False and settings["INPUT.FORMAT"] == "RGB"
    assert settings["MODEL.PIXEL_STD"] == [58.395, 57.12, 57.375]
    report = conversion.report()
    assert "fc.weight" in report and "MODEL.SN.USING_BN: True" in report
    assert "layer1.0.sn1.running_mean [1, 16, 1] -> backbone.bottom_up.res2.0.conv1.norm" in report


# ------------------------------------------------------------------------------------------
# Exact loading: our backbone reproduces the official network


@pytest.mark.parametrize("name", ["v1", "v1_nobn", "v2"])
def test_backbone_loaded_in_memory_reproduces_official_stages(official, name):
    model, path = official[name]
    cfg = backbone_cfg(model.version, name != "v1_nobn")  # FREEZE_AT 2: frozen SN loads too
    backbone = build_backbone(cfg)
    load(backbone, path)
    assert_same_features(backbone, model)


def test_truncated_v2_backbone_loads_the_next_preactivation_norm(official):
    model, path = official["v2"]
    backbone = build_backbone(
        backbone_cfg("v2", True, 50, True, "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3']")
    )
    load(backbone, path)  # res4.* and norm_out are not built; res4.0.norm1 is
    with torch.no_grad():
        ours = backbone.eval()(INPUT)
    for name in ("res2", "res3"):
        torch.testing.assert_close(ours[name], model.reference[name], rtol=1e-4, atol=1e-4)


def test_official_file_is_recognised_whatever_its_suffix(official, tmp_path):
    model, path = official["v1_nobn"]
    renamed = tmp_path / "weights.pkl"  # detectron2 would read a .pkl with pickle
    renamed.write_bytes(open(path, "rb").read())
    backbone = build_backbone(backbone_cfg("v1", False))
    load(backbone, str(renamed))
    assert_same_features(backbone, model)


def test_converted_pkl_loads_exactly_even_with_detectron2_checkpointer(official, tmp_path):
    model, path = official["v2"]
    out = str(tmp_path / "r50v2.pkl")
    assert convert(path, out, "--prefix", "") == 0
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is False and "sn_imagenet" in data
    for checkpointer in (SNCheckpointer, DetectionCheckpointer):
        backbone = build_backbone(backbone_cfg("v2"))
        checkpointer(backbone).load(out)
        assert_same_features(backbone, model)


def test_detector_initialises_from_official_file_named_in_model_weights(official):
    model, path = official["v1"]
    cfg = load_config(SN_2X, *NARROW, "MODEL.WEIGHTS", path)
    detector = build_model(cfg)
    SNCheckpointer(detector).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert_same_features(detector.backbone.bottom_up, model)


def test_tool_runs_and_prints_mapping_and_settings(official, tmp_path):
    _, path = official["v1_nobn"]
    out = tmp_path / "converted.pth"
    tool = str(TOOL)
    run = subprocess.run(
        [sys.executable, tool, path, str(out)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "ResNet-50 v1 + SN (IN/LN, no BN branch)" in run.stdout
    assert "conv1.weight [16, 3, 7, 7] -> backbone.bottom_up.stem.conv1.weight" in run.stdout
    assert "dropped (classifier, not used for detection): fc.bias [10], fc.weight [10, 512]" in (
        run.stdout
    )
    for setting in ("MODEL.SN.USING_BN: False", "MODEL.RESNETS.STRIDE_IN_1X1: False"):
        assert setting in run.stdout
    assert torch.load(out)["sn_imagenet"]["using_bn"] is False


def test_tool_refuses_a_non_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x80\x02not a checkpoint at all" * 10)
    assert convert(str(bad), str(tmp_path / "out.pkl")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot read checkpoint") and err.count("\n") == 1
    assert "not a PyTorch/detectron2 checkpoint" in err and "UnpicklingError" in err
    assert not (tmp_path / "out.pkl").exists()


@pytest.mark.parametrize("link", ["same path", "symlink", "hard link"])
def test_tool_refuses_to_write_over_its_input(official, tmp_path, capsys, link):
    path = tmp_path / "official.pth"
    path.write_bytes(open(official["v1"][1], "rb").read())
    before = path.read_bytes()
    out = path
    if link == "symlink":
        out = tmp_path / "converted.pth"
        out.symlink_to(path)
    elif link == "hard link":
        out = tmp_path / "converted.pth"
        os.link(path, out)
    assert convert(str(path), str(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the INPUT file" in err
    assert path.read_bytes() == before


def test_a_failed_write_leaves_the_earlier_output_and_one_line(official, tmp_path):
    out = tmp_path / "converted.pth"
    out.write_bytes(b"earlier conversion")
    tool = "tools/convert_sn_imagenet_to_d2.py"
    proc = run_with_file_size_limit(tool, [official["v1_nobn"][1], str(out)], limit=1 << 16)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "File too large" in proc.stderr, proc.stderr
    assert out.read_bytes() == b"earlier conversion"
    assert os.listdir(tmp_path) == ["converted.pth"]  # no temporary file left


# ------------------------------------------------------------------------------------------
# Errors: mismatching models name the keys and the setting


def _load_error(model, path) -> str:
    with pytest.raises(CheckpointError) as e:
        load(model, path)
    return str(e.value)


def test_wrong_depth_names_depth_setting_and_keys(official):
    msg = _load_error(build_backbone(backbone_cfg("v1", depth=101)), official["v1"][1])
    assert "set MODEL.RESNETS.DEPTH to 50" in msg and "res4.6.conv1.norm.{bias,mean_weight," in msg


def test_v1_weights_into_v2_model_name_backbone_setting(official):
    msg = _load_error(build_backbone(backbone_cfg("v2")), official["v1"][1])
    assert "set MODEL.BACKBONE.NAME to build_sn_resnet_fpn_backbone" in msg
    assert "model keys not in the checkpoint: norm_out.{bias," in msg


@pytest.mark.parametrize("name,model_using_bn", [("v1", False), ("v1_nobn", True)])
def test_bn_branch_must_match_using_bn(official, name, model_using_bn):
    msg = _load_error(build_backbone(backbone_cfg("v1", model_using_bn)), official[name][1])
    assert f"set MODEL.SN.USING_BN to {not model_using_bn}" in msg


def test_shape_mismatch_names_keys_and_width_settings(official):
    msg = _load_error(build_backbone(backbone_cfg("v1", narrow=False)), official["v1"][1])
    assert "shapes differ" in msg and "res2.0.conv1.norm.bias [16] vs [64]" in msg
    assert "MODEL.RESNETS.STEM_OUT_CHANNELS 16" in msg


def test_stride_in_1x1_and_non_sn_norm_are_refused(official):
    cfg = backbone_cfg("v1", True, 50, True, "MODEL.RESNETS.STRIDE_IN_1X1", "True")
    assert "STRIDE_IN_1X1 to False" in _load_error(build_backbone(cfg), official["v1"][1])
    cfg = backbone_cfg("v1", True, 50, True, "MODEL.RESNETS.NORM", "FrozenBN")
    assert "set MODEL.RESNETS.NORM to SN" in _load_error(build_backbone(cfg), official["v1"][1])


def test_detector_input_convention_is_warned_about():
    # a different input convention is legitimate (e.g. fine-tuning), so it loads with a warning
    cfg = load_config(SN_2X, *NARROW, "INPUT.FORMAT", "BGR", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]")
    model = build_model(cfg)
    warnings = input_convention_warnings(model)
    assert any("set INPUT.FORMAT to RGB" in w for w in warnings)
    assert any("set MODEL.PIXEL_STD to" in w for w in warnings)
    assert input_convention_warnings(build_model(load_config(SN_2X, *NARROW))) == []


def _one_line_error(path) -> str:
    msg = _load_error(build_backbone(backbone_cfg("v1")), str(path))
    assert "\n" not in msg
    return msg


def test_truncated_file_gives_one_line_error(official, tmp_path):
    for name in ("v1", "v1_nobn"):  # zip and legacy formats
        data = open(official[name][1], "rb").read()
        cut = tmp_path / f"{name}.pth"
        cut.write_bytes(data[: len(data) // 2])
        assert "truncated or not a PyTorch/detectron2 checkpoint" in _one_line_error(cut)


def test_random_file_gives_one_line_error(tmp_path):
    for suffix in (".pth", ".pkl"):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
        assert str(path) in _one_line_error(path)


def test_classifier_of_another_architecture_gives_one_line_error(tmp_path):
    net = nn.Module()
    net.conv1, net.bn1 = nn.Conv2d(3, 8, 7, bias=False), nn.BatchNorm2d(8)
    net.layer1 = nn.Sequential(nn.Conv2d(8, 8, 1))
    path = tmp_path / "resnet_bn.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    assert "another architecture" in _one_line_error(path)
    state = OfficialResNet("v1", stem=2, planes=1).state_dict()  # an SN ResNet-18/34 lacks conv3
    path = tmp_path / "resnet34_sn.pth"
    torch.save(
        {"state_dict": {k: v for k, v in state.items() if "3" not in k.split(".")[-2]}}, path
    )
    assert "basic blocks" in _one_line_error(path)
    path = tmp_path / "other_detector.pth"
    torch.save({"model": {"head.weight": torch.zeros(3)}}, path)
    assert "another architecture" in _one_line_error(path)


# ------------------------------------------------------------------------------------------
# Regular detectron2 checkpoints are unchanged


def test_detectron2_checkpoints_load_and_resume_as_before(tmp_path):
    cfg = backbone_cfg("v1")
    torch.manual_seed(0)
    source = build_backbone(cfg)
    SNCheckpointer(source, save_dir=str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    for checkpointer in (SNCheckpointer, DetectionCheckpointer):
        target = build_backbone(cfg)
        checkpointer(target, save_dir=str(tmp_path)).resume_or_load(path, resume=True)
        loaded = target.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    # a partial checkpoint leaves the rest of the model as DetectionCheckpointer does
    partial = {"model": {k: v for k, v in source.state_dict().items() if k.startswith("stem.")}}
    torch.save(partial, tmp_path / "partial.pth")
    states = []
    for checkpointer in (SNCheckpointer, DetectionCheckpointer):
        torch.manual_seed(1)
        model = build_backbone(cfg)
        checkpointer(model).load(str(tmp_path / "partial.pth"))
        states.append(model.state_dict())
    assert all(torch.equal(states[1][k], v) for k, v in states[0].items())
    assert torch.equal(states[0]["stem.conv1.weight"], source.stem.conv1.weight)
