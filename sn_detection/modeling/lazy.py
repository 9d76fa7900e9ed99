"""LazyConfig constructors whose norm is a plain name, and a check of a LazyConfig model's norms.

Each constructor stands for one detectron2 target that reads a norm (``LAZY_SN_TARGETS``) and
takes ``norm``, a name of :func:`sn_detection.layers.valid_norm_names` ("" for none; a value that
saves to YAML and can be overridden), and ``sn_options``, the options of SN layers (MODEL.SN of
the YAML configs; the shipped configs pass ``"${sn}"``). The heads are the YAML route's classes
(:class:`~.norms.NamedNorm`). :func:`check_lazy_norms` names, before anything is built, each
detectron2 target given an SN name and the constructor to use instead.
"""

from typing import Any, Callable, Dict, List

from detectron2.modeling.backbone import FPN, BasicStem, RegNet, ResNet
from detectron2.modeling.backbone.resnet import CNNBlockBase
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig
from torch import nn

from ..layers.norm import NORMS, NormSpec, UnknownNormError, check_norm_name, norm_factory
from ..utils.cli import InputError
from .backbone import finish_resnet, zero_init_last_switchnorm_of
from .norms import SNOptions
from .regnet import finish_regnet
from .retinanet import retinanet_head_norm


def sn_basic_stem(norm: NormSpec = "SN", sn_options: SNOptions = None, **kwargs: Any) -> BasicStem:
    """detectron2's :class:`BasicStem` (``in_channels``, ``out_channels``) with ``norm`` from our
    registry."""
    norm = norm_factory(norm, key="sn_basic_stem's norm", **(sn_options or {}))
    return BasicStem(norm=norm, **kwargs)


def sn_resnet_stages(
    depth: int, norm: NormSpec = "SN", sn_options: SNOptions = None, **kwargs: Any
) -> List[List[CNNBlockBase]]:
    """``ResNet.make_default_stages(depth, **kwargs)`` with ``norm`` from our registry (e.g.
    ``stride_in_1x1=False`` for the ImageNet SN checkpoints)."""
    norm = norm_factory(norm, key="sn_resnet_stages' norm", **(sn_options or {}))
    return ResNet.make_default_stages(depth, norm=norm, **kwargs)


def sn_resnet(
    stem: nn.Module,
    stages: List[List[CNNBlockBase]],
    freeze_at: int = 0,
    last_gamma: bool = False,
    **kwargs: Any,
) -> ResNet:
    """detectron2's :class:`ResNet` (``out_features``, ``num_classes``), finished as the YAML
    builders finish it: the last SN of every block starts with weight 0 when ``last_gamma``
    (MODEL.SN.LAST_GAMMA), and the SN layers of the stages frozen by ``freeze_at`` become
    FrozenSwitchNorm2d."""
    resnet = ResNet(stem, stages, freeze_at=freeze_at, **kwargs)
    return finish_resnet(resnet, freeze_at, last_gamma)


def sn_fpn(norm: NormSpec = "SN", sn_options: SNOptions = None, **kwargs: Any) -> FPN:
    """detectron2's :class:`FPN` (``bottom_up``, ``in_features``, ``out_channels``,
    ``top_block``, ...) with ``norm`` from our registry."""
    return FPN(norm=norm_factory(norm, key="sn_fpn's norm", **(sn_options or {})), **kwargs)


def sn_resnet_stage(
    norm: NormSpec = "SN", sn_options: SNOptions = None, last_gamma: bool = False, **kwargs: Any
) -> List[CNNBlockBase]:
    """``ResNet.make_stage(**kwargs)`` with ``norm`` from our registry: the res5 head of C4
    models (``Res5ROIHeads(res5=...)``, whose SN layers train). ``last_gamma`` as in
    :func:`sn_resnet`."""
    norm = norm_factory(norm, key="sn_resnet_stage's norm", **(sn_options or {}))
    blocks = ResNet.make_stage(norm=norm, **kwargs)
    if last_gamma:
        zero_init_last_switchnorm_of(blocks)
    return blocks


def _dense_head(cls: type, norm: NormSpec, sn_options: SNOptions, **kwargs: Any) -> nn.Module:
    levels = len(kwargs["input_shape"])
    where = f"{cls.__name__}'s norm"
    return cls(norm=retinanet_head_norm(norm, levels, where, **(sn_options or {})), **kwargs)


def sn_retinanet_head(
    norm: NormSpec = "SN", sn_options: SNOptions = None, **kwargs: Any
) -> RetinaNetHead:
    """detectron2's :class:`RetinaNetHead` (``input_shape``, ``num_classes``, ``num_anchors``,
    ``conv_dims``, ...) with ``norm`` from our registry; SN/SyncSN keep per-level running
    statistics (:class:`~.retinanet.CycleSwitchNormList`), as from YAML."""
    return _dense_head(RetinaNetHead, norm, sn_options, **kwargs)


