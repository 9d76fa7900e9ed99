"""An optimizer builder that knows SN parameters (detectron2's knows only built-in norm types)."""

from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from .config import renamed_value, ssn_logits_options, weight_decay_logits
from .layers import named_switch_norms, sparse_switch_norms
from .layers.switch_norm import LOGIT_NAMES

# a parameter group's key: clip the gradient norm of the group's parameters (together) to it
GROUP_CLIP_NORM = "clip_grad_norm"
_GROUP_CLIPPING_CLASSES: Dict[type, type] = {}  # optimizer class -> its clipping subclass


def get_sn_optimizer_params(
    model: torch.nn.Module,
    base_lr: float,
    weight_decay_norm: float,
    weight_decay_logits: float = 0.0,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: Optional[float] = None,
    *,
    weight_decay_importance: Optional[float] = None,
    ssn_logits_lr_factor: float = 0.1,
    ssn_logits_clip_norm: float = 1.0,
) -> List[Dict[str, Any]]:
    """detectron2's parameter groups, with SN parameters treated as norm parameters.

    SN ``weight`` and ``bias`` get ``weight_decay_norm`` (as BatchNorm/GroupNorm ones do in
    detectron2; a bias still takes ``weight_decay_bias`` when that is set), and the logits
    ``mean_weight``/``var_weight`` get ``weight_decay_logits`` (``weight_decay_importance`` is
    its deprecated name). The logits of sparse SN layers form one group of their own, as the
    SSN authors train them: learning rate ``base_lr * ssn_logits_lr_factor``, no weight decay,
    and ``GROUP_CLIP_NORM`` = ``ssn_logits_clip_norm`` (0: none), which the optimizer of
    :func:`build_sn_optimizer` applies to that group only.
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
    groups = reduce_param_groups(groups)
    ssn_logits = [
        getattr(layer, name)
        for _, layer in sparse_switch_norms(model)
        for name in LOGIT_NAMES
        if getattr(layer, name).requires_grad
    ]
    if ssn_logits:
        chosen = {id(p) for p in ssn_logits}
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in chosen]
        groups = [g for g in groups if g["params"]]
        groups.append(
            {
                "params": ssn_logits,
                "lr": base_lr * ssn_logits_lr_factor,
                "weight_decay": 0.0,
                GROUP_CLIP_NORM: ssn_logits_clip_norm,
            }
        )
    return groups


def add_group_gradient_clipping(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``optimizer`` (in place, as detectron2's ``maybe_add_gradient_clipping`` does) clip,
    before each step, the gradient norm of each parameter group that has ``GROUP_CLIP_NORM`` > 0
    to that value, the group's parameters together; on the device, without a sync."""
    base = type(optimizer)
    if base not in _GROUP_CLIPPING_CLASSES:

        def step(self, closure=None):
            for group in self.param_groups:
                max_norm = group.get(GROUP_CLIP_NORM, 0.0)
                grads = [p for p in group["params"] if p.grad is not None]
                if max_norm > 0 and grads:
                    torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)
            return base.step(self, closure)

        name = base.__name__ + "WithGroupClipping"
        _GROUP_CLIPPING_CLASSES[base] = type(name, (base,), {"step": step})
    optimizer.__class__ = _GROUP_CLIPPING_CLASSES[base]
    return optimizer


def sn_sgd(params: List[Dict[str, Any]], **sgd_options: Any) -> torch.optim.SGD:
    """``torch.optim.SGD(params, **sgd_options)`` that clips the groups that ask for it
    (:func:`add_group_gradient_clipping`): the optimizer of the LazyConfig files."""
    return add_group_gradient_clipping(torch.optim.SGD(params, **sgd_options))


def build_sn_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2's SGD set-up (``SOLVER.*``), with SN-aware parameter groups (the sparse SN
    logits' group clipped as ``MODEL.SN.SSN_LOGITS_CLIP_NORM`` says)."""
    params = get_sn_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_logits=weight_decay_logits(cfg),
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        **ssn_logits_options(cfg),
    )
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        foreach=True,
    )
    return maybe_add_gradient_clipping(cfg, add_group_gradient_clipping(optimizer))
