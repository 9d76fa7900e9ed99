import os

import pytest

from sn_detection.testing import REPO


@pytest.fixture(scope="session", autouse=True)
def _datasets_in_repo():
    # the shapes dataset is generated once per machine under the repository's datasets/
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
