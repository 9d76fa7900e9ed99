"""Checkpoint files are read without running code, in every format and entry point
(MODEL.WEIGHTS, --eval-only, --resume); detectron2's model-zoo pickles keep loading; a GN or BN
checkpoint loaded into an SN model says in one line which SN layers start from scratch."""

import logging
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sn_detection import SwitchNorm2d
from sn_detection.checkpoint import CheckpointError, SNCheckpointer, read_checkpoint
from sn_detection.testing import RunsCode


class Net(nn.Module):
    """conv + norm + conv + norm: the smallest model with SN layers."""

    def __init__(self, norm=SwitchNorm2d):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, 4, 1), norm(4)
        self.conv2, self.norm2 = nn.Conv2d(4, 4, 1), norm(4)


def _gn(c):
    return nn.GroupNorm(2, c)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code_ran"
    yield path
    assert not path.exists(), "unpickling ran code from the weights file"


def _write_pickle(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


@pytest.mark.parametrize("suffix", [".pkl", ".pyth", ".pth", ""])
def test_a_pickle_that_runs_code_is_refused_in_one_line(tmp_path, marker, suffix):
    path = _write_pickle(tmp_path / f"evil{suffix}", {"model": {"w": RunsCode(marker)}})
    with pytest.raises(CheckpointError) as e:
        SNCheckpointer(Net()).load(path)
    message = str(e.value)
    assert "\n" not in message and "posix.system" in message and path in message


def test_a_torch_file_that_runs_code_is_refused(tmp_path, marker):
    path = str(tmp_path / "evil.pkl")  # a torch.save file under the suffix our converter writes
    torch.save({"model": {"w": RunsCode(marker)}}, path)
    with pytest.raises(CheckpointError, match="posix.system"):
        SNCheckpointer(Net()).load(path)
    with pytest.raises(CheckpointError, match="posix.system"):
        read_checkpoint(path)


def test_resume_refuses_a_last_checkpoint_that_runs_code(tmp_path, marker):
    _write_pickle(tmp_path / "model_0000009.pkl", {"model": {"w": RunsCode(marker)}})
    (tmp_path / "last_checkpoint").write_text("model_0000009.pkl")
    with pytest.raises(CheckpointError, match="posix.system"):
        SNCheckpointer(Net(), save_dir=str(tmp_path)).resume_or_load("", resume=True)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_model_zoo_pickle_loads_exactly(tmp_path, protocol):
    """As detectron2's model zoo files are written: a dict of numpy arrays under "model", with
    "__author__" (tools/convert-torchvision-to-d2.py; protocol 2 for the older files)."""
    torch.manual_seed(0)
    source = Net()
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    path = _write_pickle(
        tmp_path / "model_zoo.pkl",
        {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": False},
        protocol,
    )
    target = Net()
    SNCheckpointer(target).load(path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert isinstance(read_checkpoint(path)["model"]["conv1.weight"], np.ndarray)


def test_gn_checkpoint_into_sn_model_says_which_sn_layers_start_from_scratch(tmp_path, caplog):
    torch.manual_seed(0)
    gn = Net(norm=_gn)
    path = str(tmp_path / "gn.pth")
    torch.save({"model": gn.state_dict()}, path)
    sn = Net()
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        SNCheckpointer(sn).load(path)
    lines = [r.getMessage() for r in caplog.records if "start from scratch" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("2 of 2 SN layers start from scratch") and "GN or BN" in lines[0]
    assert torch.equal(sn.conv1.weight, gn.conv1.weight)  # what the checkpoint has is loaded
    assert torch.equal(sn.norm1.weight, gn.norm1.weight)
    assert torch.equal(sn.norm1.mean_weight, torch.ones(3))  # the SN mixture is at its init


def test_sn_checkpoint_into_sn_model_warns_nothing(tmp_path, caplog):
    path = str(tmp_path / "sn.pth")
    torch.save({"model": Net().state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        SNCheckpointer(Net()).load(path)
    assert not [r for r in caplog.records if "start from scratch" in r.getMessage()]


def test_partial_sn_checkpoint_names_the_layers_left_from_scratch(tmp_path, caplog):
    state = {k: v for k, v in Net().state_dict().items() if not k.startswith("norm2.")}
    path = str(tmp_path / "partial.pth")
    torch.save({"model": state}, path)
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        SNCheckpointer(Net()).load(path)
    (line,) = [r.getMessage() for r in caplog.records if "start from scratch" in r.getMessage()]
    assert line.startswith("1 of 2 SN layers") and "norm2" in line


@pytest.mark.parametrize("what", ["does not exist", "is a directory"])
def test_a_missing_or_directory_weights_path_is_a_one_line_error(tmp_path, what):
    path = tmp_path / "model_final.pth"
    if what == "is a directory":
        path.mkdir()
    with pytest.raises(CheckpointError, match=f"{path} {what}") as e:
        SNCheckpointer(Net()).load(str(path))
    assert "\n" not in str(e.value)
