"""The evaluator of a dataset, for tools/train_net.py, tools/lazyconfig_train_net.py and the tests.

detectron2's ``COCOEvaluator`` no longer reads ``TEST.KEYPOINT_OKS_SIGMAS`` itself: the caller
passes ``kpt_oks_sigmas``, or keypoint AP is computed with COCO's 17 person sigmas, which fails on
any other keypoint set. Panoptic FPN's datasets (those with ``stuff_classes``) also get
``SemSegEvaluator``. Panoptic quality (``COCOPanopticEvaluator``) needs panopticapi, which this
project does not install: PQ is not evaluated.
"""
from typing import Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from PIL import Image

__all__ = ["build_sn_evaluator"]


def _load_label_map(path: str, dtype=int) -> np.ndarray:
    # detectron2's default loader passes copy=False to np.array, which numpy 2 refuses
    with open(path, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def build_sn_evaluator(
    dataset_name: str,
    output_dir: Optional[str] = None,
    kpt_oks_sigmas: Sequence[float] = (),
    distributed: bool = True,
) -> DatasetEvaluator:
    """COCO evaluation (box, mask and keypoint AP, whichever the model predicts) of
    ``dataset_name``, plus semantic segmentation (mIoU) when its metadata has ``stuff_classes``.

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
    if not hasattr(MetadataCatalog.get(dataset_name), "stuff_classes"):
        return coco
    semseg = SemSegEvaluator(
        dataset_name,
        distributed=distributed,
        output_dir=output_dir,
        sem_seg_loading_fn=_load_label_map,
    )
    return DatasetEvaluators([semseg, coco])
