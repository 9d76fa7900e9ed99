"""A check of a YAML config's norms before its model is built: which builder reads which norm key,
and the SN twin of each detectron2 builder.

detectron2's builders hand their ``NORM`` key to detectron2's closed ``get_norm``, so "SN" there
ends in a bare ``KeyError: 'SN'`` from deep inside detectron2. :func:`check_sn_builders` finds
this (and unknown norm names) from the config alone and says which of our builders to use.
"""

from typing import Any, Dict, List, Tuple

from detectron2.config import CfgNode

from ..layers.norm import NORMS, UnknownNormError, check_norm_name
from ..utils.cli import InputError

# detectron2's builder (registered name) -> ours, which passes our norm callables to it
SN_BUILDERS: Dict[str, str] = {
    "build_resnet_backbone": "build_sn_resnet_backbone",
    "build_resnet_fpn_backbone": "build_sn_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone": "build_sn_retinanet_resnet_fpn_backbone",
    "RetinaNet": "SNRetinaNet",
    "Res5ROIHeads": "SNRes5ROIHeads",
    "FastRCNNConvFCHead": "SNFastRCNNConvFCHead",
    "MaskRCNNConvUpsampleHead": "SNMaskRCNNConvUpsampleHead",
    "SemSegFPNHead": "SNSemSegFPNHead",
}

# builder (detectron2's or ours) -> the MODEL.<node>.NORM keys it reads
_NORM_NODES: Dict[str, Tuple[str, ...]] = {
    "build_resnet_backbone": ("RESNETS",),
    "build_resnet_fpn_backbone": ("RESNETS", "FPN"),
    "build_retinanet_resnet_fpn_backbone": ("RESNETS", "FPN"),
    "build_sn_resnet_v2_backbone": ("RESNETS",),
    "build_sn_resnet_v2_fpn_backbone": ("RESNETS", "FPN"),
    "build_sn_regnet_backbone": ("REGNETS",),
    "build_sn_regnet_fpn_backbone": ("REGNETS", "FPN"),
    "RetinaNet": ("RETINANET",),
    "Res5ROIHeads": ("RESNETS",),
    "FastRCNNConvFCHead": ("ROI_BOX_HEAD",),
    "MaskRCNNConvUpsampleHead": ("ROI_MASK_HEAD",),
    "SemSegFPNHead": ("SEM_SEG_HEAD",),
}
for _stock, _ours in SN_BUILDERS.items():
    _NORM_NODES.setdefault(_ours, _NORM_NODES[_stock])

_RCNN_LIKE = ("GeneralizedRCNN", "PanopticFPN")
_SEM_SEG_LIKE = ("PanopticFPN", "SemanticSegmentor")
_RES5_HEADS = ("Res5ROIHeads", "SNRes5ROIHeads")


def _builders_in_use(cfg: CfgNode) -> List[str]:
    """The config keys naming the builders that ``build_model(cfg)`` calls and that read a norm."""
    m = cfg.MODEL
    keys = ["MODEL.META_ARCHITECTURE", "MODEL.BACKBONE.NAME"]
    if m.META_ARCHITECTURE in _RCNN_LIKE:
        keys.append("MODEL.ROI_HEADS.NAME")
        if m.ROI_HEADS.NAME not in _RES5_HEADS and m.ROI_BOX_HEAD.NUM_CONV > 0:
            keys.append("MODEL.ROI_BOX_HEAD.NAME")
        if m.MASK_ON and m.ROI_MASK_HEAD.NUM_CONV > 0:
            keys.append("MODEL.ROI_MASK_HEAD.NAME")
    if m.META_ARCHITECTURE in _SEM_SEG_LIKE:
        keys.append("MODEL.SEM_SEG_HEAD.NAME")
    return keys


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def norms_in_use(cfg: CfgNode) -> Dict[str, Any]:
    """{norm key: its value} for every ``MODEL.<node>.NORM`` read by a builder ``build_model(cfg)``
    calls (known builders only), in the order they are read."""
    norms: Dict[str, Any] = {}
    for builder_key in _builders_in_use(cfg):
        for node in _NORM_NODES.get(_get(cfg, builder_key), ()):
            norms[f"MODEL.{node}.NORM"] = cfg.MODEL[node].NORM if node in cfg.MODEL else None
    return norms


def check_sn_builders(cfg: CfgNode) -> None:
    """Raise one InputError listing every norm key of ``cfg`` that its model cannot build:

    - "SN"/"SyncSN" read by a detectron2 builder (which would fail with ``KeyError: 'SN'``),
      naming our builder to set instead;
    - a norm name that no builder knows, with the valid names.

    Call it once where the config is set up, before building the model (``build_model`` alone
    lets detectron2's builders fail with their own KeyError). Builders it does not know (your
    own) are left alone.
    """
    problems = []
    for builder_key in _builders_in_use(cfg):
        builder = _get(cfg, builder_key)
        for node in _NORM_NODES.get(builder, ()):
            norm_key = f"MODEL.{node}.NORM"
            norm = cfg.MODEL[node].NORM if node in cfg.MODEL else None
            if not isinstance(norm, str) or not norm:
                continue
            try:
                check_norm_name(norm, norm_key)
            except UnknownNormError as e:
                problems.append(str(e))
                continue
            if norm in NORMS and builder in SN_BUILDERS:
                problems.append(
                    f"{norm_key} is {norm!r}, but {builder_key} {builder!r} is detectron2's, which "
                    f"knows only detectron2's norms (it fails with KeyError: {norm!r}): set "
                    f"{builder_key} to {SN_BUILDERS[builder]!r} (registered by importing "
                    "sn_detection), which takes every norm."
                )
    problems = list(dict.fromkeys(problems))  # RESNETS.NORM may be read by two builders
    if problems:
        raise InputError("\n".join(problems))
