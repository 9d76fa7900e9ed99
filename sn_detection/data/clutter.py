"""A harder embedded instance-segmentation dataset: textured objects in clutter, with occlusion.

Where ``sn_shapes`` has 1-3 large, separate, flat-coloured shapes on a plain background (every
norm solves it to ~90 AP), each ``sn_clutter`` image has

- 4-15 objects of five classes, radii from 3 px to a third of the image (log-uniform, so most are
  small), rotated, squashed and partly outside the image;
- occlusion: objects are painted one over the other, and a few distractors over them; an
  object's mask is its *visible* part (COCO RLE, which also keeps the holes an occluder makes),
  and objects with under ``MIN_VISIBLE`` of their in-image area visible (or under
  ``MIN_PIXELS`` pixels) are not annotated;
- class-dependent appearance: each class draws its colour from a hue range (neighbouring classes'
  ranges overlap) and its texture from a class-specific mix (solid, noise, stripes, checker,
  dots), so shape, colour and texture all carry the class, none alone;
- cluttered backgrounds: smooth colour noise, stripes at a random angle and period, pixel noise,
  and distractors that are not objects (irregular textured blobs and line segments, coloured
  like objects);
- varying image sizes (``MIN_SIDE``-``MAX_SIDE`` pixels per side).

Generated deterministically from the seeds in ``SPLITS`` on first use into
``$DETECTRON2_DATASETS/sn_clutter`` (about 35 MB) and registered as ``sn_clutter_train`` and
``sn_clutter_val``. Masks are RLE: train with ``INPUT.MASK_FORMAT: "bitmask"``.
"""

import math
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .embedded import EmbeddedDataset, mask_annotation

CATEGORIES = ("disc", "square", "triangle", "star", "ring")
# class -> (hue centre in degrees, textures it draws from, their probabilities)
APPEARANCE = {
    "disc": (0, ("solid", "noise", "stripes"), (0.5, 0.3, 0.2)),
    "square": (60, ("stripes", "solid", "checker"), (0.5, 0.3, 0.2)),
    "triangle": (120, ("checker", "dots", "solid"), (0.5, 0.3, 0.2)),
    "star": (180, ("dots", "noise", "stripes"), (0.5, 0.3, 0.2)),
    "ring": (240, ("noise", "solid", "checker"), (0.5, 0.3, 0.2)),
}
HUE_SPREAD = 45  # degrees either side of the class's centre: neighbours overlap
TEXTURES = ("solid", "noise", "stripes", "checker", "dots")
# split -> (number of images, seed)
SPLITS = {"train": (500, 10), "val": (100, 11)}
MIN_SIDE, MAX_SIDE = 128, 224
MIN_RADIUS = 3.0
MIN_VISIBLE = 0.25  # an object less visible than this (share of its in-image area) is dropped
MIN_PIXELS = 6
VERSION = 1  # bump when the generator changes, so stale files are regenerated


