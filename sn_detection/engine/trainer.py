"""``SNTrainer``: detectron2's DefaultTrainer for SN models, as tools/train_net.py trains them."""

import logging
import os
import weakref
from typing import List, Optional

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from ..checkpoint import SNCheckpointer
from ..evaluation import build_sn_evaluator
from ..export import deploy_hardened
from ..layers import named_switch_norms
from ..solver import build_sn_optimizer
from .amp import build_train_loop
from .defaults import ddp_arguments
from .hooks import (
    WRITER_PERIOD,
    NonFiniteBatchWarner,
    PreciseSN,
    SNSharesWriter,
    SSNSchedule,
    has_sparse_switch_norms,
)
from .resume import resume_or_load

__all__ = ["DETECTRON2_INIT", "SNTrainer"]

# sha256 of the source of detectron2's DefaultTrainer.__init__, which SNTrainer.__init__ mirrors
DETECTRON2_INIT = "d7a2d8646201904756a9ea89a504933a9dacff5a923192368c757a31b0999b05"


class SNTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer with: the SN-aware optimizer (``build_sn_optimizer``); COCO
    evaluation of every test set with the config's keypoint sigmas (``build_sn_evaluator``);
    ``SNCheckpointer`` (MODEL.WEIGHTS may be an ImageNet SN checkpoint as released); DDP without
    device ids on the CPU; AMP on any device (``SOLVER.AMP.PRECISION``, bfloat16 on the CPU);
    TEST.PRECISE_BN extended to SN layers; the learned SN shares in the metrics; a warning for
    SN layers that skipped non-finite batches; and ``--resume`` checked before loading.

    ``__init__`` mirrors DefaultTrainer's (``DETECTRON2_INIT``), which has no seam for the
    checkpointer, DDP's arguments or the training loop."""

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # setup_logger is not called for d2
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, **ddp_arguments(cfg.MODEL.DEVICE))
        self._trainer = build_train_loop(
            model,
            data_loader,
            optimizer,
            amp=cfg.SOLVER.AMP.ENABLED,
            precision=cfg.SOLVER.AMP.PRECISION,
            device=cfg.MODEL.DEVICE,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SNCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """DefaultTrainer's, with the checkpoint of ``--resume`` checked first
        (:func:`~sn_detection.engine.resume.check_resume`)."""
        resume_or_load(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1

    def build_hooks(self) -> List[Optional[HookBase]]:
        """detectron2's hooks, with: NonFiniteBatchWarner after the LR scheduler; PreciseSN in
        PreciseBN's place (SN and BN statistics in one pass, before the checkpointer and the
        evaluation); SNSharesWriter just before the writers, so its scalars are written with
        theirs; SSNSchedule first where the model has sparse SN layers."""
        ret = [h for h in super().build_hooks() if not isinstance(h, hooks.PreciseBN)]
        sn_layers = any(True for _ in named_switch_norms(self.model))
        if sn_layers:
            after = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler))
            ret.insert(after + 1, NonFiniteBatchWarner(self.model, WRITER_PERIOD))
        if self.cfg.TEST.PRECISE_BN.ENABLED:
            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.DATALOADER.NUM_WORKERS = 0  # as detectron2's PreciseBN: a cheap second loader
            precise = PreciseSN(
                self.cfg.TEST.EVAL_PERIOD,
                self.model,
                self.build_train_loader(cfg),
                self.cfg.TEST.PRECISE_BN.NUM_ITER,
            )  # warns when the model has nothing to recompute
            before = (hooks.PeriodicCheckpointer, hooks.EvalHook)
            first = next((i for i, h in enumerate(ret) if isinstance(h, before)), len(ret))
            ret.insert(first, precise)
        if has_sparse_switch_norms(self.model):
            ret.insert(0, SSNSchedule(self.model, self.max_iter))  # before the checkpointer
        writers = [i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)]
        if writers and sn_layers:
            ret.insert(writers[0], SNSharesWriter(self.model, WRITER_PERIOD))
        return ret

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        return build_sn_optimizer(cfg, model)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_sn_evaluator(
            dataset_name, output_folder, kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS
        )

    @classmethod
    def evaluate(cls, cfg: CfgNode, resume: bool = False, harden: bool = False) -> dict:
        """``--eval-only``: the model of ``cfg`` with MODEL.WEIGHTS (or, with ``resume``, the
        checked last checkpoint of OUTPUT_DIR), evaluated on every test set; with ``harden``
        (``--harden``) as it deploys: its SN layers hardened, then :func:`deployable`."""
        model = cls.build_model(cfg)
        resume_or_load(SNCheckpointer(model, save_dir=cfg.OUTPUT_DIR), cfg.MODEL.WEIGHTS, resume)
        if harden:
            model = deploy_hardened(model)
        return cls.test(cfg, model)
