"""A user's COCO files passed through the environment are registered on import, in any process."""
import json
import os
import subprocess
import sys

import pytest
from detectron2.data import MetadataCatalog

from sn_detection.data.user_coco import DATASETS_ENV, env_value, register_coco_datasets


def _files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "a.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
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
