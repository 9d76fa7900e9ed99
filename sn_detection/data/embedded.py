"""The machinery of the embedded datasets: COCO json + PNG files generated deterministically on
first use into ``$DETECTRON2_DATASETS/<name>`` (default ``datasets/<name>``), and registered with
detectron2 as ``<name>_<split>``.

A dataset is an :class:`EmbeddedDataset`: its categories, its splits (number of images, seed) and
an image generator ``make_image(rng) -> (RGB image, annotations)``, each annotation a COCO dict
without ``id`` and ``image_id`` (added here). A split's json carries ``version`` in its
description; generation happens under a file lock (safe when several processes load the dataset
at once), writes the images first and the json last, so the json's presence with the current
version means the split is complete.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from filelock import FileLock
from pycocotools import mask as mask_util

logger = logging.getLogger(__name__)

ImageGenerator = Callable[[np.random.RandomState], Tuple[np.ndarray, List[Dict]]]


def mask_annotation(category_id: int, visible: np.ndarray) -> Dict:
    """A COCO annotation (without ids): the visible mask as compressed RLE, its box and area."""
    rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
    return {
        "category_id": category_id,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "area": float(mask_util.area(rle)),
        "iscrowd": 0,
    }


@dataclass(frozen=True)
class EmbeddedDataset:
    """A deterministic COCO-format dataset generated on first use (see the module docstring)."""

    name: str  # directory under $DETECTRON2_DATASETS and prefix of the registered names
    title: str  # what the json's description calls it
    categories: Tuple[str, ...]
    splits: Mapping[str, Tuple[int, int]]  # split -> (number of images, seed)
    version: int  # bump when the generator changes, so stale files are regenerated
    make_image: ImageGenerator

    def root(self) -> str:
        return os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), self.name)

    def generate_split(self, split: str, root: str) -> str:
        """Write the images and COCO json of ``split`` under ``root``; returns the json path."""
        num_images, seed = self.splits[split]
        rng = np.random.RandomState(seed)
        image_dir = os.path.join(root, split)
        os.makedirs(image_dir, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, num_images + 1):
            image, objects = self.make_image(rng)
            file_name = f"{image_id:05d}.png"
            cv2.imwrite(os.path.join(image_dir, file_name), image[:, :, ::-1])  # RGB -> BGR file
            height, width = image.shape[:2]
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
        coco = {
            "info": {"description": f"sn_detection {self.title}, {split}, version {self.version}"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.categories)],
        }
        json_file = os.path.join(root, f"{split}.json")
        tmp = json_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, json_file)  # the json appears last: its presence means it is complete
        return json_file

    def _is_current(self, json_file: str) -> bool:
        if not os.path.isfile(json_file):
            return False
        with open(json_file) as f:
            return json.load(f)["info"]["description"].endswith(f"version {self.version}")

    def prepare(
        self, root: Optional[str] = None, splits: Optional[Iterable[str]] = None
    ) -> Dict[str, str]:
        """Generate each of ``splits`` (default: all) that is missing or stale (safe across
        processes); returns split -> json path."""
        root = root or self.root()
        os.makedirs(root, exist_ok=True)
        paths = {}
        with FileLock(os.path.join(root, ".lock")):
            for split in splits or self.splits:
                json_file = os.path.join(root, f"{split}.json")
                if not self._is_current(json_file):
                    logger.info(f"Generating the {self.title} dataset ({split}) in {root} ...")
                    self.generate_split(split, root)
                paths[split] = json_file
        return paths

    def register(self) -> None:
        """Register ``<name>_<split>`` for every split; files are generated on first load."""
        root = self.root()
        for split in self.splits:
            name = f"{self.name}_{split}"
            if name in DatasetCatalog.list():
                continue
            json_file = os.path.join(root, f"{split}.json")
            image_root = os.path.join(root, split)

            def load(json_file=json_file, image_root=image_root, name=name, split=split):
                self.prepare(root, splits=(split,))
                return load_coco_json(json_file, image_root, name)

            DatasetCatalog.register(name, load)
            MetadataCatalog.get(name).set(
                json_file=json_file, image_root=image_root, evaluator_type="coco"
            )
