"""The semantic FPN head (Panoptic FPN, semantic FPN) with ``MODEL.SEM_SEG_HEAD.NORM`` from our
norm registry."""

from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

from .norms import NamedNorm

__all__ = ["SNSemSegFPNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SNSemSegFPNHead(NamedNorm, SemSegFPNHead):
    """detectron2's semantic FPN head (used by ``PanopticFPN`` and ``SemanticSegmentor``) whose
    conv norms take ``MODEL.SEM_SEG_HEAD.NORM`` from our norm registry ("SN", "SyncSN" or any
    detectron2 norm). Each scale branch has its own norms, so SN keeps per-level statistics.
    In a LazyConfig, ``norm`` is a name and ``sn_options`` the options of SN layers."""

    _norm_arg = "norm"
    _norm_node = "SEM_SEG_HEAD"
