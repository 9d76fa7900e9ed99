"""The evaluator of a dataset, for tools/train_net.py, tools/lazyconfig_train_net.py and the tests.

detectron2's ``COCOEvaluator`` no longer reads ``TEST.KEYPOINT_OKS_SIGMAS`` itself: the caller
passes ``kpt_oks_sigmas``, or keypoint AP is computed with COCO's 17 person sigmas, which fails on
any other keypoint set. Panoptic FPN's datasets (those with ``stuff_classes``) also get
``SemSegEvaluator``, and those with a COCO panoptic json (``panoptic_json``) panoptic quality
(PQ, SQ, RQ) by :class:`PanopticEvaluator`, detectron2's ``COCOPanopticEvaluator`` (through
panopticapi, installed by ``make setup``) on the images evaluated.
"""

import itertools
import json
import logging
import os
import tempfile
from typing import Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["PanopticEvaluator", "build_sn_evaluator"]

logger = logging.getLogger(__name__)


def _load_label_map(path: str, dtype=int) -> np.ndarray:
    # detectron2's default loader passes copy=False to np.array, which numpy 2 refuses
    with open(path, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


class PanopticEvaluator(COCOPanopticEvaluator):
    """detectron2's ``COCOPanopticEvaluator`` over the images it was given, as ``COCOEvaluator``
    evaluates the images it has predictions for. detectron2's compares the predictions with every
    image of the dataset's ``panoptic_json`` and fails ("no prediction for the image with id")
    when only some were evaluated (part of a test set, as in the smoke tests); here the ground
    truth json is first cut to the evaluated images. Call ``evaluate`` on every process."""

    def evaluate(self):
        own = [p["image_id"] for p in self._predictions]
        evaluated = set(itertools.chain(*comm.all_gather(own)))
        if not evaluated:
            logger.warning("PanopticEvaluator: no predictions, no panoptic quality.")
            return {}
        metadata = self._metadata
        with tempfile.TemporaryDirectory(prefix="panoptic_gt") as directory:
            if comm.is_main_process():
                with PathManager.open(metadata.panoptic_json) as f:
                    gt = json.load(f)
                gt["images"] = [i for i in gt["images"] if i["id"] in evaluated]
                gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in evaluated]
                path = os.path.join(directory, os.path.basename(metadata.panoptic_json))
                with open(path, "w") as f:
                    json.dump(gt, f)
                self._metadata = Metadata(**dict(metadata.as_dict(), panoptic_json=path))
            try:
                return super().evaluate()
            finally:
                self._metadata = metadata


def build_sn_evaluator(
    dataset_name: str,
    output_dir: Optional[str] = None,
    kpt_oks_sigmas: Sequence[float] = (),
    distributed: bool = True,
) -> DatasetEvaluator:
    """COCO evaluation (box, mask and keypoint AP, whichever the model predicts) of
    ``dataset_name``, plus semantic segmentation (mIoU) when its metadata has ``stuff_classes``
    and panoptic quality (PQ, SQ, RQ) when it has ``panoptic_json``.

    Args:
        output_dir: where the predictions and the COCO json converted from the dataset dicts
            are written (the json path is remembered in the dataset's metadata for the process).
        kpt_oks_sigmas: one OKS sigma per keypoint (``TEST.KEYPOINT_OKS_SIGMAS``); empty for
            COCO's person keypoints.
    """
    coco = COCOEvaluator(
        dataset_name,
        distributed=distributed,
        output_dir=output_dir,
        kpt_oks_sigmas=tuple(kpt_oks_sigmas),
    )
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "stuff_classes"):
        return coco
    semseg = SemSegEvaluator(
        dataset_name,
        distributed=distributed,
        output_dir=output_dir,
        sem_seg_loading_fn=_load_label_map,
    )
    if not hasattr(metadata, "panoptic_json"):
        return DatasetEvaluators([semseg, coco])
    return DatasetEvaluators([semseg, coco, PanopticEvaluator(dataset_name, output_dir)])
