"""A small, deterministic COCO-format instance-segmentation dataset of coloured shapes.

It is the embedded default dataset of the demo and the tests: real COCO json (polygon masks)
plus PNG images, generated on first use into ``$DETECTRON2_DATASETS/sn_shapes`` (default
``datasets/sn_shapes``) and registered with detectron2 as ``sn_shapes_train`` and
``sn_shapes_val``. The same seed always gives the same files.
"""
import json
import logging
import math
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures.masks import polygon_area
from filelock import FileLock

logger = logging.getLogger(__name__)

CATEGORIES = ("circle", "square", "triangle")
# split -> (number of images, seed)
SPLITS = {"train": (300, 0), "val": (50, 1)}
IMAGE_SIZE = 160
VERSION = 1  # bump when the generator changes, so stale files are regenerated


def dataset_root() -> str:
    return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "sn_shapes")


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (K, 2) of a shape of circumradius r centred at (cx, cy)."""
    sides = {"circle": 32, "square": 4, "triangle": 3}[kind]
    t = angle + 2 * math.pi * np.arange(sides) / sides
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _make_image(rng: np.random.RandomState) -> Tuple[np.ndarray, List[Dict]]:
    size = IMAGE_SIZE
    background = rng.randint(0, 80, size=3)
    image = np.clip(
        background + rng.normal(0, 12, size=(size, size, 3)), 0, 255
    ).astype(np.uint8)
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
        objects.append({"category_id": category + 1, "polygon": poly})
    return image, objects


def _annotation(obj: Dict, ann_id: int, image_id: int) -> Dict:
    poly = obj["polygon"]
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    area = polygon_area(poly[:, 0], poly[:, 1])
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"],
        "segmentation": [poly.round(2).flatten().tolist()],
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(area),
        "iscrowd": 0,
    }


def generate_split(split: str, root: str) -> str:
    """Write the images and COCO json of ``split``; returns the json path."""
    num_images, seed = SPLITS[split]
    rng = np.random.RandomState(seed)
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = _make_image(rng)
        file_name = f"{image_id:05d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image[:, :, ::-1])  # RGB -> BGR file
        images.append(
            {"id": image_id, "file_name": file_name, "height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        for obj in objects:
            annotations.append(_annotation(obj, len(annotations) + 1, image_id))
    coco = {
        "info": {"description": f"sn_detection shapes, {split}, version {VERSION}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CATEGORIES)],
    }
    json_file = os.path.join(root, f"{split}.json")
    tmp = json_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, json_file)  # the json appears last: its presence means the split is complete
    return json_file


def _is_current(json_file: str) -> bool:
    if not os.path.isfile(json_file):
        return False
    with open(json_file) as f:
        return json.load(f)["info"]["description"].endswith(f"version {VERSION}")


def prepare_shapes_dataset(root: str = None, splits=tuple(SPLITS)) -> Dict[str, str]:
    """Generate each of ``splits`` (default: all) that is missing or stale (safe across
    processes); returns split -> json path."""
    root = root or dataset_root()
    os.makedirs(root, exist_ok=True)
    paths = {}
    with FileLock(os.path.join(root, ".lock")):
        for split in splits:
            json_file = os.path.join(root, f"{split}.json")
            if not _is_current(json_file):
                logger.info(f"Generating the shapes dataset ({split}) in {root} ...")
                generate_split(split, root)
            paths[split] = json_file
    return paths


def register_shapes_dataset() -> None:
    """Register ``sn_shapes_train`` and ``sn_shapes_val``; files are generated on first load."""
    root = dataset_root()
    for split in SPLITS:
        name = f"sn_shapes_{split}"
        if name in DatasetCatalog.list():
            continue
        json_file = os.path.join(root, f"{split}.json")
        image_root = os.path.join(root, split)

        def load(json_file=json_file, image_root=image_root, name=name, split=split):
            prepare_shapes_dataset(root, splits=(split,))
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )
