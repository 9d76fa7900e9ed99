"""What tools/lazyconfig_train_net.py builds from a LazyConfig besides detectron2's parts: the
evaluator, the training loop (AMP on any device) and the SN hooks."""

import copy
import os
from typing import Any, List, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import HookBase, SimpleTrainer
from detectron2.evaluation import DatasetEvaluator
from torch import nn

from ..evaluation import build_sn_evaluator
from ..layers import named_switch_norms
from .amp import LAZY_AMP_KEYS, build_train_loop
from .hooks import (
    NonFiniteBatchWarner,
    PreciseSN,
    SNSharesWriter,
    SSNSchedule,
    has_sparse_switch_norms,
)

__all__ = ["lazy_evaluator", "lazy_precise_sn", "lazy_sn_hooks", "lazy_train_loop"]


def lazy_evaluator(cfg: Any) -> DatasetEvaluator:
    """``dataloader.evaluator``, or ``build_sn_evaluator`` of the test set (COCO; semantic
    segmentation and panoptic quality for a panoptic dataset)."""
    if "evaluator" in cfg.dataloader:
        return instantiate(cfg.dataloader.evaluator)
    names = cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else names[0]
    return build_sn_evaluator(name, os.path.join(cfg.train.output_dir, "inference", name))


def lazy_train_loop(
    cfg: Any, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer
) -> SimpleTrainer:
    """``SimpleTrainer``, or with ``train.amp.enabled`` an ``AutocastTrainer`` on
    ``train.device`` in ``train.amp.precision`` (default "float16", as detectron2)."""
    amp = cfg.train.get("amp", {})
    return build_train_loop(
        model,
        data_loader,
        optimizer,
        amp=amp.get("enabled", False),
        precision=amp.get("precision", "float16"),
        device=cfg.train.device,
        keys=LAZY_AMP_KEYS,
    )


def lazy_precise_sn(cfg: Any, model: nn.Module) -> Optional[PreciseSN]:
    """PreciseSN (SN and BatchNorm statistics recomputed before each evaluation and at the end)
    when ``train.precise_bn.enabled``, on a second training loader without workers (as
    detectron2's PreciseBN); None otherwise or when the config has no ``train.precise_bn``."""
    precise = cfg.train.get("precise_bn", {})
    if not precise.get("enabled", False):
        return None
    loader = copy.deepcopy(cfg.dataloader.train)
    loader.num_workers = 0
    return PreciseSN(
        cfg.train.eval_period,
        model,
        instantiate(loader),
        precise.get("num_iter", 200),
        config_keys=("train.precise_bn.enabled", "train.precise_bn.num_iter"),
    )  # warns when the model has nothing to recompute


def lazy_sn_hooks(cfg: Any, model: nn.Module, main_process: bool) -> List[Optional[HookBase]]:
    """The SN hooks in the order detectron2's hook list takes them: sparse SN's radius schedule
    (first), the non-finite batch warner (after the LR scheduler), the precise pass (before the
    checkpointer and the evaluation), and on the main process the shares writer (before the
    writers). None where a hook does not apply; register each at its place."""
    sn_layers = any(True for _ in named_switch_norms(model))
    return [
        SSNSchedule(model, cfg.train.max_iter) if has_sparse_switch_norms(model) else None,
        NonFiniteBatchWarner(model, cfg.train.log_period) if sn_layers else None,
        lazy_precise_sn(cfg, model),
        SNSharesWriter(model, cfg.train.log_period) if main_process and sn_layers else None,
    ]
