#!/usr/bin/env python
"""Convert a released ImageNet SN checkpoint (ResNet-50/101 v1/v2 + SN) for sn_detection.

Usage:
    tools/convert_sn_imagenet_to_d2.py INPUT OUTPUT [--prefix backbone.bottom_up.]

The input is recognised by its contents (any file name). OUTPUT ending in .pkl is written in
detectron2's model-zoo format (a pickle of numpy arrays, like detectron2's
tools/convert-torchvision-to-d2.py), anything else with torch.save. Either way the keys are the
model's exact names ("matching_heuristics": False) and the weights are checked, before writing,
against the backbone they need. Prints the mapping and the config settings the weights need.
OUTPUT's directory is checked before anything is read, and OUTPUT is replaced only once it is
written in full: a failed write leaves any earlier file there intact.
MODEL.WEIGHTS may also point at the original file: SNCheckpointer converts it in memory.
"""

import argparse
import pickle
import sys

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from sn_detection import add_sn_config
from sn_detection.checkpoint import (
    CheckpointError,
    Conversion,
    convert_official,
    fit_to_model,
    read_checkpoint,
)
from sn_detection.checkpoint.official_layout import BACKBONE_NAMES, WIDTH_KEYS
from sn_detection.utils.file_io import atomic_write, check_writable


def check_against_backbone(conversion: Conversion) -> None:
    """Build the (non-FPN) backbone the weights need and check every tensor fits it exactly."""
    cfg = get_cfg()
    add_sn_config(cfg)
    settings = {
        **conversion.info.required_settings(),
        **dict(zip(WIDTH_KEYS, conversion.info.widths)),  # also when they are the defaults
    }
    cfg.merge_from_list([item for key_value in settings.items() for item in key_value])
    cfg.MODEL.RESNETS.NUM_GROUPS = 1
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    builder = BACKBONE_REGISTRY.get(BACKBONE_NAMES[conversion.info.version][1])
    backbone = builder(cfg, ShapeSpec(channels=3))
    fit_to_model(conversion.state, conversion.metadata(), backbone, conversion.source)


def save(conversion: Conversion, path: str) -> None:
    """Write the converted checkpoint to ``path`` atomically: .pkl as detectron2's model zoo
    (numpy arrays), anything else with torch.save."""
    checkpoint = conversion.to_checkpoint()
    if path.endswith(".pkl"):
        checkpoint["model"] = {k: v.detach().cpu().numpy() for k, v in checkpoint["model"].items()}
    with atomic_write(path) as f:
        if path.endswith(".pkl"):
            pickle.dump(checkpoint, f)
        else:
            torch.save(checkpoint, f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official ImageNet SN checkpoint (.pth/.pth.tar)")
    parser.add_argument("output", help="converted file: .pkl (detectron2 model zoo) or .pth")
    parser.add_argument(
        "--prefix",
        default="backbone.bottom_up.",
        help="prefix of the ResNet in the detector: 'backbone.bottom_up.' for FPN backbones "
        "(default), 'backbone.' for build_sn_resnet_backbone / build_sn_resnet_v2_backbone",
    )
    args = parser.parse_args(argv)
    try:
        check_writable(args.output)  # before any work is spent on the conversion
        conversion = convert_official(read_checkpoint(args.input), args.prefix, args.input)
        check_against_backbone(conversion)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(conversion.report())
    try:
        save(conversion, args.output)
    except OSError as e:
        message = f"error: writing {args.output} failed ({e}); any file there is unchanged"
        print(message, file=sys.stderr)
        return 1
    print(f"wrote {args.output}: train with MODEL.WEIGHTS {args.output} and the settings above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
