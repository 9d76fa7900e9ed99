"""Fitting checkpoint weights to a built model, and saying what did not fit.

:func:`fit_to_model` checks a converted ImageNet SN state dict against the model's ResNet and
names the config key to change when they disagree; :func:`input_convention_warnings` compares the
model's input convention with the one the weights were trained with;
:func:`sn_layers_from_scratch` summarises the SN layers a detectron2 checkpoint (e.g. a GN or BN
one) leaves at their initial state.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import Tensor, nn

from ..config import add_sn_config
from ..layers.switch_norm import (
    LOGIT_NAMES,
    RUNNING_NAMES,
    SSN_BUFFER_NAMES,
    named_switch_norms,
)
from ..modeling.resnet_v2 import ResNetV2
from .errors import SHOWN, CheckpointError, natural_key, sample_keys
from .official_layout import (
    BACKBONE_NAMES,
    PIXEL_MEAN,
    PIXEL_STD,
    WIDTH_KEYS,
    Conversion,
    SNImageNetInfo,
)

logger = logging.getLogger(__name__)

# kept by the model itself, never taken from ImageNet weights: SwitchNorm2d's count of the
# batches averaged so far (batch-average mode), which its loader fills in when absent, and
# BatchNorm's count of batches
BOOKKEEPING = ("num_batches", "num_batches_tracked")


@dataclass
class BackboneLayout:
    """What the model's ResNet looks like, for comparing with a checkpoint."""

    prefix: str  # of the ResNet in the model's state dict, e.g. "backbone.bottom_up."
    resnet: ResNet
    version: str
    blocks: Tuple[int, ...]  # of the built stages
    sn_using_bn: Optional[set]  # using_bn of its SN layers, None without SN layers
    norm_types: List[str]

    @classmethod
    def of(cls, model: nn.Module) -> "BackboneLayout":
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, ResNet)]
        if not found:
            raise CheckpointError(
                "ImageNet SN weights need a ResNet backbone: set MODEL.BACKBONE.NAME to one of "
                f"{', '.join(n for names in BACKBONE_NAMES.values() for n in names)}"
            )
        name, resnet = min(found, key=lambda nm: len(nm[0]))
        norms = [m for _, m in named_switch_norms(resnet)]
        types = sorted(
            {type(m).__name__ for m in resnet.modules() if "norm" in type(m).__name__.lower()}
        )
        return cls(
            prefix=f"{name}." if name else "",
            resnet=resnet,
            version="v2" if isinstance(resnet, ResNetV2) else "v1",
            blocks=tuple(len(stage) for stage in resnet.stages),
            sn_using_bn={m.using_bn for m in norms} if norms else None,
            norm_types=types,
        )

    def stride_in_1x1(self) -> Optional[bool]:
        for stage in self.resnet.stages[1:]:
            block = stage[0]
            if isinstance(block, BottleneckBlock):
                return tuple(block.conv1.stride) != (1, 1)
        return None


def _key_diff(have: Mapping[str, Tensor], want: Mapping[str, Tensor]) -> str:
    missing = set(want) - set(have)
    extra = set(have) - set(want)
    parts = []
    if missing:
        parts.append(f"model keys not in the checkpoint: {sample_keys(missing)}")
    if extra:
        parts.append(f"checkpoint keys not in the model: {sample_keys(extra)}")
    return "; ".join(parts)


def _settings_problems(info: SNImageNetInfo, layout: BackboneLayout) -> List[str]:
    """Config settings of the model (seen through ``layout``) that disagree with the weights."""
    problems = []
    if layout.version != info.version:
        names = " or ".join(BACKBONE_NAMES[info.version])
        problems.append(
            f"the checkpoint is ResNet {info.version} but the model's backbone is ResNet "
            f"{layout.version}: set MODEL.BACKBONE.NAME to {names}"
        )
    n = len(layout.blocks)
    if layout.blocks != info.blocks[:n]:
        problems.append(
            f"the checkpoint is ResNet-{info.depth} ({'-'.join(map(str, info.blocks))} blocks) "
            f"but the model has {'-'.join(map(str, layout.blocks))} blocks: set "
            f"MODEL.RESNETS.DEPTH to {info.depth}"
        )
    if layout.sn_using_bn is None:
        problems.append(
            f"the model's backbone has no SN layers ({', '.join(layout.norm_types) or 'no norm'}):"
            f" set MODEL.RESNETS.NORM to {info.norm} (or Sync{info.norm})"
        )
    elif layout.sn_using_bn != {info.using_bn}:
        problems.append(
            f"the checkpoint has {'a' if info.using_bn else 'no'} BN branch (mean_weight of "
            f"length {3 if info.using_bn else 2}) but the model's SN layers are built with "
            f"using_bn={sorted(layout.sn_using_bn)}: set MODEL.SN.USING_BN to {info.using_bn}"
        )
    if layout.version == "v1" and layout.stride_in_1x1():
        problems.append(
            "the checkpoint strides in the 3x3 conv: set MODEL.RESNETS.STRIDE_IN_1X1 to False"
        )
    return problems


