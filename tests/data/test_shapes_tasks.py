"""The panoptic version of the shapes dataset: its COCO panoptic files are deterministic, agree
with its semantic maps and instances, and score PQ 100 against themselves in panopticapi."""

import contextlib
import hashlib
import io
import json
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures.masks import polygon_area
from PIL import Image

from sn_detection.data.shapes_tasks import BACKGROUND_ID, load_shapes_panoptic

NAME = "sn_shapes_panoptic_val"


def _segment_ids(metadata, annotation) -> np.ndarray:
    from panopticapi.utils import rgb2id

    path = os.path.join(metadata.panoptic_root, annotation["file_name"])
    return rgb2id(np.asarray(Image.open(path), dtype=np.uint32))


def test_panoptic_files_are_deterministic(tmp_path, monkeypatch):
    files = []
    for root in ("a", "b"):
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / root))
        load_shapes_panoptic("val")
        panoptic = tmp_path / root / "sn_shapes/panoptic"
        png = hashlib.sha256((panoptic / "val/00001.png").read_bytes()).hexdigest()
        files.append(((panoptic / "val.json").read_bytes(), png))
    assert files[0] == files[1]


def test_panoptic_maps_agree_with_the_semantic_maps_and_the_instances():
    dicts = DatasetCatalog.get(NAME)
    metadata = MetadataCatalog.get(NAME)
    gt = json.load(open(metadata.panoptic_json))
    assert len(gt["annotations"]) == len(gt["images"]) == len(dicts)
    stuff = [c for c in gt["categories"] if not c["isthing"]]
    assert [c["id"] for c in stuff] == [BACKGROUND_ID]
    assert metadata.stuff_dataset_id_to_contiguous_id == {0: 0, BACKGROUND_ID: 1}
    to_dataset = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    for record, annotation in list(zip(dicts, gt["annotations"]))[:5]:
        assert annotation["image_id"] == record["image_id"]
        ids = _segment_ids(metadata, annotation)
        segments = annotation["segments_info"]
        assert sorted(np.unique(ids)) == [s["id"] for s in segments]  # no void, none empty
        background = segments[-1]
        assert background["category_id"] == BACKGROUND_ID
        semseg = np.asarray(Image.open(record["sem_seg_file_name"]))
        np.testing.assert_array_equal(ids == background["id"], semseg == 1)
        things = segments[:-1]
        assert [s["category_id"] for s in things] == [
            to_dataset[a["category_id"]] for a in record["annotations"]
        ]
        for segment, instance in zip(things, record["annotations"]):
            assert segment["area"] == (ids == segment["id"]).sum()
            polygon = np.reshape(instance["segmentation"][0], (-1, 2))
            area = polygon_area(polygon[:, 0], polygon[:, 1])
            assert abs(segment["area"] - area) / area < 0.15


def test_ground_truth_scores_pq_100_against_itself():
    # panopticapi as detectron2's COCOPanopticEvaluator calls it, on numpy 2
    from panopticapi.evaluation import pq_compute

    DatasetCatalog.get(NAME)  # the files are made on first use
    metadata = MetadataCatalog.get(NAME)
    with contextlib.redirect_stdout(io.StringIO()):
        results = pq_compute(
            metadata.panoptic_json,
            metadata.panoptic_json,
            gt_folder=metadata.panoptic_root,
            pred_folder=metadata.panoptic_root,
        )
    for part in ("All", "Things", "Stuff"):
        assert results[part]["pq"] == results[part]["sq"] == results[part]["rq"] == 1.0, part
    assert results["Stuff"]["n"] == 1 and results["Things"]["n"] == 3
