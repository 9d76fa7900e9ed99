"""Checks before ``--resume``: ``last_checkpoint`` in the output directory names a checkpoint that
exists, reads, and was written by a model with the same tensors as the one built. Without them,
fvcore fails with "Checkpoint <dir>/ not found!", a UnicodeDecodeError, or an optimizer
param-group ValueError after loading part of the weights."""

import os
from typing import Any, Dict, Mapping, Optional, Tuple

from fvcore.common.checkpoint import Checkpointer
from torch import nn

from ..checkpoint import CheckpointError, read_checkpoint
from ..checkpoint.errors import sample_keys
from ..checkpoint.fitting import BOOKKEEPING
from ..utils.cli import InputError

__all__ = ["check_resume", "resume_checkpoint", "resume_or_load"]

LAST_CHECKPOINT = "last_checkpoint"  # the file fvcore's Checkpointer writes after each save
NO_RESUME = "train without --resume"


def resume_checkpoint(save_dir: str) -> Optional[str]:
    """The checkpoint that ``save_dir/last_checkpoint`` names (None when there is no
    ``last_checkpoint``: resuming then starts from the weights, as in detectron2), or an
    :class:`InputError` saying what is wrong with it and the fix."""
    record = os.path.join(save_dir, LAST_CHECKPOINT)
    if not os.path.isfile(record):
        return None
    with open(record, "rb") as f:
        data = f.read()
    try:
        name = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(
            f"{record} is not text (it should name a checkpoint, e.g. model_0004999.pth): "
            f"delete it or {NO_RESUME}"
        ) from None
    if not name:
        raise InputError(f"{record} is empty: delete it or {NO_RESUME}")
    path = os.path.join(save_dir, name)
    if not os.path.isfile(path):
        raise InputError(
            f"{record} names {name}, which is not a file in {save_dir}: write the name of an "
            f"existing checkpoint into it, delete it, or {NO_RESUME}"
        )
    return path


def _shapes(state: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
    shapes = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        shapes[key] = tuple(getattr(value, "shape", ()))
    return shapes


def _difference(path: str, checkpoint: Mapping[str, Any], model: nn.Module) -> Optional[str]:
    """What differs between the tensors of ``checkpoint["model"]`` and ``model`` (None if
    nothing)."""
    state = checkpoint.get("model")
    if not isinstance(state, Mapping):
        return f"{path} has no model state ('model' entry)"
    saved, built = _shapes(state), _shapes(model.state_dict())
    missing = [k for k in built if k not in saved and k.rpartition(".")[2] not in BOOKKEEPING]
    unexpected = [k for k in saved if k not in built]
    reshaped = [k for k in built if k in saved and saved[k] != built[k]]
    parts = []
    if missing:
        parts.append(f"it lacks {len(missing)} tensors of the model ({sample_keys(missing, 2)})")
    if unexpected:
        parts.append(
            f"it has {len(unexpected)} tensors the model lacks ({sample_keys(unexpected, 2)})"
        )
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} tensors differ in shape ({k}: {saved[k]} saved, {built[k]} built)"
        )
    return "; ".join(parts) or None


def check_resume(checkpointer: Checkpointer) -> None:
    """Before ``checkpointer.resume_or_load(..., resume=True)``: the checkpoint that
    ``last_checkpoint`` names (:func:`resume_checkpoint`) reads, and holds exactly the tensors of
    ``checkpointer.model`` with their shapes. Raises :class:`InputError` (a
    :class:`CheckpointError` for an unreadable file) naming the file and the fix. Reads the
    checkpoint once more than the resume itself."""
    path = resume_checkpoint(checkpointer.save_dir)
    if path is None:
        return
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} (named by {LAST_CHECKPOINT}): write the name of an earlier checkpoint into "
            f"{os.path.join(checkpointer.save_dir, LAST_CHECKPOINT)}, or {NO_RESUME}"
        ) from None
    if not isinstance(checkpoint, Mapping):
        difference = f"{path} holds a {type(checkpoint).__name__}, not a checkpoint"
    else:
        difference = _difference(path, checkpoint, checkpointer.model)
    if difference:
        raise InputError(
            f"{path} was trained with another model than this config builds ({difference}): "
            "resume with the config it was trained with, or use a new output directory"
        )


def resume_or_load(checkpointer: Checkpointer, weights: str, resume: bool) -> Dict[str, Any]:
    """``checkpointer.resume_or_load(weights, resume=resume)``, with :func:`check_resume` first
    when resuming."""
    if resume:
        check_resume(checkpointer)
    return checkpointer.resume_or_load(weights, resume=resume)
