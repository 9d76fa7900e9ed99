"""The SN-aware optimizer's parameter groups, and the renamed weight decay of the logits."""

import pytest
import torch
from torch import nn

from sn_detection.layers import SparseSwitchNorm2d, SwitchNorm2d
from sn_detection.solver import (
    GROUP_CLIP_NORM,
    add_group_gradient_clipping,
    build_sn_optimizer,
    get_sn_optimizer_params,
)
from sn_detection.testing import CONFIGS, load_config
from sn_detection.utils.cli import InputError


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), SwitchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False), nn.GroupNorm(2, 4)
    )


def _decay_of(groups):
    # None: the optimizer's own weight_decay applies
    return {id(p): g.get("weight_decay") for g in groups for p in g["params"]}


def test_sn_params_get_norm_and_logits_weight_decay():
    model = _model()
    groups = get_sn_optimizer_params(
        model, base_lr=0.1, weight_decay_norm=0.0, weight_decay_logits=0.5
    )
    decay = _decay_of(groups)
    conv, sn, conv2, gn = model
    assert decay[id(sn.weight)] == 0.0 and decay[id(sn.bias)] == 0.0
    assert decay[id(sn.mean_weight)] == 0.5 and decay[id(sn.var_weight)] == 0.5
    assert decay[id(gn.weight)] == 0.0  # detectron2's own rule still applies
    assert decay[id(conv.weight)] is None and decay[id(conv2.weight)] is None
    assert len(decay) == len(list(model.parameters()))  # every parameter exactly once


def test_weight_decay_bias_still_wins_for_sn_bias():
    sn = _model()[1]
    groups = get_sn_optimizer_params(
        nn.Sequential(sn), 0.1, weight_decay_norm=0.0, weight_decay_bias=0.3
    )
    assert _decay_of(groups)[id(sn.bias)] == 0.3


def test_build_from_config_skips_frozen_parameters():
    from detectron2.modeling import build_model

    opts = "SOLVER.WEIGHT_DECAY_NORM 0.01 MODEL.SN.WEIGHT_DECAY_LOGITS 0.02".split()
    cfg = load_config(CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml", *opts)
    model = build_model(cfg)
    optimizer = build_sn_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay) == len(trainable)
    sn = model.backbone.bottom_up.res4[0].conv2.norm
    assert decay[id(sn.weight)] == 0.01 and decay[id(sn.mean_weight)] == 0.02
    conv = model.backbone.bottom_up.res4[0].conv2
    assert decay[id(conv.weight)] == cfg.SOLVER.WEIGHT_DECAY
    assert isinstance(optimizer, torch.optim.SGD)


def _logits_decay(cfg):
    sn = _model()[1]
    decay = _decay_of(build_sn_optimizer(cfg, nn.Sequential(sn)).param_groups)
    return decay[id(sn.mean_weight)]


def test_the_old_logits_key_in_a_yaml_file_is_used_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("MODEL:\n  SN:\n    WEIGHT_DECAY_IMPORTANCE: 0.03\n")
    cfg = load_config(path)
    with pytest.warns(FutureWarning, match="set MODEL.SN.WEIGHT_DECAY_LOGITS instead"):
        assert _logits_decay(cfg) == 0.03


def test_the_old_logits_key_on_the_command_line_is_used_with_a_warning():
    cfg = load_config(CONFIGS / "Base-SN-RCNN-FPN.yaml", "MODEL.SN.WEIGHT_DECAY_IMPORTANCE", "0.04")
    with pytest.warns(FutureWarning, match="MODEL.SN.WEIGHT_DECAY_IMPORTANCE is deprecated"):
        assert _logits_decay(cfg) == 0.04


def test_old_and_new_logits_keys_with_different_values_are_refused():
    opts = "MODEL.SN.WEIGHT_DECAY_IMPORTANCE 0.04 MODEL.SN.WEIGHT_DECAY_LOGITS 0.05".split()
    cfg = load_config(CONFIGS / "Base-SN-RCNN-FPN.yaml", *opts)
    with pytest.raises(InputError, match="remove MODEL.SN.WEIGHT_DECAY_IMPORTANCE"):
        _logits_decay(cfg)


