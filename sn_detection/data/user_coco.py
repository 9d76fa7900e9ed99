"""A user's COCO-format files: checked before anything trains, and registered in every process
without code.

A tool that starts other processes (``tools/norm_study.py`` starts ``tools/train_net.py``, which
may start several workers) puts the datasets in the environment variable ``DATASETS_ENV`` as JSON,
``{"name": ["instances.json", "image_dir"], ...}``; importing ``sn_detection`` registers them
(:func:`register_env_datasets`, called by ``sn_detection.data``) in every process that inherits
the environment, as detectron2's ``register_coco_instances`` would.
"""

import json
import os
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from ..utils.cli import InputError

DATASETS_ENV = "SN_DETECTION_COCO_DATASETS"

CocoFiles = Tuple[str, str]  # (json file, image directory)


class CocoFilesError(InputError):
    """A COCO json or image folder that cannot be trained on; the message names the file, the
    entry and the fix."""


def _entries(coco: Dict[str, Any], key: str, where: str) -> List[Dict[str, Any]]:
    value = coco.get(key)
    if not isinstance(value, list) or not value:
        found = "is missing" if value is None else "is empty" if value == [] else "is not a list"
        raise CocoFilesError(
            f"{where}: '{key}' {found}; a COCO instances file has a non-empty list of {key}"
        )
    bad = next((i for i, e in enumerate(value) if not isinstance(e, dict)), None)
    if bad is not None:
        raise CocoFilesError(f"{where}: {key}[{bad}] is not an object ({value[bad]!r})")
    return value


def _first_and_more(items: Sequence[str]) -> str:
    return items[0] + (f" (and {len(items) - 1} more)" if len(items) > 1 else "")


def check_coco_contents(coco: Any, where: str, image_root: str) -> int:
    """Check a loaded COCO instances file (``where`` names it in errors); returns its number of
    categories.

    Raises:
        CocoFilesError: for a file that is not an object, no or empty images/annotations/
            categories, a category without an id or a name, duplicate category ids, an
            annotation whose category_id is not a category, an image missing on disk."""
    if not isinstance(coco, dict):
        raise CocoFilesError(
            f"{where} holds a JSON {type(coco).__name__}, not a COCO instances object "
            '({"images": [...], "annotations": [...], "categories": [...]})'
        )
    categories = _entries(coco, "categories", where)
    for i, c in enumerate(categories):
        if "id" not in c:
            raise CocoFilesError(f"{where}: categories[{i}] has no id; give each category an id")
        if not isinstance(c.get("name"), str) or not c["name"].strip():
            raise CocoFilesError(
                f"{where}: category id {c['id']} (categories[{i}]) has no name; give each "
                "category a non-empty name (the evaluation and the figures show it)"
            )
    repeated = [str(i) for i, n in Counter(c["id"] for c in categories).items() if n > 1]
    if repeated:
        raise CocoFilesError(
            f"{where}: category id {_first_and_more(repeated)} appears more than once in "
            "categories; give each category its own id"
        )
    ids = {c["id"] for c in categories}
    annotations = _entries(coco, "annotations", where)
    unknown = [
        f"{a.get('category_id')!r} (annotation id {a.get('id')})"
        for a in annotations
        if a.get("category_id") not in ids
    ]
    if unknown:
        raise CocoFilesError(
            f"{where}: category_id {_first_and_more(unknown)} is not in categories (ids "
            f"{sorted(ids, key=str)}); fix the annotation or add the category"
        )
    images = _entries(coco, "images", where)
    missing = [
        f"{im.get('file_name')!r} (image id {im.get('id')})"
        for im in images
        if not isinstance(im.get("file_name"), str)
        or not os.path.isfile(os.path.join(image_root, im["file_name"]))
    ]
    if missing:
        raise CocoFilesError(
            f"{where}: image {_first_and_more(missing)} is not in {image_root}; copy the images "
            "there or give the folder that holds them"
        )
    return len(categories)


def check_coco_files(
    option: str, files: Sequence[str], num_classes: Optional[int] = None
) -> CocoFiles:
    """The absolute (json, image directory) of ``files``, after checking both exist and the json's
    contents (:func:`check_coco_contents`), and with ``num_classes`` that the json has that many
    categories; ``option`` (e.g. ``--coco-train``) names them in errors.

    Raises:
        CocoFilesError: naming the option, the file, the entry and the fix."""
    json_file, image_root = (os.path.abspath(p) for p in files)
    if not os.path.isfile(json_file):
        raise CocoFilesError(f"{option}: the COCO json {json_file} does not exist")
    if not os.path.isdir(image_root):
        raise CocoFilesError(f"{option}: the image directory {image_root} does not exist")
    where = f"{option} {json_file}"
    try:
        with open(json_file, encoding="utf-8") as f:
            coco = json.load(f)
    except UnicodeDecodeError as e:
        raise CocoFilesError(
            f"{where} is not UTF-8 text (byte {e.start}); give a COCO json"
        ) from None
    except json.JSONDecodeError as e:
        raise CocoFilesError(
            f"{where} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); give a COCO "
            "instances json"
        ) from None
    count = check_coco_contents(coco, where, image_root)
    if num_classes is not None and count != num_classes:
        raise CocoFilesError(
            f"{json_file} has {count} categories but MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{num_classes}: add MODEL.ROI_HEADS.NUM_CLASSES {count} to the command"
        )
    return json_file, image_root


def register_coco_datasets(datasets: Mapping[str, CocoFiles]) -> None:
    """Register each ``name: (json, image directory)`` as a COCO instances dataset; a name that
    is already registered must have the same files."""
    for name, (json_file, image_root) in datasets.items():
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if (meta.get("json_file"), meta.get("image_root")) != (json_file, image_root):
                raise InputError(
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
        raise InputError(
            f"{DATASETS_ENV} must be JSON {{name: [json_file, image_dir], ...}}, got {value!r}"
        ) from e
    register_coco_datasets(datasets)
    return datasets
