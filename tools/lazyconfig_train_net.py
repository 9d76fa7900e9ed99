#!/usr/bin/env python
"""Train and evaluate SN models from LazyConfig Python configs (configs/LazyConfig/).

detectron2's tools/lazyconfig_train_net.py with SNCheckpointer (``train.init_checkpoint`` may be
an ImageNet SN checkpoint as released), the config checked before anything is built (override
keys, norms, ``train`` values), the SN hooks (shares in the metrics, ``train.precise_bn``,
non-finite batches), AMP on any device (``train.amp.precision``: bfloat16 on the CPU too), and
the CPU fallback of ``train.device`` "cuda".

Usage (overrides are ``key=value``; ``--resume`` and ``--eval-only`` may also follow them):
    tools/lazyconfig_train_net.py --config-file configs/LazyConfig/mask_rcnn_R_50_FPN_2x_sn.py \
        --num-gpus 8
    tools/lazyconfig_train_net.py --config-file CONFIG --eval-only \
        train.init_checkpoint=/path/to/model_final.pth
    tools/lazyconfig_train_net.py --config-file CONFIG --resume train.output_dir=DIR
"""

import argparse
import logging
import sys
from typing import List, Optional, Sequence

from detectron2.config import instantiate
from detectron2.engine import default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import sn_detection  # noqa: F401  (imported for registration: the shapes datasets)
from sn_detection.checkpoint import SNCheckpointer
from sn_detection.engine import (
    ddp_arguments,
    launch,
    lazy_training_config,
    parse_train_args,
    resume_checkpoint,
    resume_or_load,
)
from sn_detection.engine.lazy import lazy_evaluator, lazy_sn_hooks, lazy_train_loop
from sn_detection.export import deploy_hardened
from sn_detection.utils.cli import run_tool

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), lazy_evaluator(cfg))
    print_csv_format(ret)
    return ret


def do_train(args, cfg):
    """As detectron2's: ``cfg`` has model, dataloader.{train,test}, optimizer, lr_multiplier and
    train (output_dir, init_checkpoint, amp, max_iter, eval_period, log_period, device,
    checkpointer, ddp, precise_bn)."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)

    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **ddp_arguments(cfg.train.device, cfg.train.get("ddp", {})))
    trainer = lazy_train_loop(cfg, model, train_loader, optim)
    checkpointer = SNCheckpointer(model, cfg.train.output_dir, optimizer=optim, trainer=trainer)
    main_process = comm.is_main_process()
    schedule, nonfinite, precise, shares = lazy_sn_hooks(cfg, model, main_process)
    trainer.register_hooks(
        [
            schedule,  # before the checkpointer
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            nonfinite,
            precise,  # before the checkpointer and the evaluation
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if main_process
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            shares,  # before the writers, so its scalars are written with theirs
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

    resume_or_load(checkpointer, cfg.train.init_checkpoint, args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # the checkpoint stores the iteration that just finished: start at the next one
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)


def setup(args):
    cfg = lazy_training_config(args.config_file, args.opts)
    default_setup(cfg, args)
    # as tools/train_net.py: our messages (the precise pass, ...) in the console and log.txt
    setup_logger(output=cfg.train.output_dir, distributed_rank=comm.get_rank(), name="sn_detection")
    return cfg


def train(args):
    """detectron2's ``main``: run in each process."""
    cfg = setup(args)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        checkpointer = SNCheckpointer(model, save_dir=cfg.train.output_dir)
        resume_or_load(checkpointer, cfg.train.init_checkpoint, args.resume)
        if args.harden:
            model = deploy_hardened(model)
        model = create_ddp_model(model, **ddp_arguments(cfg.train.device, cfg.train.get("ddp", {})))
        return do_test(cfg, model)
    do_train(args, cfg)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """detectron2's arguments; ``--resume`` and ``--eval-only`` may also follow the overrides."""
    return parse_train_args(
        argv, tool="tools/lazyconfig_train_net.py", override="train.init_checkpoint=PATH"
    )


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    # checked once here, before any process starts or anything is written
    cfg = lazy_training_config(args.config_file, args.opts)
    if args.resume:
        resume_checkpoint(cfg.train.output_dir)
    return launch(train, args)


if __name__ == "__main__":
    sys.exit(run_tool(main))
