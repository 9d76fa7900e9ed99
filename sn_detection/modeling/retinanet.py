"""RetinaNet whose head norm (``MODEL.RETINANET.NORM``) may be SN, SyncSN or any detectron2 norm.

detectron2 builds ``RetinaNetHead`` inside ``RetinaNet.from_config`` (no head registry), so the
seam is the meta-architecture: :class:`SNRetinaNet` builds detectron2's head with our norm.
"""

import functools
from typing import Any, Callable

from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch import RetinaNet
from torch import Tensor, nn

from ..config import sn_options
from ..layers.norm import NORMS, NormArg, NormSpec, norm_factory
from ..layers.switch_norm import AFFINE_NAMES, LOGIT_NAMES

__all__ = ["CycleSwitchNormList", "SNRetinaNet", "retinanet_head_norm"]


class CycleSwitchNormList(nn.ModuleList):
    """Per-level statistics for a norm shared by the levels of a head (SN's counterpart of
    detectron2's ``CycleBatchNormList``, :paper:`rethinking-batchnorm` Sec. 5.2).

    RetinaNet's head applies the same conv tower to every FPN level. One SN layer there would mix
    the levels' batch statistics into one set of running statistics, so evaluation would
    normalise every level with an average of all of them. Here ``length`` SN layers, one per
    level, share their ``weight``, ``bias`` and logits (the layer is one layer, as
    the convs are) and keep separate running statistics; each forward uses the next one.

    NOTE: the caller must call this module a multiple of ``length`` times per forward, in level
    order (RetinaNetHead does).
    """

    SHARED = AFFINE_NAMES + LOGIT_NAMES

    def __init__(self, length: int, norm: Callable[[int], nn.Module], num_features: int):
        layers = [norm(num_features) for _ in range(length)]
        super().__init__(layers)
        for layer in layers[1:]:
            for name in self.SHARED:
                setattr(layer, name, getattr(layers[0], name))
        self._pos = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self[self._pos](x)
        self._pos = (self._pos + 1) % len(self)
        return out


def retinanet_head_norm(norm: NormSpec, levels: int, key: str, **sn_options: Any) -> NormArg:
    """What detectron2's ``RetinaNetHead`` takes as ``norm`` for ``levels`` FPN levels: for
    "SN"/"SyncSN", per-level statistics (:class:`CycleSwitchNormList`); any other norm unchanged
    (the head itself keeps per-level statistics for "BN" and "SyncBN"). An unknown name raises an
    error naming ``key``."""
    resolved = norm_factory(norm, key=key, **sn_options)
    if isinstance(norm, str) and norm in NORMS:
        return functools.partial(CycleSwitchNormList, levels, resolved)
    return norm


@META_ARCH_REGISTRY.register()
class SNRetinaNet(RetinaNet):
    """detectron2's RetinaNet whose head takes ``MODEL.RETINANET.NORM`` from our norm registry.

    With "SN"/"SyncSN" the head's norms keep per-level running statistics
    (:class:`CycleSwitchNormList`), as detectron2 does for "BN"/"SyncBN"; other names go to
    detectron2 unchanged. Use it with ``build_sn_retinanet_resnet_fpn_backbone``.
    """

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        norm = retinanet_head_norm(
            cfg.MODEL.RETINANET.NORM,
            len(cfg.MODEL.RETINANET.IN_FEATURES),
            "MODEL.RETINANET.NORM",
            **sn_options(cfg),
        )
        if norm is not cfg.MODEL.RETINANET.NORM:
            cfg = cfg.clone()
            dict.__setitem__(cfg.MODEL.RETINANET, "NORM", norm)
        return super().from_config(cfg)
