"""The embedded clutter dataset: deterministic, valid COCO, occlusion handled, registered."""

import dataclasses
import hashlib
import itertools
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from sn_detection.data.clutter import CATEGORIES, CLUTTER, MIN_PIXELS, SPLITS

TINY = dataclasses.replace(CLUTTER, splits={"val": (12, SPLITS["val"][1])})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clutter")
    return root, TINY.prepare(str(root))["val"]


def test_generation_is_deterministic(tiny, tmp_path):
    root, json_file = tiny
    again = TINY.generate_split("val", str(tmp_path))
    assert json.load(open(json_file)) == json.load(open(again))
    for name in ("00001.png", "00012.png"):
        a, b = (hashlib.sha256((r / "val" / name).read_bytes()).digest() for r in (root, tmp_path))
        assert a == b


def test_annotations_are_valid_coco_with_masks_matching_boxes_and_areas(tiny):
    coco = COCO(tiny[1])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        assert mask.shape == (image["height"], image["width"])
        assert ann["area"] == mask.sum() >= MIN_PIXELS
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] and y + h <= image["height"]
        ys, xs = np.nonzero(mask)  # the box is the mask's tight box
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)


def test_masks_are_the_visible_parts_of_overlapping_objects(tiny):
    coco = COCO(tiny[1])
    overlapping_boxes = 0
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        for a, b in itertools.combinations(anns, 2):
            # an occluded object's mask excludes what covers it: no pixel is in two masks
            assert not (coco.annToMask(a) & coco.annToMask(b)).any()
            ious = mask_util.iou([a["bbox"]], [b["bbox"]], [0])
            overlapping_boxes += ious[0, 0] > 0
    assert overlapping_boxes > 10  # objects do overlap


def test_images_vary_in_size_and_hold_many_objects_of_every_size(tiny):
    coco = COCO(tiny[1])
    sizes = {(im["height"], im["width"]) for im in coco.imgs.values()}
    assert len(sizes) > 6
    areas = np.array([a["area"] for a in coco.anns.values()])
    assert len(areas) / len(coco.imgs) > 5
    assert (areas < 16**2).any() and (areas > 48**2).any()  # small ones and large ones


def test_registered_with_coco_evaluation():
    assert {"sn_clutter_train", "sn_clutter_val"} <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("sn_clutter_val")
    assert meta.evaluator_type == "coco" and meta.json_file.endswith("sn_clutter/val.json")
