"""Training SN models with detectron2: the trainer (``trainer``), its hooks (``hooks``), precise
statistics (``precise_sn``), mixed precision on any device (``amp``), the checked configs of the
training tools (``config_checks``), ``--resume`` checks (``resume``), and what the tools share
around detectron2's launch (``defaults``: device fallback, DDP arguments, ``launch``)."""

from .amp import AutocastTrainer, autocast_dtype, build_train_loop
from .arguments import parse_train_args
from .config_checks import lazy_training_config, yaml_training_config
from .defaults import ddp_arguments, launch, resolve_device
from .hooks import (
    NonFiniteBatchWarner,
    PreciseSN,
    SNSharesWriter,
    SSNSchedule,
    has_statistics_to_update,
)
from .precise_sn import get_sn_modules, update_sn_stats
from .resume import check_resume, resume_checkpoint, resume_or_load
from .trainer import SNTrainer

__all__ = [
    "AutocastTrainer",
    "NonFiniteBatchWarner",
    "PreciseSN",
    "SNSharesWriter",
    "SSNSchedule",
    "SNTrainer",
    "autocast_dtype",
    "build_train_loop",
    "check_resume",
    "ddp_arguments",
    "get_sn_modules",
    "has_statistics_to_update",
    "launch",
    "lazy_training_config",
    "parse_train_args",
    "resolve_device",
    "resume_checkpoint",
    "resume_or_load",
    "update_sn_stats",
    "yaml_training_config",
]