def input_convention_warnings(model: nn.Module) -> List[str]:
    """How the model's input convention differs from the one the ImageNet SN weights were trained
    with (RGB, ImageNet mean/std). Not an error: the weights load, but start from a shifted input.
    """
    problems = []
    input_format = getattr(model, "input_format", None)
    if input_format is not None and input_format != "RGB":
        problems.append(
            f"the weights expect RGB input: set INPUT.FORMAT to RGB (not {input_format})"
        )
    for key, value in (("pixel_mean", PIXEL_MEAN), ("pixel_std", PIXEL_STD)):
        buf = getattr(model, key, None)
        if isinstance(buf, Tensor) and buf.numel() == 3:
            got = buf.detach().flatten().cpu().double()
            if not torch.allclose(got, torch.tensor(value, dtype=torch.float64), atol=1e-3):
                problems.append(
                    f"the weights expect ImageNet normalisation: set MODEL.{key.upper()} to "
                    f"{value} (not {[round(v, 3) for v in got.tolist()]})"
                )
    return problems


def fit_to_model(
    state: Mapping[str, Tensor], metadata: Mapping[str, Any], model: nn.Module, source: str = ""
) -> Tuple[Dict[str, Tensor], BackboneLayout, List[str]]:
    """Check a converted state dict against ``model`` and re-key it to the model's backbone.

    Every parameter and buffer of the model's ResNet must receive a tensor of its exact shape,
    except the SSN buffers (radius, fixed flags) of sparse SN layers loaded from SN weights,
    which keep their own values. SSN weights keep their SSN buffers for every SN layer, also
    for those that absorb them (SN and frozen layers, ``SwitchNorm2d._absorb_sparse_state``).
    Tensors of stages the model does not build (OUT_FEATURES stops earlier) are returned as
    unused and not loaded. Input-convention differences are logged as warnings.

    Returns:
        (state dict for ``model.load_state_dict``, the backbone layout, unused checkpoint keys)
    Raises:
        CheckpointError: naming the mismatching settings and keys.
    """
    info = SNImageNetInfo.from_dict(metadata)
    layout = BackboneLayout.of(model)
    src_prefix = metadata.get("prefix", "")
    if any(not k.startswith(src_prefix) for k in state):
        raise CheckpointError(
            f"{source}: keys do not all start with the recorded prefix {src_prefix!r}"
        )
    state = {layout.prefix + k[len(src_prefix) :]: v for k, v in state.items()}
    want = {
        layout.prefix + k: v
        for k, v in layout.resnet.state_dict().items()
        if k.rpartition(".")[2] not in BOOKKEEPING
    }
    problems = _settings_problems(info, layout)
    for warning in input_convention_warnings(model):
        logger.warning(f"{source}: {warning}")
    missing = set(want) - set(state)
    if not info.sparse:  # sparse SN layers start unfixed from SN weights
        missing = {k for k in missing if k.rpartition(".")[2] not in SSN_BUFFER_NAMES}
    if missing and not problems:
        problems.append("the checkpoint lacks tensors the backbone needs")
    differ = [
        k
        for k in sorted(set(want) & set(state), key=natural_key)
        if tuple(state[k].shape) != tuple(want[k].shape)
        # logits of another length are the BN-branch mismatch reported above
        and not (k.endswith(LOGIT_NAMES) and layout.sn_using_bn != {info.using_bn})
    ]
    if differ:
        shapes = [f"{k} {list(state[k].shape)} vs {list(want[k].shape)}" for k in differ]
        problems.append(
            f"shapes differ (checkpoint vs model) for {len(shapes)} tensors: "
            f"{'; '.join(shapes[:SHOWN])}{' ...' if len(shapes) > SHOWN else ''}; the "
            "checkpoint's widths need "
            + ", ".join(f"{k} {w}" for k, w in zip(WIDTH_KEYS, info.widths))
            + " and MODEL.RESNETS.NUM_GROUPS 1"
        )
    if problems:
        diff = _key_diff(state, want)
        raise CheckpointError(
            f"The ImageNet SN weights {source} ({info.name}) do not fit the model:\n  - "
            + "\n  - ".join(problems)
            + (f"\n  {diff}" if diff else "")
        )
    # SSN buffers of layers that do not keep them (SN, frozen SN): they absorb them on loading
    absorbed = {
        k
        for k in set(state) - set(want)
        if k.rpartition(".")[2] in SSN_BUFFER_NAMES
        and f"{k.rpartition('.')[0]}.{LOGIT_NAMES[0]}" in want
    }
    unused = sorted(set(state) - set(want) - absorbed)
    return {k: v for k, v in state.items() if k in want or k in absorbed}, layout, unused


