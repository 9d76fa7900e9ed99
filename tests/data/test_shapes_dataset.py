"""The embedded shapes dataset: deterministic, valid COCO, registered with detectron2."""

import hashlib
import json

from detectron2.data import DatasetCatalog, MetadataCatalog
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from sn_detection.data.shapes import CATEGORIES, SPLITS, generate_split, prepare_shapes_dataset


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generation_is_deterministic(tmp_path):
    a = generate_split("val", str(tmp_path / "a"))
    b = generate_split("val", str(tmp_path / "b"))
    assert json.load(open(a)) == json.load(open(b))
    assert _digest(tmp_path / "a/val/00001.png") == _digest(tmp_path / "b/val/00001.png")


def test_json_is_valid_coco_with_polygon_masks(tmp_path):
    paths = prepare_shapes_dataset(str(tmp_path), splits=("val",))
    coco = COCO(paths["val"])
    assert len(coco.getImgIds()) == SPLITS["val"][0]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= SPLITS["val"][0]
    for ann in anns[:20]:
        rle = coco.annToRLE(ann)
        # the polygon area agrees with the rasterised mask and the box encloses it
        assert abs(mask_util.area(rle) - ann["area"]) / ann["area"] < 0.15
        x, y, w, h = mask_util.toBbox(rle)
        bx, by, bw, bh = ann["bbox"]
        assert bx - 1 <= x and by - 1 <= y and x + w <= bx + bw + 1 and y + h <= by + bh + 1


def test_registered_and_loaded_on_first_use():
    dicts = DatasetCatalog.get("sn_shapes_val")
    assert len(dicts) == SPLITS["val"][0]
    assert dicts[0]["annotations"][0]["segmentation"]
    meta = MetadataCatalog.get("sn_shapes_val")
    assert meta.evaluator_type == "coco" and meta.thing_classes == list(CATEGORIES)


def test_val_10_is_the_first_10_images_of_val(tmp_path):
    paths = prepare_shapes_dataset(str(tmp_path), splits=("val", "val_10"))
    val, val_10 = (json.load(open(paths[split])) for split in ("val", "val_10"))
    assert val_10["images"] == val["images"][:10]
    assert val_10["annotations"] == [a for a in val["annotations"] if a["image_id"] <= 10]
    assert _digest(tmp_path / "val_10/00010.png") == _digest(tmp_path / "val/00010.png")
