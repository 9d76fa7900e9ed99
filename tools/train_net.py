#!/usr/bin/env python
"""Train and evaluate detectron2 models with Switchable Normalization.

Usage (detectron2's conventions):
    tools/train_net.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml \
        --num-gpus 8
    tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS /path/to/model_final.pth
Multi-machine: add --num-machines N --machine-rank R --dist-url tcp://HOST:PORT.
"""
import argparse
import logging
import os
import weakref
from typing import Optional, Sequence

import torch
from detectron2.config import get_cfg
from detectron2.engine import (
    DefaultTrainer,
    TrainerBase,
    create_ddp_model,
    default_setup,
    hooks,
    launch,
)
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from sn_detection import add_sn_config, build_sn_optimizer  # importing registers SN builders
from sn_detection.analysis import sn_modules
from sn_detection.checkpoint import SNCheckpointer
from sn_detection.engine import PreciseSN, SNImportanceWriter, build_train_loop
from sn_detection.engine.arguments import parse_train_args
from sn_detection.engine.hooks import WRITER_PERIOD
from sn_detection.evaluation import build_sn_evaluator
from sn_detection.modeling import check_sn_builders

logger = logging.getLogger("sn_detection")

# detectron2's DefaultTrainer.__init__ as mirrored by Trainer.__init__ (sha256 of its source)
DETECTRON2_INIT = "d7a2d8646201904756a9ea89a504933a9dacff5a923192368c757a31b0999b05"


def ddp_arguments(cfg) -> dict:
    """Keyword arguments of DistributedDataParallel for ``create_ddp_model``: buffers are not
    broadcast in every forward (each SN/BN layer keeps its own running statistics; SyncSN's are
    equal on every process by construction), and CPU models take no device_ids."""
    args = {"forward_sync_buffers": False}
    if cfg.MODEL.DEVICE == "cpu":
        args["device_ids"] = None
    return args


class Trainer(DefaultTrainer):
    """detectron2's trainer with an SN-aware optimizer, COCO evaluation of every test set,
    SNCheckpointer (MODEL.WEIGHTS may be an ImageNet SN checkpoint as released), the learned SN
    shares in the metrics, and TEST.PRECISE_BN extended to SN layers."""

    def __init__(self, cfg):
        # A copy of DefaultTrainer.__init__ (detectron2/engine/defaults.py), which offers no seam
        # for the three things that differ: the checkpointer (SNCheckpointer), DDP's arguments
        # (detectron2 gives DDP device_ids=[local rank], which DistributedDataParallel refuses for
        # CPU models; several CPU processes on gloo need device_ids=None; and detectron2's
        # broadcast_buffers=False is deprecated in torch for forward_sync_buffers=False), and the
        # AMP loop (detectron2's is CUDA float16 only).
        # tests/tools/test_train_net.py fails when detectron2's __init__ changes (DETECTRON2_INIT).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # setup_logger is not called for d2
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, **ddp_arguments(cfg))
        # SimpleTrainer, or AMP on MODEL.DEVICE in SOLVER.AMP.PRECISION (bf16 on the CPU too)
        self._trainer = build_train_loop(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # loads MODEL.WEIGHTS also from ImageNet SN files; saves as DetectionCheckpointer
        self.checkpointer = SNCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """detectron2's hooks, with PreciseBN replaced by PreciseSN (SN and BN statistics in one
        pass, in PreciseBN's place: before the checkpointer and the evaluation), and
        SNImportanceWriter just before the writers, so its scalars are written with theirs."""
        ret = [h for h in super().build_hooks() if not isinstance(h, hooks.PreciseBN)]
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
        writers = [i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)]
        if writers and sn_modules(self.model):
            ret.insert(writers[0], SNImportanceWriter(self.model, WRITER_PERIOD))
        return ret

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_sn_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_sn_evaluator(
            dataset_name, output_folder, kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS
        )


def setup(args):
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # before anything is built or written: a detectron2 builder given "SN" (it would fail with
    # KeyError: 'SN' deep in detectron2) is named with our builder to use; so are unknown norms
    check_sn_builders(cfg)
    if cfg.MODEL.DEVICE == "cuda" and not torch.cuda.is_available():
        logger.warning("No CUDA device: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    # as detectron2's projects: our messages (the precise pass, ...) in the console and log.txt
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sn_detection")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if cfg.TEST.PRECISE_BN.ENABLED:
            logger.warning(
                "TEST.PRECISE_BN.ENABLED applies during training (before each evaluation and at "
                "the end); --eval-only evaluates the statistics saved in MODEL.WEIGHTS as they are."
            )
        model = Trainer.build_model(cfg)
        SNCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """detectron2's arguments; ``--resume`` and ``--eval-only`` may also follow the overrides."""
    return parse_train_args(argv, tool="tools/train_net.py", override="MODEL.WEIGHTS PATH")


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
