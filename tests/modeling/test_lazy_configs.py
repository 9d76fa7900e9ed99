"""The LazyConfig route builds exactly what the YAML route builds (module types, frozen layers, SN
settings, every plain setting of every module, optimizer groups); saved to YAML and loaded back it
builds the same model; wrong norms are named before anything is built."""

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig, OmegaConf

from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d
from sn_detection.modeling import CycleSwitchNormList, check_lazy_norms
from sn_detection.solver import build_sn_optimizer
from sn_detection.testing import CONFIGS, load_config
from sn_detection.utils.cli import InputError

LAZY = CONFIGS / "LazyConfig"
SMOKE = LAZY / "quick_schedules/mask_rcnn_sn_smoke.py"
# LazyConfig -> the YAML config it mirrors
TWINS = {
    SMOKE: CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml",
    LAZY / "mask_rcnn_R_50_FPN_2x_sn.py": (
        CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml"
    ),
    LAZY / "mask_rcnn_R_50_FPN_2x_syncsn.py": (
        CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_syncsn.yaml"
    ),
}
# detectron2's two routes spell the box loss weights differently ({"loss_box_reg": 1.0} from
# YAML, 1.0 for every loss from LazyConfig), with the same meaning: missing keys weigh 1.0
SPELLED_DIFFERENTLY = {"loss_weight"}


def _plain(value):
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return type(value)  # an object: its type


