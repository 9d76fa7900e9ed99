"""A small, deterministic COCO-format instance-segmentation dataset of coloured shapes.

It is the embedded default dataset of the demo and the tests: real COCO json (polygon masks)
plus PNG images, generated on first use into ``$DETECTRON2_DATASETS/sn_shapes`` (default
``datasets/sn_shapes``) and registered with detectron2 as ``sn_shapes_train``, ``sn_shapes_val``
and ``sn_shapes_val_10``. The same seed always gives the same files.
"""

import math
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.structures.masks import polygon_area

from .embedded import EmbeddedDataset

CATEGORIES = ("circle", "square", "triangle")
# split -> (number of images, seed); val_10 (val's seed) is the first 10 images of val, for the
# end-to-end tests of the tools, where an evaluation of 50 images was most of a run
SPLITS = {"train": (300, 0), "val": (50, 1), "val_10": (10, 1)}
IMAGE_SIZE = 160
VERSION = 1  # bump when the generator changes, so stale files are regenerated


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (K, 2) of a shape of circumradius r centred at (cx, cy)."""
    sides = {"circle": 32, "square": 4, "triangle": 3}[kind]
    t = angle + 2 * math.pi * np.arange(sides) / sides
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _make_image(rng: np.random.RandomState) -> Tuple[np.ndarray, List[Dict]]:
    size = IMAGE_SIZE
    background = rng.randint(0, 80, size=3)
    image = np.clip(background + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    objects, centres = [], []
    for _ in range(rng.randint(1, 4)):
        category = rng.randint(len(CATEGORIES))
        r = rng.uniform(14, 34)
        for _attempt in range(20):  # keep shapes apart, so masks do not overlap
            cx, cy = rng.uniform(r, size - r, size=2)
            if all(math.hypot(cx - x, cy - y) > r + rr + 2 for x, y, rr in centres):
                break
        else:
            continue
        centres.append((cx, cy, r))
        poly = _shape_polygon(CATEGORIES[category], cx, cy, r, rng.uniform(0, 2 * math.pi))
        colour = tuple(int(c) for c in rng.randint(120, 256, size=3))
        cv2.fillPoly(image, [np.round(poly).astype(np.int32)], colour, lineType=cv2.LINE_AA)
        objects.append(_annotation(category + 1, poly))
    return image, objects


def _annotation(category_id: int, poly: np.ndarray) -> Dict:
    """A COCO annotation (without ids) of one shape, its polygon as the mask."""
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    area = polygon_area(poly[:, 0], poly[:, 1])
    return {
        "category_id": category_id,
        "segmentation": [poly.round(2).flatten().tolist()],
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(area),
        "iscrowd": 0,
    }


SHAPES = EmbeddedDataset(
    name="sn_shapes",
    title="shapes",
    categories=CATEGORIES,
    splits=SPLITS,
    version=VERSION,
    make_image=_make_image,
)


def dataset_root() -> str:
    return SHAPES.root()


def generate_split(split: str, root: str) -> str:
    """Write the images and COCO json of ``split``; returns the json path."""
    return SHAPES.generate_split(split, root)


def prepare_shapes_dataset(root: str = None, splits=tuple(SPLITS)) -> Dict[str, str]:
    """Generate each of ``splits`` (default: all) that is missing or stale (safe across
    processes); returns split -> json path."""
    return SHAPES.prepare(root, splits)


def register_shapes_dataset() -> None:
    """Register ``sn_shapes_train`` and ``sn_shapes_val``; files are generated on first load."""
    SHAPES.register()