def sn_fcos_head(norm: NormSpec = "SN", sn_options: SNOptions = None, **kwargs: Any) -> FCOSHead:
    """detectron2's :class:`FCOSHead` (a RetinaNetHead with a centerness branch) with ``norm``
    from our registry; SN/SyncSN keep per-level running statistics."""
    return _dense_head(FCOSHead, norm, sn_options, **kwargs)


def sn_regnet(
    norm: NormSpec = "SN",
    sn_options: SNOptions = None,
    freeze_at: int = 0,
    last_gamma: bool = False,
    **kwargs: Any,
) -> RegNet:
    """detectron2's :class:`RegNet` with ``norm`` from our registry, finished as the YAML builder
    finishes it (``last_gamma``; SN layers of frozen stages become FrozenSwitchNorm2d)."""
    norm = norm_factory(norm, key="sn_regnet's norm", **(sn_options or {}))
    regnet = RegNet(norm=norm, freeze_at=freeze_at, **kwargs)
    return finish_regnet(regnet, freeze_at, last_gamma)


# detectron2's LazyConfig targets that read a norm -> our constructor to use for SN/SyncSN
LAZY_SN_TARGETS: Dict[Callable, str] = {
    BasicStem: "sn_basic_stem",
    ResNet.make_default_stages: "sn_resnet_stages",
    FPN: "sn_fpn",
    FastRCNNConvFCHead: "SNFastRCNNConvFCHead",
    MaskRCNNConvUpsampleHead: "SNMaskRCNNConvUpsampleHead",
    ResNet.make_stage: "sn_resnet_stage",
    RetinaNetHead: "sn_retinanet_head",
    FCOSHead: "sn_fcos_head",
    SemSegFPNHead: "SNSemSegFPNHead",
    RegNet: "sn_regnet",
}


def _target(node: Any) -> Any:
    """The object a config node's ``_target_`` names (a callable, or its dotted name after
    ``LazyConfig.save``); None if it has none or it cannot be found."""
    target = node.get("_target_")
    if isinstance(target, str):
        try:
            return locate(target)
        except Exception:  # not found, whatever the reason: instantiate() reports it
            return None
    return target


def _name(target: Any) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def _sn_names_in(node: Any) -> bool:
    """Whether an SN/SyncSN name appears in a norm argument anywhere in ``node``."""
    if isinstance(node, (DictConfig, dict)):
        return any(
            (k in ("norm", "conv_norm") and isinstance(v, str) and v in NORMS) or _sn_names_in(v)
            for k, v in node.items()
        )
    if isinstance(node, (ListConfig, list)):
        return any(_sn_names_in(v) for v in node)
    return False


def _problems(node: Any, path: str) -> List[str]:
    problems: List[str] = []
    if isinstance(node, (ListConfig, list)):
        for i, item in enumerate(node):
            problems += _problems(item, f"{path}[{i}]")
        return problems
    if not isinstance(node, (DictConfig, dict)):
        return problems
    target = _target(node)
    for key, value in node.items():
        if key in ("norm", "conv_norm") and isinstance(value, str) and value:
            try:
                check_norm_name(value, f"{path}.{key}")
            except UnknownNormError as e:
                problems.append(str(e))
                continue
            if value in NORMS and target in LAZY_SN_TARGETS:
                ours = LAZY_SN_TARGETS[target]
                problems.append(
                    f"{path}.{key} is {value!r}, but {path}._target_ is {_name(target)}, "
                    f"which knows only detectron2's norms (it fails with KeyError: {value!r}): "
                    f"set {path}._target_ to sn_detection.modeling.{ours}, which takes every norm."
                )
        elif key != "_target_":
            problems += _problems(value, f"{path}.{key}")
    if target is ResNet and node.get("freeze_at", 0) and _sn_names_in(node):
        problems.append(
            f"{path}._target_ is detectron2's ResNet, whose freeze_at leaves the SN layers of "
            f"frozen stages trainable: set {path}._target_ to sn_detection.modeling.sn_resnet."
        )
    return problems


def check_lazy_norms(cfg: Any, path: str = "model") -> None:
    """Raise one InputError listing every problem with the norms of the LazyConfig node ``cfg``
    (e.g. ``cfg.model``, whose key is ``path``), before anything is built:

    - an unknown norm name, with the valid names;
    - "SN"/"SyncSN" given to a detectron2 constructor that would fail with ``KeyError: 'SN'``,
      naming our constructor to set as ``_target_``;
    - detectron2's ResNet with SN layers and ``freeze_at`` (its frozen stages' SN layers would
      keep training), naming :func:`sn_resnet`.
    """
    problems = list(dict.fromkeys(_problems(cfg, path)))
    if problems:
        raise InputError("\n".join(problems))