def _description(model):
    """Every module's name, type and public plain settings (SN: eps, momentum, using_bn, ...),
    and every parameter's shape and whether it trains."""
    modules = {
        name: (
            type(m),
            {
                k: _plain(v)
                for k, v in vars(m).items()
                if not k.startswith("_")
                and k != "training"
                and k not in SPELLED_DIFFERENTLY
                and not isinstance(v, (torch.nn.Module, torch.Tensor))
            },
        )
        for name, m in model.named_modules()
    }
    params = {n: (tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in model.named_buffers()}
    return modules, params, buffers


def _groups(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {
        names[id(p)]: {k: v for k, v in g.items() if k != "params"}
        for g in optimizer.param_groups
        for p in g["params"]
    }
    return groups, optimizer.defaults, type(optimizer)


def _lazy_model_and_optimizer(cfg):
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    return model, instantiate(cfg.optimizer)


@pytest.mark.parametrize("lazy", list(TWINS), ids=lambda p: p.stem)
def test_lazy_config_builds_what_its_yaml_twin_builds(lazy):
    model, optimizer = _lazy_model_and_optimizer(LazyConfig.load(str(lazy)))
    cfg = load_config(TWINS[lazy])
    expected = build_model(cfg)
    assert _description(model) == _description(expected)
    assert str(model) == str(expected)
    for name in ("pixel_mean", "pixel_std"):
        assert torch.equal(getattr(model, name), getattr(expected, name))
    assert model.input_format == cfg.INPUT.FORMAT
    assert _groups(optimizer, model) == _groups(build_sn_optimizer(cfg, expected), expected)
    # what the comparison covers: SN everywhere, frozen stages frozen
    types = {type(m) for m in model.modules()}
    sn = SyncSwitchNorm2d if "syncsn" in lazy.stem else SwitchNorm2d
    assert sn in types
    if cfg.MODEL.BACKBONE.FREEZE_AT >= 2:
        assert {type(m) for m in model.backbone.bottom_up.res2.modules()} >= {FrozenSwitchNorm2d}
        assert sn not in {type(m) for m in model.backbone.bottom_up.res2.modules()}


def test_saved_lazy_config_loads_back_and_builds_the_same_sn_layers(tmp_path):
    cfg = LazyConfig.load(str(SMOKE))
    cfg.sn.using_bn = False  # a non-default SN option must survive the round trip
    cfg.model.roi_heads.box_head.conv_norm = "GN"
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    saved = (tmp_path / "config.yaml").read_text()
    assert "sn_options: ${sn}" in saved and "norm: SN" in saved  # plain values, not objects
    assert not (tmp_path / "config.yaml.pkl").exists()  # LazyConfig.save's fallback for objects

    model = instantiate(LazyConfig.load(str(tmp_path / "config.yaml")).model)
    assert _description(model) == _description(instantiate(cfg.model))
    norms = [m for m in model.modules() if isinstance(m, SwitchNorm2d)]
    assert norms and all(not m.using_bn and m.momentum == 0.01 for m in norms)
    assert not any(isinstance(m, SwitchNorm2d) for m in model.roi_heads.box_head.modules())


def test_an_unknown_norm_name_lists_the_valid_names():
    cfg = LazyConfig.load(str(SMOKE))
    cfg.model.backbone.norm = "SwitchNorm"
    message = r"model\.backbone\.norm is 'SwitchNorm', which is not a norm\. Valid names: SN, "
    with pytest.raises(InputError, match=message):
        check_lazy_norms(cfg.model)
    # also when built without the check, naming the constructor's argument
    message = r"sn_fpn's norm is 'SwitchNorm', which is not a norm\. Valid names: SN"
    with pytest.raises(InputError, match=message):
        instantiate(cfg.model)


def test_detectron2_constructors_given_sn_name_ours():
    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    model.backbone.bottom_up.stem.norm = "SN"
    model.backbone.bottom_up.stages.norm = "SyncSN"
    model.backbone.bottom_up.freeze_at = 2
    model.roi_heads.box_head.conv_norm = "SN"
    with pytest.raises(InputError) as error:
        check_lazy_norms(model)
    message = str(error.value)
    for expected in (
        "model.backbone.bottom_up.stem._target_ to sn_detection.modeling.sn_basic_stem",
        "model.backbone.bottom_up.stages._target_ to sn_detection.modeling.sn_resnet_stages",
        "model.roi_heads.box_head._target_ to sn_detection.modeling.SNFastRCNNConvFCHead",
        "model.backbone.bottom_up._target_ to sn_detection.modeling.sn_resnet",
    ):
        assert expected in message
    check_lazy_norms(LazyConfig.load(str(SMOKE)).model)  # the shipped configs pass


# detectron2's LazyConfig models: the part to give "SN", its norm argument, our constructor
PARTS = [
    ("common/models/retinanet.py", "head", "norm", "sn_retinanet_head"),
    ("common/models/fcos.py", "head", "norm", "sn_fcos_head"),
    ("common/models/mask_rcnn_c4.py", "roi_heads.res5", "norm", "sn_resnet_stage"),
    ("common/models/panoptic_fpn.py", "sem_seg_head", "norm", "SNSemSegFPNHead"),
    (
        "COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py",
        "backbone.bottom_up",
        "norm",
        "sn_regnet",
    ),
]


@pytest.mark.parametrize("config, part, arg, ours", PARTS, ids=[p[3] for p in PARTS])
def test_every_detectron2_lazy_part_with_a_norm_has_an_sn_constructor(config, part, arg, ours):
    import sn_detection.modeling

    model = model_zoo.get_config(config).model
    node = OmegaConf.select(model, part)
    node[arg] = "SN"
    expected = rf"set model\.{part}\._target_ to sn_detection\.modeling\.{ours}"
    with pytest.raises(ValueError, match=expected):
        check_lazy_norms(model)
    node._target_ = getattr(sn_detection.modeling, ours)
    node.sn_options = {"eps": 1e-3}
    check_lazy_norms(model)
    built = instantiate(node)
    modules = torch.nn.Sequential(*built).modules() if isinstance(built, list) else built.modules()
    norms = [m for m in modules if isinstance(m, (SwitchNorm2d, FrozenSwitchNorm2d))]
    assert norms and all(m.eps == 1e-3 for m in norms)
    if ours in ("sn_retinanet_head", "sn_fcos_head"):  # per-level statistics, as from YAML
        assert any(isinstance(m, CycleSwitchNormList) for m in built.modules())
    if ours == "sn_regnet":  # freeze_at 2: stem and s1 frozen, as from YAML
        assert {type(m) for m in built.stem.modules()} >= {FrozenSwitchNorm2d}
        assert {type(m) for m in built.s1.modules()} >= {FrozenSwitchNorm2d}
        assert SwitchNorm2d in {type(m) for m in built.s2.modules()}
