"""The SN-aware optimizer's parameter groups."""
import torch
from torch import nn

from sn_detection.testing import CONFIGS, load_config
from sn_detection.layers import SwitchNorm2d
from sn_detection.solver import build_sn_optimizer, get_sn_optimizer_params


def _model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), SwitchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False), nn.GroupNorm(2, 4)
    )


def _decay_of(groups):
    # None: the optimizer's own weight_decay applies
    return {id(p): g.get("weight_decay") for g in groups for p in g["params"]}


def test_sn_params_get_norm_and_importance_weight_decay():
    model = _model()
    groups = get_sn_optimizer_params(
        model, base_lr=0.1, weight_decay_norm=0.0, weight_decay_importance=0.5
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
        nn.Sequential(sn), 0.1, weight_decay_norm=0.0, weight_decay_importance=0.0,
        weight_decay_bias=0.3,
    )
    assert _decay_of(groups)[id(sn.bias)] == 0.3


def test_build_from_config_skips_frozen_parameters():
    from detectron2.modeling import build_model

    cfg = load_config(
        CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml",
        "SOLVER.WEIGHT_DECAY_NORM", "0.01", "MODEL.SN.WEIGHT_DECAY_IMPORTANCE", "0.02",
    )
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