def _hsv_colour(rng: np.random.RandomState, hue: float) -> np.ndarray:
    """An RGB colour (float, 0-255) of ``hue`` degrees with random saturation and value."""
    hsv = np.array([[[(hue % 360) / 2, rng.uniform(90, 255), rng.uniform(90, 255)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _texture(
    rng: np.random.RandomState, kind: str, colour: np.ndarray, shape: Tuple[int, int]
) -> np.ndarray:
    """An (H, W, 3) float patch of texture ``kind`` in ``colour`` and a shade of it."""
    h, w = shape
    other = np.clip(colour * rng.uniform(0.3, 0.7) + rng.uniform(0, 60), 0, 255)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(3, 9)
    if kind == "solid":
        pattern = np.zeros((h, w), np.float32)
    elif kind == "noise":
        pattern = rng.uniform(0, 1, size=(h, w)).astype(np.float32)
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        pattern = (np.sin((x * math.cos(a) + y * math.sin(a)) * 2 * math.pi / period) > 0) * 1.0
    elif kind == "checker":
        p = max(2, int(period / 2))
        pattern = ((x // p + y // p) % 2).astype(np.float32)
    elif kind == "dots":
        p, r = period + 1, (period + 1) / 3
        pattern = (((x % p) - p / 2) ** 2 + ((y % p) - p / 2) ** 2 < r * r) * 1.0
    else:
        raise ValueError(f"unknown texture {kind!r}; valid: {', '.join(TEXTURES)}")
    pattern = pattern.astype(np.float32)[..., None]
    return colour * (1 - pattern) + other * pattern + rng.normal(0, 3, size=(h, w, 1))


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    """Smooth colour noise, stripes (half of the images) and pixel noise, float (H, W, 3)."""
    base = rng.uniform(20, 200, size=3).astype(np.float32)
    grid = rng.normal(0, 40, size=(rng.randint(3, 8), rng.randint(3, 8), 3)).astype(np.float32)
    image = base + cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.uniform() < 0.5:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        a, period = rng.uniform(0, math.pi), rng.uniform(4, 24)
        stripes = np.sin((x * math.cos(a) + y * math.sin(a)) * 2 * math.pi / period)
        image += stripes[..., None] * rng.uniform(10, 35) * rng.choice([-1, 1], size=3)
    return image + rng.normal(0, 4, size=(h, w, 1))


def _unit_shape(kind: str, rng: np.random.RandomState) -> List[np.ndarray]:
    """The outline(s) of a class around the origin, circumradius 1: [outer] or [outer, hole]."""
    if kind == "star":
        t = 2 * math.pi * np.arange(10) / 10
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.35, 0.55))
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]
    sides = {"disc": 32, "ring": 32, "square": 4, "triangle": 3}[kind]
    t = 2 * math.pi * np.arange(sides) / sides
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    return [outer, outer * rng.uniform(0.4, 0.65)] if kind == "ring" else [outer]


def _blob(rng: np.random.RandomState) -> List[np.ndarray]:
    """An irregular outline (a distractor), circumradius about 1."""
    k = rng.randint(7, 14)
    t = np.sort(rng.uniform(0, 2 * math.pi, size=k))
    r = rng.uniform(0.4, 1.0, size=k)
    return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]


def _place(outlines: List[np.ndarray], rng, cx, cy, radius) -> List[np.ndarray]:
    """Outlines squashed, rotated, scaled to ``radius`` and moved to (cx, cy), int32 pixels."""
    a = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    squash = np.diag([1.0, rng.uniform(0.6, 1.0)])
    transform = radius * rotation @ squash
    return [np.round(o @ transform.T + [cx, cy]).astype(np.int32) for o in outlines]


def _mask(outlines: List[np.ndarray], h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, outlines[:1], 1)
    if len(outlines) > 1:
        cv2.fillPoly(mask, outlines[1:], 0)  # the hole of a ring
    return mask.astype(bool)


def _paint(image, rng, mask, colour, texture) -> None:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return
    y0, x0 = ys.min(), xs.min()
    patch = _texture(rng, texture, colour, (ys.max() - y0 + 1, xs.max() - x0 + 1))
    image[ys, xs] = patch[ys - y0, xs - x0]


def _distractor(image, rng, h, w) -> np.ndarray:
    """Paint a distractor (a textured blob or a line segment) and return its mask."""
    colour = _hsv_colour(rng, rng.uniform(0, 360))
    if rng.uniform() < 0.3:
        mask = np.zeros((h, w), np.uint8)
        p0, p1 = rng.uniform(0, [w, h]), rng.uniform(0, [w, h])
        cv2.line(mask, tuple(map(int, p0)), tuple(map(int, p1)), 1, int(rng.randint(1, 4)))
        mask = mask.astype(bool)
        image[mask] = colour
        return mask
    radius = math.exp(rng.uniform(math.log(4), math.log(min(h, w) / 5)))
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    mask = _mask(_place(_blob(rng), rng, cx, cy, radius), h, w)
    _paint(image, rng, mask, colour, TEXTURES[rng.randint(len(TEXTURES))])
    return mask


def _make_image(rng: np.random.RandomState) -> Tuple[np.ndarray, List[Dict]]:
    h, w = (int(v) for v in rng.randint(MIN_SIDE, MAX_SIDE + 1, size=2))
    image = _background(rng, h, w)
    for _ in range(rng.randint(3, 9)):  # distractors behind the objects
        _distractor(image, rng, h, w)
    objects = []  # (category index, full mask), in painting order
    for _ in range(rng.randint(4, 16)):
        category = rng.randint(len(CATEGORIES))
        name = CATEGORIES[category]
        hue, textures, p = APPEARANCE[name]
        radius = math.exp(rng.uniform(math.log(MIN_RADIUS), math.log(min(h, w) / 3)))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        mask = _mask(_place(_unit_shape(name, rng), rng, cx, cy, radius), h, w)
        colour = _hsv_colour(rng, hue + rng.uniform(-HUE_SPREAD, HUE_SPREAD))
        _paint(image, rng, mask, colour, textures[rng.choice(len(textures), p=p)])
        objects.append((category, mask))
    covered = np.zeros((h, w), bool)
    for _ in range(rng.randint(0, 3)):  # distractors in front
        covered |= _distractor(image, rng, h, w)
    annotations = []
    for category, mask in reversed(objects):  # the last painted is on top
        visible = mask & ~covered
        covered |= mask
        area = int(visible.sum())
        if area >= MIN_PIXELS and area >= MIN_VISIBLE * mask.sum():
            annotations.append(mask_annotation(category + 1, visible))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, annotations[::-1]


CLUTTER = EmbeddedDataset(
    name="sn_clutter",
    title="clutter",
    categories=CATEGORIES,
    splits=SPLITS,
    version=VERSION,
    make_image=_make_image,
)


def register_clutter_dataset() -> None:
    """Register ``sn_clutter_train`` and ``sn_clutter_val``; files are generated on first load."""
    CLUTTER.register()
