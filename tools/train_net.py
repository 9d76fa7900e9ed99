#!/usr/bin/env python
"""Train and evaluate detectron2 models with Switchable Normalization (YAML configs).

Usage (detectron2's conventions):
    tools/train_net.py --num-gpus 8 \
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml
    tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    # the same, as the model deploys: each SN layer's mix rounded to its argmax choice
    tools/train_net.py --config-file CONFIG --eval-only --harden MODEL.WEIGHTS model_final.pth
Multi-machine: add --num-machines N --machine-rank R --dist-url tcp://HOST:PORT.
A wrong key, value or resume checkpoint is one line on stderr and exit status 2 (--debug: the
traceback).
"""

import argparse
import logging
import sys
from typing import List, Optional, Sequence

from detectron2.engine import default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import sn_detection  # noqa: F401  (imported for registration: SN builders, datasets)
from sn_detection.engine import (
    SNTrainer,
    launch,
    parse_train_args,
    resume_checkpoint,
    yaml_training_config,
)
from sn_detection.utils.cli import run_tool


def setup(args: argparse.Namespace):
    cfg = yaml_training_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # as detectron2's projects: our messages (the precise pass, ...) in the console and log.txt
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="sn_detection")
    return cfg


def train(args: argparse.Namespace):
    """detectron2's ``main``: run in each process."""
    cfg = setup(args)
    if args.eval_only:
        if cfg.TEST.PRECISE_BN.ENABLED:
            logging.getLogger("sn_detection").warning(
                "TEST.PRECISE_BN.ENABLED applies during training (before each evaluation and at "
                "the end); --eval-only evaluates the statistics saved in MODEL.WEIGHTS as they are."
            )
        res = SNTrainer.evaluate(cfg, resume=args.resume, harden=args.harden)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = SNTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """detectron2's arguments; ``--resume`` and ``--eval-only`` may also follow the overrides."""
    return parse_train_args(argv, tool="tools/train_net.py", override="MODEL.WEIGHTS PATH")


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    print("Command Line Args:", args)
    # checked once here, before any process starts or anything is written
    cfg = yaml_training_config(args.config_file, args.opts)
    if args.resume:
        resume_checkpoint(cfg.OUTPUT_DIR)
    return launch(train, args)


if __name__ == "__main__":
    sys.exit(run_tool(main))
