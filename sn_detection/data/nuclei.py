"""A nuclei-like embedded instance-segmentation dataset: many small, similar blobs per image.

Modelled on fluorescence/H&E nuclei sets (one class, dozens of instances per image), each
``sn_nuclei`` image (``IMAGE_SIZE`` px square) has

- a textured background: a stain-like base colour, smooth low-frequency variation, fibre-like
  streaks and pixel noise;
- ``MIN_NUCLEI``-``MAX_NUCLEI`` nuclei: irregular ellipses of radius ``MIN_RADIUS``-``MAX_RADIUS``
  px in a few clusters, so many touch or overlap; each has a darker rim, speckled chromatin and
  its own shade of one hue range;
- masks of the *visible* part (the later nucleus is on top), compressed RLE: train with
  ``INPUT.MASK_FORMAT: "bitmask"``; nuclei under ``MIN_VISIBLE`` visible or ``MIN_PIXELS`` pixels
  are not annotated.

Generated deterministically from the seeds in ``SPLITS`` on first use into
``$DETECTRON2_DATASETS/sn_nuclei`` and registered as ``sn_nuclei_train`` and ``sn_nuclei_val``.
"""

import math
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .embedded import EmbeddedDataset, mask_annotation

CATEGORIES = ("nucleus",)
# split -> (number of images, seed)
SPLITS = {"train": (300, 20), "val": (60, 21)}
IMAGE_SIZE = 128
MIN_NUCLEI, MAX_NUCLEI = 12, 36
MIN_RADIUS, MAX_RADIUS = 3.5, 9.0
MIN_VISIBLE = 0.4  # a nucleus less visible than this (share of its area) is not annotated
MIN_PIXELS = 10
VERSION = 1  # bump when the generator changes, so stale files are regenerated


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    """Stain-like base colour, smooth variation, streaks and pixel noise, float (H, W, 3)."""
    base = np.array([rng.uniform(190, 240), rng.uniform(140, 200), rng.uniform(180, 230)])
    grid = rng.normal(0, 18, size=(rng.randint(3, 7), rng.randint(3, 7), 1)).astype(np.float32)
    image = base + cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
    streaks = np.zeros((size, size), np.float32)
    for _ in range(rng.randint(2, 8)):
        p0, p1 = rng.uniform(0, size, size=2), rng.uniform(0, size, size=2)
        cv2.line(streaks, tuple(map(int, p0)), tuple(map(int, p1)), 1.0, int(rng.randint(1, 3)))
    image -= cv2.GaussianBlur(streaks, (0, 0), 1.0)[..., None] * rng.uniform(15, 40)
    return image + rng.normal(0, 6, size=(size, size, 3))


def _nucleus_mask(rng: np.random.RandomState, cx: float, cy: float, size: int) -> np.ndarray:
    """An irregular ellipse of random radius and orientation around (cx, cy), bool (H, W)."""
    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS)
    t = 2 * math.pi * np.arange(24) / 24
    r = radius * (1 + 0.08 * rng.normal(size=t.shape))
    squash, a = rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)
    x, y = r * np.cos(t), squash * r * np.sin(t)
    xy = np.stack([x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)], axis=1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(xy + [cx, cy]).astype(np.int32)], 1)
    return mask.astype(bool)


def _paint_nucleus(image: np.ndarray, rng: np.random.RandomState, mask: np.ndarray) -> None:
    """A dark purple-blue body with speckled chromatin and a darker rim."""
    colour = np.array([rng.uniform(60, 120), rng.uniform(30, 80), rng.uniform(110, 170)])
    ys, xs = np.nonzero(mask)
    speckle = rng.normal(0, 14, size=(len(ys), 1)) + rng.uniform(-10, 10)
    image[ys, xs] = colour + speckle
    rim = mask & ~cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    image[rim] *= rng.uniform(0.6, 0.85)


def _make_image(rng: np.random.RandomState) -> Tuple[np.ndarray, List[Dict]]:
    size = IMAGE_SIZE
    image = _background(rng, size)
    clusters = rng.uniform(10, size - 10, size=(rng.randint(2, 6), 2))
    masks = []  # full masks, in painting order
    for _ in range(rng.randint(MIN_NUCLEI, MAX_NUCLEI + 1)):
        if rng.uniform() < 0.7:  # in a cluster: neighbours touch and overlap
            cx, cy = clusters[rng.randint(len(clusters))] + rng.normal(0, 12, size=2)
        else:
            cx, cy = rng.uniform(0, size, size=2)
        mask = _nucleus_mask(rng, cx, cy, size)
        _paint_nucleus(image, rng, mask)
        masks.append(mask)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.6)  # optics: soft edges
    covered = np.zeros((size, size), bool)
    annotations = []
    for mask in reversed(masks):  # the last painted is on top
        visible = mask & ~covered
        covered |= mask
        area = int(visible.sum())
        if area >= MIN_PIXELS and area >= MIN_VISIBLE * mask.sum():
            annotations.append(mask_annotation(1, visible))
    return np.clip(image, 0, 255).astype(np.uint8), annotations[::-1]


NUCLEI = EmbeddedDataset(
    name="sn_nuclei",
    title="nuclei",
    categories=CATEGORIES,
    splits=SPLITS,
    version=VERSION,
    make_image=_make_image,
)


def register_nuclei_dataset() -> None:
    """Register ``sn_nuclei_train`` and ``sn_nuclei_val``; files are generated on first load."""
    NUCLEI.register()
