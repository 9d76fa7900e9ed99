import os
import pathlib

import pytest
from detectron2.config import get_cfg

from sn_detection import add_sn_config

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load_config(path, *opts):
    """A frozen-free cfg from a repository config file (CPU), with KEY VALUE overrides."""
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


@pytest.fixture(scope="session", autouse=True)
def _datasets_in_repo():
    # the shapes dataset is generated once per machine under the repository's datasets/
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