def sparse_state_mismatch(
    model: nn.Module, checkpoint_keys: Iterable[str], source: str
) -> Optional[str]:
    """One warning line when loading ``checkpoint_keys`` (the model's names) into ``model``
    changes what its SN layers are: sparse SN (SSN) layers of the checkpoint into trainable SN
    layers, whose SSN choice becomes softmax logits; or SN layers into SSN layers, which start
    unfixed. None otherwise (frozen layers take SSN weights as their one-hot weights silently).
    """
    keys = set(checkpoint_keys)
    layers = list(named_switch_norms(model))
    into_sn = [
        n
        for n, m in layers
        if not m._holds_sparse_state
        and m._warns_on_sparse_state
        and all(f"{n}.{b}" in keys for b in SSN_BUFFER_NAMES + LOGIT_NAMES)
    ]
    into_ssn = [
        n
        for n, m in layers
        if m._holds_sparse_state
        and f"{n}.{LOGIT_NAMES[0]}" in keys
        and not all(f"{n}.{b}" in keys for b in SSN_BUFFER_NAMES)
    ]
    if into_sn:
        return (
            f"{source} has Sparse SN (SSN) layers but the model builds {len(into_sn)} of them "
            f"as SN (e.g. {into_sn[0]}): each takes its SSN mix weights (one-hot where fixed) "
            "as softmax logits, so it starts with the SSN choice but trains as SN, and the "
            "radius and fixed flags are dropped. To keep the sparse layers set the norm to SSN "
            "(MODEL.RESNETS.NORM SSN for the backbone)."
        )
    if into_ssn:
        return (
            f"{source} has SN layers without SSN buffers ({', '.join(SSN_BUFFER_NAMES)}) but the "
            f"model builds {len(into_ssn)} of them as Sparse SN (e.g. {into_ssn[0]}): they start "
            "unfixed from the SN logits at the model's radius, and the SSN radius schedule makes "
            "them sparse again. To keep SN's softmax mix set the norm to SN "
            "(MODEL.RESNETS.NORM SN for the backbone)."
        )
    return None


def check_against_backbone(conversion: Conversion) -> None:
    """Build the (non-FPN) backbone that converted weights need and check that every tensor fits
    it exactly (:func:`fit_to_model`)."""
    cfg = get_cfg()
    add_sn_config(cfg)
    settings = {
        **conversion.info.required_settings(),
        **dict(zip(WIDTH_KEYS, conversion.info.widths)),  # also when they are the defaults
    }
    cfg.merge_from_list([item for key_value in settings.items() for item in key_value])
    cfg.MODEL.RESNETS.NUM_GROUPS = 1
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    builder = BACKBONE_REGISTRY.get(BACKBONE_NAMES[conversion.info.version][1])
    backbone = builder(cfg, ShapeSpec(channels=3))
    fit_to_model(conversion.state, conversion.metadata(), backbone, conversion.source)


def sn_layers_from_scratch(
    model: nn.Module, checkpoint_keys: Iterable[str], missing_keys: Iterable[str], source: str
) -> Optional[str]:
    """One line saying how many of ``model``'s SN layers a loaded detectron2 checkpoint left at
    their initial mixture weights and running statistics (``missing_keys`` as returned by
    loading it), and why; None when every SN layer was loaded.

    Loading a GN or BN checkpoint into an SN model is legitimate (fine-tuning): its conv and
    affine weights load, and only these SN tensors start from scratch.
    """
    missing = set(missing_keys)
    layers = [name for name, _ in named_switch_norms(model)]
    # the tensors SN alone learns: a GN or BN checkpoint has the affine weights
    sn_only = LOGIT_NAMES + RUNNING_NAMES
    fresh = [n for n in layers if any(f"{n}.{t}".lstrip(".") in missing for t in sn_only)]
    if not fresh:
        return None
    has_sn = any(str(k).endswith(".mean_weight") for k in checkpoint_keys)
    if has_sn:
        examples = ", ".join(sorted(fresh, key=natural_key)[:3])
        why = f"{source} has SN layers, but not these (or not of their shape), e.g. {examples}"
    else:
        why = f"{source} has no SN layers: it was trained with another norm (e.g. GN or BN)"
    return (
        f"{len(fresh)} of {len(layers)} SN layers start from scratch (mean_weight, var_weight and "
        f"running statistics at their initial values) because {why}; the weights the checkpoint "
        "has (convs, norm affine weights) were loaded, and fine-tuning learns the SN mixture."
    )
