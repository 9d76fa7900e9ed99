#!/usr/bin/env python
"""Train and evaluate SN models from LazyConfig Python configs (configs/LazyConfig/).

detectron2's tools/lazyconfig_train_net.py with what SN needs:

- SNCheckpointer: ``train.init_checkpoint`` may be an ImageNet SN checkpoint as released;
- the norms of ``cfg.model`` are checked before anything is built (``check_lazy_norms``);
- the evaluator is ``dataloader.evaluator``, or ``build_sn_evaluator`` of the test set if the
  config has none;
- the learned SN shares go into the metrics (SNImportanceWriter, as in tools/train_net.py);
- ``train.precise_bn.enabled``: the precise statistics pass of SN and BatchNorm layers (PreciseSN,
  as tools/train_net.py with TEST.PRECISE_BN.ENABLED);
- CPU: ``train.device`` "cuda" without a CUDA device falls back to the CPU, and DDP is given no
  device ids there (several CPU processes on gloo with ``--num-gpus``).

Usage (detectron2's conventions; overrides are ``key=value``; ``--resume`` and ``--eval-only`` may
also follow them):
    tools/lazyconfig_train_net.py --config-file configs/LazyConfig/mask_rcnn_R_50_FPN_2x_sn.py \
        --num-gpus 8
    tools/lazyconfig_train_net.py --config-file CONFIG --eval-only \
        train.init_checkpoint=/path/to/model_final.pth
    tools/lazyconfig_train_net.py --config-file CONFIG --resume train.output_dir=DIR
"""
import argparse
import copy
import logging
import os
from typing import Optional, Sequence

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import sn_detection  # noqa: F401  (imported for registration: the shapes datasets)
from sn_detection.analysis import sn_modules
from sn_detection.checkpoint import SNCheckpointer
from sn_detection.engine import PreciseSN, SNImportanceWriter
from sn_detection.engine.arguments import parse_train_args
from sn_detection.evaluation import build_sn_evaluator
from sn_detection.modeling import check_lazy_norms

logger = logging.getLogger("detectron2")


def build_evaluator(cfg):
    """``dataloader.evaluator``, or ``build_sn_evaluator`` of the test set (COCO; semantic
    segmentation and panoptic quality for a panoptic dataset)."""
    if "evaluator" in cfg.dataloader:
        return instantiate(cfg.dataloader.evaluator)
    names = cfg.dataloader.test.dataset.names
    name = names if isinstance(names, str) else names[0]
    return build_sn_evaluator(name, os.path.join(cfg.train.output_dir, "inference", name))


def do_test(cfg, model):
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), build_evaluator(cfg))
    print_csv_format(ret)
    return ret


def ddp_arguments(cfg) -> dict:
    """``cfg.train.ddp``; CPU models take no device_ids (DistributedDataParallel refuses them)."""
    args = dict(cfg.train.get("ddp", {}))
    if cfg.train.device == "cpu":
        args["device_ids"] = None
    return args


def precise_sn_hook(cfg, model) -> Optional[PreciseSN]:
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


def do_train(args, cfg):
    """As detectron2's: ``cfg`` has model, dataloader.{train,test}, optimizer, lr_multiplier and
    train (output_dir, init_checkpoint, amp.enabled, max_iter, eval_period, log_period, device,
    checkpointer, ddp)."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)

    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **ddp_arguments(cfg))
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = SNCheckpointer(
        model,
        cfg.train.output_dir,
        optimizer=optim,
        trainer=trainer,
    )
    main_process = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            precise_sn_hook(cfg, model),  # before the checkpointer and the evaluation
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if main_process
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            (
                SNImportanceWriter(model, cfg.train.log_period)
                if main_process and sn_modules(model)
                else None
            ),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if main_process
                else None
            ),
        ]
    )

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # the checkpoint stores the iteration that just finished: start at the next one
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)


def setup(args):
    """The config of ``args``, checked, with the CPU fallback; detectron2's default_setup."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    check_lazy_norms(cfg.model)  # before anything is built or written
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        logging.getLogger("sn_detection").warning(
            "No CUDA device: running on the CPU (train.device=cpu)."
        )
        cfg.train.device = "cpu"
    default_setup(cfg, args)
    # as tools/train_net.py: our messages (the precise pass, ...) in the console and log.txt
    setup_logger(output=cfg.train.output_dir, distributed_rank=comm.get_rank(), name="sn_detection")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model, **ddp_arguments(cfg))
        SNCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(
            cfg.train.init_checkpoint, resume=args.resume
        )
        return do_test(cfg, model)
    do_train(args, cfg)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """detectron2's arguments; ``--resume`` and ``--eval-only`` may also follow the overrides."""
    return parse_train_args(
        argv, tool="tools/lazyconfig_train_net.py", override="train.init_checkpoint=PATH"
    )


if __name__ == "__main__":
    args = parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
