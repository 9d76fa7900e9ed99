#!/usr/bin/env python
"""Generate the embedded shapes dataset (COCO json + PNG images) under $DETECTRON2_DATASETS.

Training and tests call this on first use; run it by hand to generate the files ahead of time:
    python datasets/prepare_shapes.py [--root DIR]
"""

import argparse

from sn_detection.data.shapes import dataset_root, prepare_shapes_dataset

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help=f"output folder (default: {dataset_root()})")
    for split, path in prepare_shapes_dataset(parser.parse_args().root).items():
        print(f"{split}: {path}")
