"""RoI heads whose norms may be SN, SyncSN or any detectron2 norm: the conv+fc box head (also in
Cascade R-CNN's stages), the mask head, and the res5 head of C4 models."""

from detectron2.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    FastRCNNConvFCHead,
    MaskRCNNConvUpsampleHead,
    Res5ROIHeads,
)

from .backbone import zero_init_last_switchnorm_of
from .norms import NamedNorm, with_norm_callables

__all__ = ["SNFastRCNNConvFCHead", "SNMaskRCNNConvUpsampleHead", "SNRes5ROIHeads"]


@ROI_BOX_HEAD_REGISTRY.register()
class SNFastRCNNConvFCHead(NamedNorm, FastRCNNConvFCHead):
    """detectron2's conv+fc box head (e.g. 4conv1fc) with ``MODEL.ROI_BOX_HEAD.NORM`` resolved by
    our norm registry. Its norms see all RoIs of the batch as the batch dimension. Cascade R-CNN
    builds one per stage from the same keys (``MODEL.ROI_BOX_HEAD.NAME``).

    In a LazyConfig, ``conv_norm`` is a name ("SN", "GN", ...) and ``sn_options`` the options of
    SN layers (:mod:`sn_detection.modeling.lazy`)."""

    _norm_node = "ROI_BOX_HEAD"


@ROI_MASK_HEAD_REGISTRY.register()
class SNMaskRCNNConvUpsampleHead(NamedNorm, MaskRCNNConvUpsampleHead):
    """detectron2's mask head with ``MODEL.ROI_MASK_HEAD.NORM`` resolved by our norm registry; in
    a LazyConfig, ``conv_norm`` is a name and ``sn_options`` the options of SN layers."""

    _norm_node = "ROI_MASK_HEAD"


@ROI_HEADS_REGISTRY.register()
class SNRes5ROIHeads(Res5ROIHeads):
    """detectron2's C4 RoI heads, whose res5 stage takes ``MODEL.RESNETS.NORM`` from our norm
    registry (as the backbone's stages); MODEL.SN.LAST_GAMMA applies to its blocks too.

    res5 here is trained (FREEZE_AT freezes only backbone stages), so its SN layers stay
    trainable. Its norms see all RoIs of the batch as the batch dimension.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(with_norm_callables(cfg, ["RESNETS"]))
        if cfg.MODEL.SN.LAST_GAMMA:
            zero_init_last_switchnorm_of(res5)
        return res5, out_channels
