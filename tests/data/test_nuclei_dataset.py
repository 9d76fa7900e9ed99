"""The embedded nuclei dataset: deterministic, valid COCO, many small touching nuclei, one class."""

import dataclasses
import hashlib
import itertools
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools.coco import COCO

from sn_detection.data.nuclei import CATEGORIES, IMAGE_SIZE, MIN_PIXELS, NUCLEI, SPLITS

TINY = dataclasses.replace(NUCLEI, splits={"val": (8, SPLITS["val"][1])})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuclei")
    return root, TINY.prepare(str(root))["val"]


def test_generation_is_deterministic(tiny, tmp_path):
    root, json_file = tiny
    again = TINY.generate_split("val", str(tmp_path))
    assert json.load(open(json_file)) == json.load(open(again))
    for name in ("00001.png", "00008.png"):
        a, b = (hashlib.sha256((r / "val" / name).read_bytes()).digest() for r in (root, tmp_path))
        assert a == b


def test_annotations_are_valid_coco_with_masks_matching_boxes_and_areas(tiny):
    coco = COCO(tiny[1])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.imgs[ann["image_id"]]
        assert (image["height"], image["width"]) == (IMAGE_SIZE, IMAGE_SIZE)
        mask = coco.annToMask(ann)
        assert ann["area"] == mask.sum() >= MIN_PIXELS
        ys, xs = np.nonzero(mask)  # the box is the mask's tight box
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_images_hold_many_small_nuclei_that_touch_but_never_share_pixels(tiny):
    coco = COCO(tiny[1])
    touching = 0
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) >= 8
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for a, b in itertools.combinations(masks, 2):
            assert not (a & b).any()  # a covered nucleus's mask is its visible part
            touching += (np.roll(a, 1, axis=0) & b).any() or (np.roll(a, 1, axis=1) & b).any()
    assert touching > 8
    areas = np.array([a["area"] for a in coco.anns.values()])
    assert areas.max() < 20**2  # all small: at most about 18 px across


def test_registered_with_coco_evaluation():
    assert {"sn_nuclei_train", "sn_nuclei_val"} <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("sn_nuclei_val")
    assert meta.evaluator_type == "coco" and meta.json_file.endswith("sn_nuclei/val.json")
