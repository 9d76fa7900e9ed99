"""Datasets: importing this registers the embedded shapes dataset with detectron2."""
from .shapes import prepare_shapes_dataset, register_shapes_dataset

register_shapes_dataset()
