"""Loading checkpoints safely: the released ImageNet SN ones (by contents, strictly) and
detectron2's.

Modules: ``reading`` (reading any checkpoint file without running code), ``official_layout``
(recognising and converting the official ImageNet SN layout), ``fitting`` (fitting weights to a
built model and saying what did not fit), ``sn_checkpointer`` (the detectron2 checkpointer),
``errors`` (the error type and how messages quote keys).
"""

from .errors import CheckpointError
from .fitting import fit_to_model
from .official_layout import (
    SN_IMAGENET_KEY,
    Conversion,
    SNImageNetInfo,
    convert_official,
    inspect_state_dict,
    official_state_dict,
    strip_module_prefix,
)
from .reading import read_checkpoint
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
    "strip_module_prefix",
]
