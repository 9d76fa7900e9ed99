"""What SN learned and how norms compare: the IN/LN/BN shares of SN layers, their tables and
figures, the one reader of detectron2's ``metrics.json``, and the norm study's tables and plots.

Modules: ``shares`` (shares of a model, state dict or checkpoint, per part), ``metrics``
(``metrics.json``), ``tables`` (share tables and reports), ``plots`` (figures), ``study_results``
(the norm study's table and curves). The study's run loop is :mod:`sn_detection.study`.
"""

from .shares import (
    CONSOLE_SCALARS,
    PART_ORDER,
    STATS,
    AnalysisError,
    CheckpointShares,
    LayerShares,
    fixed_scalar_name,
    layer_shares,
    load_shares,
    model_shares,
    part_of,
    scalar_name,
    share_scalars,
    shares_from_logits,
    softmax_logits_of,
    sparse_summary,
    state_dict_shares,
    summarize,
)

__all__ = [
    "CONSOLE_SCALARS",
    "PART_ORDER",
    "STATS",
    "AnalysisError",
    "CheckpointShares",
    "LayerShares",
    "fixed_scalar_name",
    "layer_shares",
    "load_shares",
    "model_shares",
    "part_of",
    "scalar_name",
    "share_scalars",
    "shares_from_logits",
    "softmax_logits_of",
    "sparse_summary",
    "state_dict_shares",
    "summarize",
]
