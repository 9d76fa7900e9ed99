#!/usr/bin/env python
"""Export an SN (or SyncSN) detectron2 model for deployment, with detectron2's options.

    tools/deploy/export_model.py \\
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml \\
        --export-method tracing --format torchscript --output ./output/export \\
        MODEL.WEIGHTS /path/to/model_final.pth MODEL.DEVICE cpu

``--export-method`` tracing (``--format torchscript`` writes model.ts, ``--format onnx``
model.onnx), scripting (model.ts) or torch_export (model.pt2: the backbone with FPN only, see
``sn_detection/export.py`` for what each file holds and why). caffe2_tracing and other pairs that
cannot work stop with a one-line error naming the method to use. The example input is
``--sample-image`` (resized like DefaultPredictor) or the first image of ``DATASETS.TEST[0]``.
SyncSN layers are exported as SN. The files hold only PyTorch and torchvision operators: they
run without sn_detection (and without detectron2).
"""
import argparse
import logging
import sys
from typing import List, Optional, Sequence

import torch

# first, so that detectron2's import-time torch.jit.script warnings stay silent (sn_detection's
# import does that); then the one-line errors below are all a user sees
import sn_detection  # noqa: F401  # isort: skip
from detectron2.config import CfgNode, get_cfg
from detectron2.data import build_detection_test_loader, detection_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from sn_detection import add_sn_config  # importing registers the SN builders
from sn_detection.checkpoint import SNCheckpointer
from sn_detection.export import EXPORT_METHODS, FORMATS, ExportError, check_method, deployable
from sn_detection.export import export as export_model

logger = logging.getLogger("sn_detection")


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    if cfg.MODEL.DEVICE == "cuda" and not torch.cuda.is_available():
        logger.warning("No CUDA device: exporting on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def sample_image(cfg: CfgNode, path: Optional[str]) -> torch.Tensor:
    """The (3, H, W) float32 example input (the exported models take float32 pixels, 0-255, in
    INPUT.FORMAT): ``path`` read and resized as DefaultPredictor does, or the first image of the
    first test set as its test loader gives it."""
    if path is None:
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
        return next(iter(loader))[0]["image"].float()
    image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export an SN model for deployment.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--export-method", choices=EXPORT_METHODS, default="tracing")
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="output format")
    parser.add_argument("--output", required=True, help="output directory for the exported model")
    parser.add_argument("--sample-image", default=None, help="example input image (file)")
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ..."
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    """Export as the command line says; returns the written file's path."""
    args = parse_args(argv)
    setup_logger(name="sn_detection")
    check_method(args.export_method, args.format)  # before the model is built
    cfg = setup_cfg(args)
    model = build_model(cfg)
    SNCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    model = deployable(model)  # eval mode, SyncSN as SN
    image = sample_image(cfg, args.sample_image).to(cfg.MODEL.DEVICE)
    path, _ = export_model(model, image, args.export_method, args.format, args.output)
    logger.info(f"Exported by {args.export_method} to {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except ExportError as e:
        sys.exit(f"export_model.py: error: {e}")
