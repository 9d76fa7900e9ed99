"""Training-time parts for SN models: hooks (``hooks``) and the precise statistics pass
(``precise_sn``)."""

from .hooks import PreciseSN, SNImportanceWriter, has_statistics_to_update
from .precise_sn import get_sn_modules, update_sn_stats

__all__ = [
    "PreciseSN",
    "SNImportanceWriter",
    "get_sn_modules",
    "has_statistics_to_update",
    "update_sn_stats",
]
