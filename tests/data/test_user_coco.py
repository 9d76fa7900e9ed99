"""A user's COCO files: checked before training (one error naming the file, the entry and the fix),
and, passed through the environment, registered on import in any process."""

import json
import os
import subprocess
import sys

import pytest
from detectron2.data import MetadataCatalog

from sn_detection.data.user_coco import (
    DATASETS_ENV,
    CocoFilesError,
    check_coco_files,
    env_value,
    register_coco_datasets,
)


def _files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "a.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    return str(tmp_path / "a.json"), str(tmp_path / "images")


def test_a_process_with_the_variable_registers_the_files_on_import(tmp_path):
    files = _files(tmp_path)
    code = (
        "import sn_detection; from detectron2.data import MetadataCatalog as M; "
        "m = M.get('my_train'); print(m.json_file, m.image_root, m.evaluator_type)"
    )
    env = dict(os.environ, **{DATASETS_ENV: env_value({"my_train": files})})
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == [*files, "coco"]


def test_a_name_registered_with_other_files_is_refused(tmp_path):
    files = _files(tmp_path)
    register_coco_datasets({"user_coco_test": files})
    register_coco_datasets({"user_coco_test": files})  # the same files again: nothing to do
    assert MetadataCatalog.get("user_coco_test").json_file == files[0]
    with pytest.raises(ValueError, match="already registered with other files"):
        register_coco_datasets({"user_coco_test": (files[0], "/elsewhere")})


def _coco(tmp_path, **changes):
    """A valid COCO instances file of two images (both on disk) with ``changes`` applied; returns
    the files as --coco-train takes them."""
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "images" / name).write_bytes(b"")
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}],
    }
    for key, value in changes.items():
        if value is None:
            del coco[key]
        else:
            coco[key] = value
    (tmp_path / "a.json").write_text(json.dumps(coco))
    return [str(tmp_path / "a.json"), str(tmp_path / "images")]


def test_a_valid_coco_file_passes_the_checks(tmp_path):
    files = _coco(tmp_path)
    assert check_coco_files("--coco-train", files, num_classes=2) == tuple(files)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"images": [{"id": 1, "file_name": "a.png"}, {"id": 3, "file_name": "gone.png"}]},
            r"image 'gone.png' \(image id 3\) is not in .*images; copy the images",
        ),
        (
            {"annotations": [{"id": 7, "image_id": 1, "category_id": 5}]},
            r"category_id 5 \(annotation id 7\) is not in categories \(ids \[1, 2\]\); fix",
        ),
        ({"annotations": None}, "'annotations' is missing; a COCO instances file has"),
        ({"annotations": []}, "'annotations' is empty; a COCO instances file has"),
        (
            {"categories": [{"id": 1, "name": "cell"}, {"id": 2}]},
            r"category id 2 \(categories\[1\]\) has no name; give each category a non-empty name",
        ),
        (
            {"categories": [{"id": 1, "name": "cell"}, {"id": 1, "name": "debris"}]},
            "category id 1 appears more than once in categories; give each category its own id",
        ),
    ],
)
def test_a_coco_file_that_cannot_be_trained_on_is_refused_naming_file_and_entry(
    tmp_path, changes, message
):
    files = _coco(tmp_path, **changes)
    with pytest.raises(CocoFilesError, match=f"--coco-train {files[0]}: {message}"):
        check_coco_files("--coco-train", files)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"images": [', r"is not valid JSON \(line 1, column 13: Expecting value\)"),
        ("[]", "holds a JSON list, not a COCO instances object"),
    ],
)
def test_a_file_that_is_not_a_coco_object_is_refused(tmp_path, text, message):
    files = _coco(tmp_path)
    (tmp_path / "a.json").write_text(text)
    with pytest.raises(CocoFilesError, match=f"--coco-test {files[0]} {message}"):
        check_coco_files("--coco-test", files)


def test_a_class_count_other_than_the_files_is_refused_with_the_override_to_add(tmp_path):
    files = _coco(tmp_path)
    with pytest.raises(CocoFilesError, match="add MODEL.ROI_HEADS.NUM_CLASSES 2 to the command"):
        check_coco_files("--coco-train", files, num_classes=3)
