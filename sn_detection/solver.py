"""An optimizer builder that knows SN parameters (detectron2's knows only built-in norm types)."""
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from .layers import SwitchNorm2d

IMPORTANCE_LOGITS = ("mean_weight", "var_weight")


def get_sn_optimizer_params(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay_norm: float,
    weight_decay_importance: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias=None,
) -> List[Dict[str, Any]]:
    """detectron2's parameter groups, with SN parameters treated as norm parameters.

    SN ``weight`` and ``bias`` get ``weight_decay_norm`` (as BatchNorm/GroupNorm ones do in
    detectron2; a bias still takes ``weight_decay_bias`` when that is set), and the importance
    logits ``mean_weight``/``var_weight`` get ``weight_decay_importance``.
    """
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
        overrides={name: {"weight_decay": weight_decay_importance} for name in IMPORTANCE_LOGITS},
    )
    # later groups override earlier ones for the same parameter (reduce_param_groups); the
    # default groups hold only trainable parameters already
    for module in model.modules():
        if not isinstance(module, SwitchNorm2d):
            continue
        norm_params = [module.weight] + ([module.bias] if weight_decay_bias is None else [])
        for p in norm_params:
            if p.requires_grad:
                groups.append({"params": [p], "weight_decay": weight_decay_norm})
    return reduce_param_groups(groups)


def build_sn_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's SGD set-up (``SOLVER.*``), with SN-aware parameter groups."""
    params = get_sn_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_importance=cfg.MODEL.SN.WEIGHT_DECAY_IMPORTANCE,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        foreach=True,
    )
    return maybe_add_gradient_clipping(cfg, optimizer)
