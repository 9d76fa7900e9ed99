"""Loading the released ImageNet SN checkpoints (by contents, strictly) and detectron2 ones."""

from .imagenet_sn import (
    SN_IMAGENET_KEY,
    CheckpointError,
    Conversion,
    SNImageNetInfo,
    convert_official,
    fit_to_model,
    inspect_state_dict,
    official_state_dict,
    read_checkpoint,
)
from .sn_checkpointer import SNCheckpointer

__all__ = [
    "SN_IMAGENET_KEY",
    "CheckpointError",
    "Conversion",
    "SNImageNetInfo",
    "SNCheckpointer",
    "convert_official",
    "fit_to_model",
    "inspect_state_dict",
    "official_state_dict",
    "read_checkpoint",
]
