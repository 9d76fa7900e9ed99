"""An optimizer builder that knows SN parameters (detectron2's knows only built-in norm types)."""

from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from .config import renamed_value, weight_decay_logits
from .layers import named_switch_norms
from .layers.switch_norm import LOGIT_NAMES


def get_sn_optimizer_params(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay_norm: float,
    weight_decay_logits: float = 0.0,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    *,
    weight_decay_importance: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """detectron2's parameter groups, with SN parameters treated as norm parameters.

    SN ``weight`` and ``bias`` get ``weight_decay_norm`` (as BatchNorm/GroupNorm ones do in
    detectron2; a bias still takes ``weight_decay_bias`` when that is set), and the logits
    ``mean_weight``/``var_weight`` get ``weight_decay_logits`` (``weight_decay_importance`` is
    its deprecated name).
    """
    weight_decay_logits = renamed_value(
        "weight_decay_logits",
        weight_decay_logits,
        "weight_decay_importance",
        weight_decay_importance,
        0.0,
    )
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
        overrides={name: {"weight_decay": weight_decay_logits} for name in LOGIT_NAMES},
    )
    # later groups override earlier ones for the same parameter (reduce_param_groups); the
    # default groups hold only trainable parameters already (frozen SN layers hold buffers)
    for _, module in named_switch_norms(model):
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
        weight_decay_logits=weight_decay_logits(cfg),
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
