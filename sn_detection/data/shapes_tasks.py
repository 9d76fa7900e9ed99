"""Keypoint and panoptic versions of the shapes dataset, for smoke runs of Keypoint R-CNN and
Panoptic FPN.

They reuse the images and instances of ``sn_shapes_{train,val}`` unchanged and add:

- ``sn_shapes_keypoints_{split}``: two keypoints per shape, its ``centre`` (the mean of its
  vertices) and its ``top`` vertex (smallest y; a horizontal flip keeps it the top, so the flip
  map is empty). Evaluate with ``COCOEvaluator(..., kpt_oks_sigmas=KEYPOINT_OKS_SIGMAS)``.
- ``sn_shapes_panoptic_{split}``: detectron2's "separated" panoptic format, the instances plus a
  semantic map (``sem_seg_file_name``) with label 0 for the pixels of the shapes ("things") and 1
  for the rest ("background", the one stuff class), and the same segmentation in COCO's panoptic
  format for ``COCOPanopticEvaluator`` (metadata ``panoptic_root``, ``panoptic_json``): one PNG
  per image (segment ids in RGB, panopticapi's ``id2rgb``), segment k for the image's k-th shape
  and the last one for the background, category ids those of the instances and
  ``BACKGROUND_ID`` for the background. Evaluate with ``SemSegEvaluator``, ``COCOEvaluator`` and
  ``COCOPanopticEvaluator`` (``sn_detection.evaluation.build_sn_evaluator``). The maps are
  generated from the polygons on first use into ``<sn_shapes>/semseg/<split>``,
  ``<sn_shapes>/panoptic/<split>`` and ``<sn_shapes>/panoptic/<split>.json``; the same polygons
  always give the same files.

The instances have no COCO json of their own: detectron2's ``COCOEvaluator`` converts the dataset
dicts.
"""

import copy
import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from filelock import FileLock

from .shapes import CATEGORIES, SPLITS, VERSION, dataset_root

KEYPOINT_NAMES = ("centre", "top")
KEYPOINT_OKS_SIGMAS = (0.05, 0.05)
STUFF_CLASSES = ("things", "background")
BACKGROUND_ID = len(CATEGORIES) + 1  # the background's category id in the panoptic json
MAPS_VERSION = 2  # bump when the maps change, so stale files are regenerated

_THING_METADATA = {
    "thing_classes": list(CATEGORIES),
    "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(CATEGORIES))},
}
# as detectron2's COCO panoptic "separated" metadata: semantic label 0 ("things") is the dataset
# id 0, which the panoptic json does not have; each stuff class has its own id
_STUFF_METADATA = {
    "stuff_classes": list(STUFF_CLASSES),
    "stuff_dataset_id_to_contiguous_id": {0: 0, BACKGROUND_ID: 1},
    "ignore_label": 255,
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


def _panoptic_paths(split: str) -> Tuple[str, str]:
    """The folder of the panoptic PNGs of ``split`` and its panoptic json."""
    directory = os.path.join(dataset_root(), "panoptic", split)
    return directory, directory + ".json"


def _segment_ids(record: Dict) -> np.ndarray:
    """An image's panoptic segment ids (H, W): k for its k-th shape, then the background."""
    ids = np.zeros((record["height"], record["width"]), dtype=np.int32)
    for k, annotation in enumerate(record["annotations"], start=1):
        cv2.fillPoly(ids, [np.round(_polygon(annotation)).astype(np.int32)], k)
    ids[ids == 0] = len(record["annotations"]) + 1
    return ids


def _segments_info(record: Dict, ids: np.ndarray) -> List[Dict]:
    """COCO panoptic ``segments_info`` of the segments with pixels in ``ids``."""
    # the dicts have contiguous thing ids (from 0); the json has the dataset's (from 1)
    categories = [a["category_id"] + 1 for a in record["annotations"]] + [BACKGROUND_ID]
    info = []
    for segment, category in enumerate(categories, start=1):
        ys, xs = np.nonzero(ids == segment)
        if len(xs):
            x, y = int(xs.min()), int(ys.min())
            box = [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1]
            info.append(
                {"id": segment, "category_id": category, "iscrowd": 0, "bbox": box, "area": len(xs)}
            )
    return info


def _write_png(path: str, image: np.ndarray) -> None:
    tmp = path + ".tmp.png"
    cv2.imwrite(tmp, image)
    os.replace(tmp, path)


def _write_maps(dicts: List[Dict], split: str) -> None:
    """The semantic and panoptic maps of ``split`` and its panoptic json, unless current."""
    panoptic_dir, panoptic_json = _panoptic_paths(split)
    marker = os.path.join(panoptic_dir, f".version-{VERSION}-{MAPS_VERSION}")
    if os.path.isfile(marker):
        return
    os.makedirs(_semseg_dir(split), exist_ok=True)
    os.makedirs(panoptic_dir, exist_ok=True)
    images, annotations = [], []
    for record in dicts:
        ids = _segment_ids(record)
        background = len(record["annotations"]) + 1
        _write_png(record["sem_seg_file_name"], (ids == background).astype(np.uint8))
        png = os.path.basename(record["sem_seg_file_name"])
        # panopticapi's id2rgb (id = R + 256 G + 256^2 B), in the BGR order cv2 writes
        bgr = np.stack([ids // 65536, ids // 256 % 256, ids % 256], axis=-1).astype(np.uint8)
        _write_png(os.path.join(panoptic_dir, png), bgr)
        images.append(
            {
                "id": record["image_id"],
                "file_name": os.path.basename(record["file_name"]),
                "height": record["height"],
                "width": record["width"],
            }
        )
        annotations.append(
            {
                "image_id": record["image_id"],
                "file_name": png,
                "segments_info": _segments_info(record, ids),
            }
        )
    categories = [
        {"id": i + 1, "name": name, "isthing": 1} for i, name in enumerate(CATEGORIES)
    ] + [{"id": BACKGROUND_ID, "name": STUFF_CLASSES[1], "isthing": 0}]
    tmp = panoptic_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    os.replace(tmp, panoptic_json)
    open(marker, "w").close()  # written last: its presence means the maps are complete


def load_shapes_panoptic(split: str) -> List[Dict]:
    """The dicts of ``sn_shapes_{split}`` with ``sem_seg_file_name``; the semantic and panoptic
    maps are generated if missing."""
    dicts = copy.deepcopy(DatasetCatalog.get(f"sn_shapes_{split}"))
    directory = _semseg_dir(split)
    for record in dicts:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        record["sem_seg_file_name"] = os.path.join(directory, f"{stem}.png")
    os.makedirs(dataset_root(), exist_ok=True)
    with FileLock(os.path.join(dataset_root(), ".semseg.lock")):
        _write_maps(dicts, split)
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
            panoptic_root, panoptic_json = _panoptic_paths(split)
            MetadataCatalog.get(name).set(
                panoptic_root=panoptic_root,
                panoptic_json=panoptic_json,
                evaluator_type="coco_panoptic_seg",
                **_STUFF_METADATA,
                **_THING_METADATA,
            )
