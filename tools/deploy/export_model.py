#!/usr/bin/env python
"""Export an SN (or SyncSN) detectron2 model for deployment, with detectron2's options.

    tools/deploy/export_model.py \\
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml \\
        --export-method tracing --format torchscript --output ./output/export \\
        MODEL.WEIGHTS /path/to/model_final.pth MODEL.DEVICE cpu

``--export-method`` tracing (``--format torchscript``: model.ts, ``--format onnx``: model.onnx),
scripting (model.ts) or torch_export (model.pt2: the backbone with FPN only); see
``sn_detection/export.py``. MODEL.WEIGHTS is required and must fill the whole model
(``--allow-partial-weights`` exports what it fills). The example input is ``--sample-image``
(resized like DefaultPredictor) or the first image of ``DATASETS.TEST[0]``. Every SN layer whose
mix weights are one-hot (fixed sparse SN) exports as the single norm it chose; ``--harden`` first
rounds every SN layer's weights to their argmax and reports the share dropped per layer and in
all (compare ``--eval-only`` with a hardened checkpoint before keeping it). The log says what each
layer became. The files run without
sn_detection and detectron2. Errors are one line (``--debug`` for the traceback).
"""

import argparse
import logging
import sys
from typing import List

from detectron2.config import CfgNode
from detectron2.utils.logger import setup_logger

from sn_detection.engine.config_checks import yaml_training_config
from sn_detection.export import (
    EXPORT_METHODS,
    FORMATS,
    check_method,
    deployment_log,
    export_from_config,
)
from sn_detection.utils.cli import run_tool

logger = logging.getLogger("sn_detection")


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export an SN model for deployment.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--export-method", choices=EXPORT_METHODS, default="tracing")
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="output format")
    parser.add_argument("--output", required=True, help="output folder for the exported model")
    parser.add_argument("--sample-image", default=None, help="example input image (file)")
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="export even when MODEL.WEIGHTS leaves some of the model's weights at their init",
    )
    parser.add_argument(
        "--harden",
        action="store_true",
        help="round every SN layer's mix weights to their argmax (one norm per layer) first",
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ..."
    )
    return parser.parse_args(argv)


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = yaml_training_config(args.config_file, args.opts)  # checked; CUDA falls back to CPU
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def main(argv: List[str]) -> None:
    """Export as the command line says."""
    args = parse_args(argv)
    setup_logger(name="sn_detection")
    check_method(args.export_method, args.format)  # before the config is read
    result = export_from_config(
        setup_cfg(args),
        args.export_method,
        args.format,
        args.output,
        args.sample_image,
        args.allow_partial_weights,
        args.harden,
    )
    logger.info(deployment_log(result.deployment, result.hardened))
    logger.info(f"Exported by {args.export_method} to {result.path}")


if __name__ == "__main__":
    sys.exit(run_tool(main))