def test_the_old_logits_argument_is_used_with_a_warning():
    sn = _model()[1]
    with pytest.warns(FutureWarning, match="set weight_decay_logits instead"):
        groups = get_sn_optimizer_params(
            nn.Sequential(sn), 0.1, weight_decay_norm=0.0, weight_decay_importance=0.6
        )
    assert _decay_of(groups)[id(sn.var_weight)] == 0.6


def _ssn_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), SparseSwitchNorm2d(4), SwitchNorm2d(4))


def test_ssn_logits_get_their_own_lr_no_weight_decay_and_a_clip_norm():
    model = _ssn_model()
    groups = get_sn_optimizer_params(
        model,
        base_lr=0.1,
        weight_decay_norm=0.0,
        weight_decay_logits=0.5,
        ssn_logits_lr_factor=0.2,
        ssn_logits_clip_norm=3.0,
    )
    ssn, sn = model[1], model[2]
    (group,) = [g for g in groups if any(p is ssn.mean_weight for p in g["params"])]
    assert {id(p) for p in group["params"]} == {id(ssn.mean_weight), id(ssn.var_weight)}
    assert group["lr"] == pytest.approx(0.02) and group["weight_decay"] == 0.0
    assert group[GROUP_CLIP_NORM] == 3.0
    assert _decay_of(groups)[id(sn.mean_weight)] == 0.5  # plain SN logits unchanged
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_group_clipping_clips_only_the_flagged_group():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([{"params": [a], GROUP_CLIP_NORM: 1.0}, {"params": [b]}], lr=1.0)
    add_group_gradient_clipping(optimizer)
    a.grad, b.grad = torch.full((3,), 4.0), torch.full((3,), 4.0)
    optimizer.step()
    torch.testing.assert_close(a.detach().norm(), torch.tensor(1.0))
    torch.testing.assert_close(b.detach(), torch.full((3,), -4.0))


def test_build_from_config_uses_the_ssn_keys():
    cfg = load_config(
        CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml",
        *"MODEL.SN.SSN_LOGITS_LR_FACTOR 0.5 MODEL.SN.SSN_LOGITS_CLIP_NORM 0.0".split(),
    )
    ssn = _ssn_model()[1]
    optimizer = build_sn_optimizer(cfg, nn.Sequential(ssn))
    (group,) = [g for g in optimizer.param_groups if any(p is ssn.var_weight for p in g["params"])]
    assert group["lr"] == pytest.approx(0.5 * cfg.SOLVER.BASE_LR) and group[GROUP_CLIP_NORM] == 0


@pytest.mark.parametrize(
    "key,value", [("SSN_LOGITS_LR_FACTOR", "0.0"), ("SSN_LOGITS_CLIP_NORM", "-1.0")]
)
def test_bad_ssn_optimizer_keys_name_the_key(key, value):
    path = CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml"
    cfg = load_config(path, f"MODEL.SN.{key}", value)
    with pytest.raises(InputError, match=f"MODEL.SN.{key}"):
        build_sn_optimizer(cfg, _ssn_model())


def test_lazyconfig_optimizer_gives_the_ssn_logits_group_and_clips_it():
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(CONFIGS / "LazyConfig/common/optim.py"))
    model = _ssn_model()
    cfg.SGD.params.model = model
    optimizer = instantiate(cfg.SGD)
    (group,) = [g for g in optimizer.param_groups if g.get(GROUP_CLIP_NORM)]
    assert group[GROUP_CLIP_NORM] == 1.0 and group["lr"] == pytest.approx(0.1 * cfg.SGD.lr)
    model[1].mean_weight.grad = torch.full((3,), 10.0)
    model[1].var_weight.grad = torch.zeros(3)
    before = model[1].mean_weight.detach().clone()
    optimizer.step()
    step = (before - model[1].mean_weight.detach()).norm() / group["lr"]
    torch.testing.assert_close(step, torch.tensor(1.0), rtol=1e-4, atol=0)  # the clipped norm
