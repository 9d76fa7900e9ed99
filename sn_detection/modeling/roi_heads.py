"""RoI box and mask heads whose conv norm may be SN, SyncSN or any detectron2 norm."""
from detectron2.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    FastRCNNConvFCHead,
    MaskRCNNConvUpsampleHead,
)

from ..config import sn_options
from ..layers import norm_factory


@ROI_BOX_HEAD_REGISTRY.register()
class SNFastRCNNConvFCHead(FastRCNNConvFCHead):
    """detectron2's conv+fc box head (e.g. 4conv1fc) with ``MODEL.ROI_BOX_HEAD.NORM`` resolved by
    our norm registry. Its norms see all RoIs of the batch as the batch dimension."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conv_norm"] = norm_factory(cfg.MODEL.ROI_BOX_HEAD.NORM, **sn_options(cfg))
        return ret


@ROI_MASK_HEAD_REGISTRY.register()
class SNMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """detectron2's mask head with ``MODEL.ROI_MASK_HEAD.NORM`` resolved by our norm registry."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conv_norm"] = norm_factory(cfg.MODEL.ROI_MASK_HEAD.NORM, **sn_options(cfg))
        return ret
