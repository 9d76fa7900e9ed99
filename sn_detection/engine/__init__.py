"""Training-time parts for SN models: hooks (``hooks``), the precise statistics pass
(``precise_sn``) and mixed precision on any device (``amp``)."""

from .amp import SNAMPTrainer, build_train_loop
from .hooks import PreciseSN, SNImportanceWriter, has_statistics_to_update
from .precise_sn import get_sn_modules, update_sn_stats

__all__ = [
    "PreciseSN",
    "SNAMPTrainer",
    "SNImportanceWriter",
    "build_train_loop",
    "get_sn_modules",
    "has_statistics_to_update",
    "update_sn_stats",
]
