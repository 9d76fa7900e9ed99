import os

import pytest
import torch

from sn_detection.testing import REPO

# One torch thread in this process and in every process a test starts: the tests' tensors are tiny,
# several tests run two processes at once, and threads beyond the cores only spin.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def _datasets_in_repo():
    # the embedded datasets are generated once per machine under the repository's datasets/
    os.environ.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
