"""Datasets: importing this registers the embedded shapes dataset with detectron2, its
keypoint and panoptic versions (``shapes_tasks``), and the harder ``sn_clutter`` dataset."""
from .clutter import register_clutter_dataset
from .shapes import prepare_shapes_dataset, register_shapes_dataset
from .shapes_tasks import KEYPOINT_OKS_SIGMAS, register_shapes_task_datasets

register_shapes_dataset()
register_shapes_task_datasets()
register_clutter_dataset()
