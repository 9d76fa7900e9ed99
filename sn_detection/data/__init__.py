"""Datasets: importing this registers the embedded shapes dataset with detectron2, and its
keypoint and panoptic versions (``shapes_tasks``)."""
from .shapes import prepare_shapes_dataset, register_shapes_dataset
from .shapes_tasks import KEYPOINT_OKS_SIGMAS, register_shapes_task_datasets

register_shapes_dataset()
register_shapes_task_datasets()
