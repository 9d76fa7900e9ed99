"""Datasets: importing this registers the embedded shapes dataset with detectron2, its
keypoint and panoptic versions (``shapes_tasks``), the harder ``sn_clutter`` dataset, the
nuclei-like ``sn_nuclei`` dataset, and the COCO files a tool passed in the environment
(``user_coco``)."""

from .clutter import register_clutter_dataset
from .nuclei import register_nuclei_dataset
from .shapes import prepare_shapes_dataset, register_shapes_dataset
from .shapes_tasks import KEYPOINT_OKS_SIGMAS, register_shapes_task_datasets
from .user_coco import register_env_datasets

register_shapes_dataset()
register_shapes_task_datasets()
register_clutter_dataset()
register_nuclei_dataset()
register_env_datasets()

__all__ = ["KEYPOINT_OKS_SIGMAS", "prepare_shapes_dataset"]
