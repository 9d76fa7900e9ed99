#!/usr/bin/env python
"""A norm study in one command: the same config trained and evaluated with several norms and
seeds, summarised in a table and curves (sn_detection.study).

Usage:
    tools/norm_study.py --config-file configs/quick_schedules/mask_rcnn_norm_study.yaml \
        --norms BN GN SN --seeds 0 1 --output output/norm_study
    # a user's COCO-format data, no code (class count as in the json):
    tools/norm_study.py --config-file CFG --coco-train train.json train_images/ \
        --coco-test val.json val_images/ --norms GN SN --seeds 0 1 2 --output DIR \
        MODEL.ROI_HEADS.NUM_CLASSES 7

Each (norm, seed) is one run of tools/train_net.py in a process of its own, in
DIR/runs/<norm>/seed<k>. Everything is checked before anything trains. A rerun skips finished runs
trained with the same settings and refuses those trained with others (unless --retrain). Exit
status: 0, 1 if a run failed (the others run; the table marks what is missing), 2 for bad input.
"""

import argparse
import os
import sys
from typing import List

from sn_detection.study import prepare_study, run_study
from sn_detection.utils.cli import run_tool

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and evaluate one config with several norms and seeds; write a table "
        "(results.md/.csv/.json) and curves (ap_curve.png, loss.png).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: tools/norm_study.py --config-file "
        "configs/quick_schedules/mask_rcnn_norm_study.yaml --norms BN GN SN --seeds 0 1 "
        "--output output/norm_study",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--norms",
        nargs="+",
        metavar="NORM",
        help="norms to compare (default: FrozenBN where MODEL.WEIGHTS is set, BN, GN, SN, SSN, and "
        "the synchronized norms when --num-gpus > 1)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1], metavar="SEED", help="non-negative"
    )
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per run")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs side by side on the CPU, the cores shared out among them (OMP_NUM_THREADS "
        "cores/N unless set); results do not depend on it",
    )
    parser.add_argument("--ims-per-gpu", type=int, metavar="N", help="images per process")
    parser.add_argument(
        "--eval-period",
        type=int,
        metavar="K",
        help="evaluate every K iterations (0: at the end only; default: the config's "
        "TEST.EVAL_PERIOD)",
    )
    parser.add_argument("--coco-train", nargs=2, metavar=("JSON", "IMAGE_DIR"))
    parser.add_argument("--coco-test", nargs=2, metavar=("JSON", "IMAGE_DIR"))
    parser.add_argument("--dataset-train", metavar="NAME", help="a registered dataset name")
    parser.add_argument("--dataset-test", metavar="NAME", help="a registered dataset name")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train again the finished runs whose recorded settings differ from these",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="KEY VALUE config overrides, last (after a one-value option such as --output, or --)",
    )
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    return args


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    study = prepare_study(train_command=[sys.executable, TRAIN_NET], **vars(args))
    command = " ".join(["tools/norm_study.py", *argv])
    return run_study(study, command, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(run_tool(main))
