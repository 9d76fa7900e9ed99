"""--resume: the checkpoint that OUTPUT_DIR/last_checkpoint names is checked before loading, and
each way it can be wrong is one error naming the file and the fix."""

import pytest
import torch
from torch import nn

from sn_detection.checkpoint import CheckpointError, SNCheckpointer
from sn_detection.engine import check_resume, resume_checkpoint, resume_or_load
from sn_detection.layers import SwitchNorm2d
from sn_detection.utils.cli import InputError


def _model(norm) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), norm(4))


def _gn(channels):
    return nn.GroupNorm(2, channels)


def _saved(tmp_path, norm=SwitchNorm2d, name="model_0000009") -> SNCheckpointer:
    """A checkpointer of a fresh SN model on ``tmp_path``, where a model of ``norm`` saved
    ``name`` (with an optimizer, as training saves) and last_checkpoint names it."""
    trained = _model(norm)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1, momentum=0.9)
    SNCheckpointer(trained, str(tmp_path), optimizer=optimizer).save(name)
    model = _model(SwitchNorm2d)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return SNCheckpointer(model, str(tmp_path), optimizer=optimizer)


def test_without_last_checkpoint_resume_starts_from_the_weights(tmp_path):
    assert resume_checkpoint(str(tmp_path)) is None


def test_an_empty_last_checkpoint_is_named_with_the_fix(tmp_path):
    (tmp_path / "last_checkpoint").write_text("\n")
    with pytest.raises(InputError, match="last_checkpoint is empty: delete it or train without"):
        resume_checkpoint(str(tmp_path))


def test_a_last_checkpoint_that_is_not_text_is_named_with_the_fix(tmp_path):
    (tmp_path / "last_checkpoint").write_bytes(b"\xff\xfe\x00model")
    with pytest.raises(InputError, match="last_checkpoint is not text .*: delete it or train"):
        resume_checkpoint(str(tmp_path))


def test_a_last_checkpoint_naming_a_missing_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000019.pth")
    with pytest.raises(InputError, match="names model_0000019.pth, which is not a file"):
        resume_checkpoint(str(tmp_path))


def test_a_truncated_checkpoint_names_the_file_and_last_checkpoint(tmp_path):
    checkpointer = _saved(tmp_path)
    path = tmp_path / "model_0000009.pth"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="model_0000009.pth.*named by last_checkpoint"):
        check_resume(checkpointer)


def test_a_checkpoint_of_another_model_is_refused_before_anything_loads(tmp_path):
    checkpointer = _saved(tmp_path, norm=_gn)  # the same run directory, trained with GN
    before = {k: v.clone() for k, v in checkpointer.model.state_dict().items()}
    with pytest.raises(InputError, match="model_0000009.pth was trained with another model"):
        resume_or_load(checkpointer, "", resume=True)
    after = checkpointer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_difference_names_the_tensors_the_checkpoint_lacks(tmp_path):
    checkpointer = _saved(tmp_path, norm=_gn)
    with pytest.raises(
        InputError, match=r"it lacks 4 tensors of the model \(1\.\{mean_weight,running_mean"
    ):
        check_resume(checkpointer)


def test_a_checkpoint_of_the_same_model_resumes(tmp_path):
    checkpointer = _saved(tmp_path)
    saved = torch.load(tmp_path / "model_0000009.pth", weights_only=True)["model"]
    resume_or_load(checkpointer, "", resume=True)
    state = checkpointer.model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
