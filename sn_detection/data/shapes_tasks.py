"""Keypoint and panoptic versions of the shapes dataset, for smoke runs of Keypoint R-CNN and
Panoptic FPN.

They reuse the images and instances of ``sn_shapes_{train,val}`` unchanged and add:

- ``sn_shapes_keypoints_{split}``: two keypoints per shape, its ``centre`` (the mean of its
  vertices) and its ``top`` vertex (smallest y; a horizontal flip keeps it the top, so the flip
  map is empty). Evaluate with ``COCOEvaluator(..., kpt_oks_sigmas=KEYPOINT_OKS_SIGMAS)``.
- ``sn_shapes_panoptic_{split}``: detectron2's "separated" panoptic format, the instances plus a
  semantic map (``sem_seg_file_name``) with label 0 for the pixels of the shapes ("things") and 1
  for the rest ("background", the one stuff class). Evaluate with ``SemSegEvaluator`` and
  ``COCOEvaluator``. The maps are generated on first use into ``<sn_shapes>/semseg/<split>``.

Neither has a COCO json of its own: detectron2's ``COCOEvaluator`` converts the dataset dicts.
"""
import copy
import os
from typing import Dict, List

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from filelock import FileLock

from .shapes import CATEGORIES, SPLITS, dataset_root

KEYPOINT_NAMES = ("centre", "top")
KEYPOINT_OKS_SIGMAS = (0.05, 0.05)
STUFF_CLASSES = ("things", "background")
SEMSEG_VERSION = 1

_THING_METADATA = {
    "thing_classes": list(CATEGORIES),
    "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CATEGORIES))},
}


def _polygon(annotation: Dict) -> np.ndarray:
    return np.asarray(annotation["segmentation"][0], dtype=np.float64).reshape(-1, 2)


def _keypoints(polygon: np.ndarray) -> List[float]:
    centre = polygon.mean(axis=0)
    top = polygon[np.argmin(polygon[:, 1])]
    return [float(centre[0]), float(centre[1]), 2.0, float(top[0]), float(top[1]), 2.0]


def load_shapes_keypoints(split: str) -> List[Dict]:
    """The dicts of ``sn_shapes_{split}`` with ``keypoints`` on every instance."""
    dicts = copy.deepcopy(DatasetCatalog.get(f"sn_shapes_{split}"))
    for record in dicts:
        for annotation in record["annotations"]:
            annotation["keypoints"] = _keypoints(_polygon(annotation))
    return dicts


def _semseg_dir(split: str) -> str:
    return os.path.join(dataset_root(), "semseg", split)


def _write_semseg(dicts: List[Dict], directory: str) -> None:
    marker = os.path.join(directory, f".version-{SEMSEG_VERSION}")
    if os.path.isfile(marker):
        return
    os.makedirs(directory, exist_ok=True)
    for record in dicts:
        label = np.ones((record["height"], record["width"]), dtype=np.uint8)  # background
        for annotation in record["annotations"]:
            cv2.fillPoly(label, [np.round(_polygon(annotation)).astype(np.int32)], 0)
        path = record["sem_seg_file_name"]
        tmp = path + ".tmp.png"
        cv2.imwrite(tmp, label)
        os.replace(tmp, path)
    open(marker, "w").close()  # written last: its presence means the maps are complete


def load_shapes_panoptic(split: str) -> List[Dict]:
    """The dicts of ``sn_shapes_{split}`` with ``sem_seg_file_name`` (generated if missing)."""
    dicts = copy.deepcopy(DatasetCatalog.get(f"sn_shapes_{split}"))
    directory = _semseg_dir(split)
    for record in dicts:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        record["sem_seg_file_name"] = os.path.join(directory, f"{stem}.png")
    os.makedirs(dataset_root(), exist_ok=True)
    with FileLock(os.path.join(dataset_root(), ".semseg.lock")):
        _write_semseg(dicts, directory)
    return dicts


def register_shapes_task_datasets() -> None:
    """Register ``sn_shapes_keypoints_{split}`` and ``sn_shapes_panoptic_{split}``."""
    for split in SPLITS:
        name = f"sn_shapes_keypoints_{split}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda split=split: load_shapes_keypoints(split))
            MetadataCatalog.get(name).set(
                keypoint_names=list(KEYPOINT_NAMES),
                keypoint_flip_map=[],
                evaluator_type="coco",
                **_THING_METADATA,
            )
        name = f"sn_shapes_panoptic_{split}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda split=split: load_shapes_panoptic(split))
            MetadataCatalog.get(name).set(
                stuff_classes=list(STUFF_CLASSES), ignore_label=255, **_THING_METADATA
            )

