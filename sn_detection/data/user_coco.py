"""A user's COCO-format files registered in every process, without code.

A tool that starts other processes (``tools/norm_study.py`` starts ``tools/train_net.py``, which
may start several workers) puts the datasets in the environment variable ``DATASETS_ENV`` as JSON,
``{"name": ["instances.json", "image_dir"], ...}``; importing ``sn_detection`` registers them
(:func:`register_env_datasets`, called by ``sn_detection.data``) in every process that inherits
the environment, as detectron2's ``register_coco_instances`` would.
"""
import json
import os
from typing import Dict, Mapping, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

DATASETS_ENV = "SN_DETECTION_COCO_DATASETS"

CocoFiles = Tuple[str, str]  # (json file, image directory)


def check_coco_files(name: str, files: Sequence[str]) -> CocoFiles:
    """The absolute (json, image directory) of ``files``; raises ValueError naming what is
    missing."""
    json_file, image_root = (os.path.abspath(p) for p in files)
    if not os.path.isfile(json_file):
        raise ValueError(f"{name}: the COCO json {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise ValueError(f"{name}: the image directory {image_root} does not exist")
    return json_file, image_root


def register_coco_datasets(datasets: Mapping[str, CocoFiles]) -> None:
    """Register each ``name: (json, image directory)`` as a COCO instances dataset; a name that
    is already registered must have the same files."""
    for name, (json_file, image_root) in datasets.items():
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file"), meta.get("image_root")) != (json_file, image_root):
                raise ValueError(
                    f"dataset {name!r} is already registered with other files "
                    f"({meta.get('json_file')}, {meta.get('image_root')}); choose another name"
                )
            continue
        register_coco_instances(name, {}, json_file, image_root)


def env_value(datasets: Mapping[str, CocoFiles]) -> str:
    """The value of ``DATASETS_ENV`` that registers ``datasets`` in the processes it reaches."""
    return json.dumps({name: list(files) for name, files in datasets.items()})


def register_env_datasets() -> Dict[str, CocoFiles]:
    """Register the datasets named in ``DATASETS_ENV`` (if set); returns them."""
    value = os.environ.get(DATASETS_ENV)
    if not value:
        return {}
    try:
        datasets = {name: tuple(files) for name, files in json.loads(value).items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(
            f"{DATASETS_ENV} must be JSON {{name: [json_file, image_dir], ...}}, got {value!r}"
        ) from e
    register_coco_datasets(datasets)
    return datasets
