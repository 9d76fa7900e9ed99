#!/usr/bin/env python
"""Convert a released ImageNet SN or Sparse SN checkpoint (ResNet-50/101 v1/v2 + SN, ResNet-50 v1 +
SSN) for sn_detection.

Usage:
    tools/convert_sn_imagenet_to_d2.py INPUT OUTPUT [--prefix backbone.bottom_up.]

The input is recognised by its contents (any file name). OUTPUT ending in .pkl is written in
detectron2's model-zoo format (a pickle of numpy arrays, like detectron2's
tools/convert-torchvision-to-d2.py), anything else with torch.save. Either way the keys are the
model's exact names ("matching_heuristics": False) and the weights are checked, before writing,
against the backbone they need. Prints the mapping and the config settings the weights need
(MODEL.RESNETS.NORM SSN for SSN weights, whose report also says how many layers are fixed and
which statistic each chose).
OUTPUT's directory is checked before anything is read (OUTPUT must not be INPUT, also through
a link), and OUTPUT is replaced only once it is written in full: a failed write leaves any
earlier file there intact. Errors are one line (``--debug`` for the traceback).
MODEL.WEIGHTS may also point at the original file: SNCheckpointer converts it in memory.
"""

import argparse
import os
import sys
from typing import List

from sn_detection.checkpoint import convert_official, read_checkpoint
from sn_detection.checkpoint.fitting import check_against_backbone
from sn_detection.utils.cli import InputError, run_tool
from sn_detection.utils.file_io import check_writable


def check_paths(input_path: str, output_path: str) -> None:
    """Refuse an OUTPUT that would replace INPUT (the same file, also through a link), or that
    cannot be written; before any work is spent on the conversion."""
    if os.path.exists(output_path) and os.path.exists(input_path):
        if os.path.samefile(input_path, output_path):
            raise InputError(
                f"OUTPUT {output_path} is the INPUT file: writing it would replace the ImageNet "
                "checkpoint; give another OUTPUT"
            )
    check_writable(output_path)


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="official ImageNet SN or SSN checkpoint (.pth/.pth.tar)")
    parser.add_argument("output", help="converted file: .pkl (detectron2 model zoo) or .pth")
    parser.add_argument(
        "--prefix",
        default="backbone.bottom_up.",
        help="prefix of the ResNet in the detector: 'backbone.bottom_up.' for FPN backbones "
        "(default), 'backbone.' for build_sn_resnet_backbone / build_sn_resnet_v2_backbone",
    )
    args = parser.parse_args(argv)
    check_paths(args.input, args.output)
    conversion = convert_official(read_checkpoint(args.input), args.prefix, args.input)
    check_against_backbone(conversion)
    print(conversion.report())
    conversion.save(args.output)
    print(f"wrote {args.output}: train with MODEL.WEIGHTS {args.output} and the settings above")


if __name__ == "__main__":
    sys.exit(run_tool(main))
