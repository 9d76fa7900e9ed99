"""The released ImageNet SN checkpoints: recognise them by contents, convert, check the model fits.

An official checkpoint is a ``torch.save`` dict ``{'state_dict': {'module.' + key: tensor}, 'epoch',
'best_prec1', 'optimizer', ...}`` of a ResNet v1 or v2 (pre-activation) + SN classifier (see
docs/PRETRAINED.md). :func:`convert_official` maps every tensor to our backbones' names and shapes
(norm weight/bias (1,C,1,1) and running statistics (1,C,1) become (C,)) and drops ``fc.*``;
:func:`fit_to_model` checks a converted state dict against a built model and names the config
key to change when they disagree. Nothing here matches names fuzzily.
"""

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import Tensor, nn

from ..layers import FrozenSwitchNorm2d, SwitchNorm2d
from ..modeling.resnet_v2 import BLOCKS_PER_STAGE, ResNetV2

logger = logging.getLogger(__name__)

# key of the conversion metadata in converted checkpoints (a dict of plain values)
SN_IMAGENET_KEY = "sn_imagenet"
AUTHOR = "sn_detection (tools/convert_sn_imagenet_to_d2.py)"

DEPTHS = {tuple(blocks): depth for depth, blocks in BLOCKS_PER_STAGE.items()}
PIXEL_MEAN = [123.675, 116.28, 103.53]  # ImageNet mean (0.485, 0.456, 0.406) in 0-255 units
PIXEL_STD = [58.395, 57.12, 57.375]  # ImageNet std (0.229, 0.224, 0.225) in 0-255 units
BACKBONE_NAMES = {
    "v1": ("build_sn_resnet_fpn_backbone", "build_sn_resnet_backbone"),
    "v2": ("build_sn_resnet_v2_fpn_backbone", "build_sn_resnet_v2_backbone"),
}
_AFFINE = ("weight", "bias", "mean_weight", "var_weight")
_RUNNING = ("running_mean", "running_var")
_SHOWN = 4  # keys quoted in an error message
DEFAULT_WIDTHS = (64, 256, 64)
_CONV_KEY = re.compile(r"(^|\.)(conv\d|downsample|downsample\.0)\.weight$")
WIDTH_KEYS = (
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.RESNETS.WIDTH_PER_GROUP",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


def _first_line(text: str, limit: int = 160) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _sample(keys, limit: int = _SHOWN) -> str:
    """Keys in natural order (res4.6 before res4.10) grouped by module, ``limit`` modules shown:
    "res4.6.conv1.weight, res4.6.conv1.norm.{weight,bias} (and 40 more keys)"."""
    keys = sorted(keys, key=_natural)
    groups: Dict[str, List[str]] = {}
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    shown, count = [], 0
    for parent, leaves in list(groups.items())[:limit]:
        head = f"{parent}." if parent else ""
        shown.append(head + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"))
        count += len(leaves)
    more = f" (and {len(keys) - count} more keys)" if len(keys) > count else ""
    return ", ".join(shown) + more


def _shape(t) -> Tuple[int, ...]:
    return tuple(t.shape)


def unreadable(path: str, error: BaseException) -> CheckpointError:
    """The one-line error for a file that is not a readable checkpoint."""
    reason = f"{type(error).__name__}: {_first_line(error)}"
    text = str(error)
    if "WeightsUnpickler error" in text:  # torch.load(weights_only=True) refused an operation
        detail = text.split("WeightsUnpickler error:", 1)[1]
        reason = "weights-only unpickling refused it: " + _first_line(detail)
    return CheckpointError(
        f"Cannot read checkpoint {path}: it is truncated or not a PyTorch/detectron2 checkpoint "
        f"({reason}). Download or convert it again."
    )


def _numpy_scalar_globals() -> list:
    """numpy scalars and dtypes, which some training scripts store (e.g. 'best_prec1')."""
    core = getattr(np, "_core", None) or np.core
    allowed = [
        core.multiarray.scalar,
        np.dtype,
        (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]
    allowed += [type(np.dtype(t)) for t in (np.float32, np.float64, np.int64, np.int32)]
    return allowed


# torch.save output starts with a zip header, or (before PyTorch 1.6) with a pickled magic number
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19")


def is_torch_file(path: str) -> bool:
    """Whether ``path`` was written by ``torch.save`` (judged by its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return head.startswith(_TORCH_MAGIC)


def read_checkpoint(path: str) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True`` (numpy scalars allowed).

    Raises:
        CheckpointError: one line, for a truncated file, a non-checkpoint or unsafe contents.
    """
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "not readable"
        raise unreadable(path, e) from None


# ---------------------------------------------------------------------------------------------
# Recognition


def _tensors_only(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, (Tensor, np.ndarray)) for v in obj.values())


def _strip_module(state: Mapping) -> Dict[str, Any]:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _classifier_state(obj: Any) -> Optional[Dict[str, Any]]:
    """The state dict (``module.`` stripped) of an ImageNet classifier checkpoint, else None:
    a ``{'state_dict': ...}`` training checkpoint, or a bare state dict with torchvision-style
    ResNet keys (``conv1.weight``, ``layer1.*``)."""
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("state_dict"), Mapping):
        return _strip_module(obj["state_dict"])
    if _tensors_only(obj):
        state = _strip_module(obj)
        if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
            return state
    return None


def official_state_dict(obj: Any) -> Optional[Dict[str, Any]]:
    """The state dict (``module.`` stripped) if ``obj`` is an official ImageNet SN ResNet
    checkpoint (wrapped in ``{'state_dict': ...}`` or bare), else None. Decided by the keys."""
    state = _classifier_state(obj)
    if state is not None and "conv1.weight" in state and "sn1.mean_weight" in state:
        return state
    return None


def describe_foreign(obj: Any, path: str) -> Optional[str]:
    """Why ``obj`` cannot initialise an SN detector, for classifier checkpoints that are not SN
    ResNets ("a checkpoint of another architecture"); None for anything else."""
    state = _classifier_state(obj)
    if state is None or official_state_dict(obj) is not None:
        return None
    if any(str(k).endswith(".mean_weight") for k in state):
        what = "has Switchable Normalization but not the ResNet v1/v2 layout."
    else:
        what = (
            "has no Switchable Normalization layers (no sn1.mean_weight). A torchvision/BN "
            "ResNet needs detectron2's tools/convert-torchvision-to-d2.py and NORM FrozenBN."
        )
    return (
        f"{path} is an ImageNet classifier checkpoint ({len(state)} tensors, keys like "
        f"{_sample(state, 3)}) of another architecture: it {what}"
    )


# ---------------------------------------------------------------------------------------------
# Inspection and conversion


@dataclass(frozen=True)
class SNImageNetInfo:
    """What an official checkpoint holds: ResNet version, depth, blocks per stage, BN branch."""

    version: str  # "v1" or "v2" (pre-activation)
    depth: int
    blocks: Tuple[int, ...]
    using_bn: bool
    # (stem out, res2 out, res2 bottleneck) channels; the released models have the defaults
    widths: Tuple[int, int, int] = DEFAULT_WIDTHS

    @property
    def name(self) -> str:
        branch = "IN/LN/BN" if self.using_bn else "IN/LN, no BN branch"
        return f"ResNet-{self.depth} {self.version} + SN ({branch})"

    def required_settings(self) -> Dict[str, Any]:
        """The config values these weights need (FPN backbone name; C4 uses the other one)."""
        settings = {
            "MODEL.BACKBONE.NAME": BACKBONE_NAMES[self.version][0],
            "MODEL.RESNETS.DEPTH": self.depth,
            "MODEL.RESNETS.NORM": "SN",
            "MODEL.RESNETS.STRIDE_IN_1X1": False,
            "MODEL.SN.USING_BN": self.using_bn,
            "INPUT.FORMAT": "RGB",
            "MODEL.PIXEL_MEAN": list(PIXEL_MEAN),
            "MODEL.PIXEL_STD": list(PIXEL_STD),
        }
        if self.widths != DEFAULT_WIDTHS:  # only for non-standard (e.g. test) checkpoints
            settings.update(zip(WIDTH_KEYS, self.widths))
        return settings

    def to_dict(self) -> Dict[str, Any]:
        return {
            "version": self.version,
            "depth": self.depth,
            "blocks": list(self.blocks),
            "using_bn": self.using_bn,
            "widths": list(self.widths),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "SNImageNetInfo":
        return cls(
            d["version"],
            int(d["depth"]),
            tuple(int(b) for b in d["blocks"]),
            bool(d["using_bn"]),
            tuple(int(w) for w in d.get("widths", DEFAULT_WIDTHS)),
        )


def _norm_rows(src: str, dst: str, using_bn: bool) -> List[Tuple[str, str]]:
    names = _AFFINE + (_RUNNING if using_bn else ())
    return [(f"{src}.{p}", f"{dst}.{p}") for p in names]


def official_layout(info: SNImageNetInfo) -> List[Tuple[str, str]]:
    """(official key, our key without prefix) for every tensor of an official checkpoint but fc."""
    bn = info.using_bn
    rows = [("conv1.weight", "stem.conv1.weight")] + _norm_rows("sn1", "stem.conv1.norm", bn)
    for k, num_blocks in enumerate(info.blocks, start=1):
        for i in range(num_blocks):
            src, dst = f"layer{k}.{i}", f"res{k + 1}.{i}"
            for j in (1, 2, 3):
                rows.append((f"{src}.conv{j}.weight", f"{dst}.conv{j}.weight"))
                norm = f"{dst}.conv{j}.norm" if info.version == "v1" else f"{dst}.norm{j}"
                rows += _norm_rows(f"{src}.sn{j}", norm, bn)
            if i == 0 and info.version == "v1":
                rows.append((f"{src}.downsample.0.weight", f"{dst}.shortcut.weight"))
                rows += _norm_rows(f"{src}.downsample.1", f"{dst}.shortcut.norm", bn)
            elif i == 0:
                rows.append((f"{src}.downsample.weight", f"{dst}.shortcut.weight"))
    if info.version == "v2":
        rows += _norm_rows("sn_out", "norm_out", bn)
    return rows


def inspect_state_dict(state: Mapping[str, Any]) -> SNImageNetInfo:
    """Version, depth and BN branch of an official state dict (``module.`` stripped).

    Raises:
        CheckpointError: for a layout that is not ResNet-50/101/152 v1/v2 + SN, or inconsistent.
    """
    blocks = []
    for k in (1, 2, 3, 4):
        idx = {int(m.group(1)) for key in state if (m := re.match(rf"layer{k}\.(\d+)\.", key))}
        if not idx:
            raise CheckpointError(f"the SN checkpoint has no layer{k}.* tensors: not a ResNet")
        blocks.append(max(idx) + 1)
    blocks = tuple(blocks)
    if "layer1.0.conv3.weight" not in state:
        raise CheckpointError(
            "the SN checkpoint is a ResNet-18/34 (basic blocks, no conv3): only the bottleneck "
            "ResNet-50/101/152 v1/v2 + SN are supported"
        )
    if blocks not in DEPTHS:
        raise CheckpointError(
            f"the SN checkpoint has {'-'.join(map(str, blocks))} blocks per stage: not "
            "ResNet-50 (3-4-6-3), -101 (3-4-23-3) or -152 (3-8-36-3)"
        )
    v2 = "sn_out.weight" in state and "layer1.0.downsample.weight" in state
    v1 = "sn_out.weight" not in state and "layer1.0.downsample.0.weight" in state
    if v1 == v2:
        raise CheckpointError(
            "the SN checkpoint mixes the v1 layout (downsample.0/.1) and the v2 layout "
            "(sn_out, downsample without norm)"
        )
    lengths = {v.numel() for k, v in state.items() if k.endswith((".mean_weight", ".var_weight"))}
    norms = [k[: -len(".mean_weight")] for k in state if k.endswith(".mean_weight")]
    with_stats = [n for n in norms if f"{n}.running_mean" in state and f"{n}.running_var" in state]
    if lengths == {3} and len(with_stats) == len(norms):
        using_bn = True
    elif lengths == {2} and not with_stats:
        using_bn = False
    else:
        raise CheckpointError(
            f"the SN checkpoint's BN branch is inconsistent: mean_weight/var_weight lengths "
            f"{sorted(lengths)}, running statistics in {len(with_stats)} of {len(norms)} SN layers"
        )
    widths = tuple(
        _shape(state[k])[0]
        for k in ("conv1.weight", "layer1.0.conv3.weight", "layer1.0.conv1.weight")
    )
    return SNImageNetInfo("v2" if v2 else "v1", DEPTHS[blocks], blocks, using_bn, widths)


def _flatten_norm_tensor(key: str, t: Tensor) -> Tensor:
    """(1,C,1,1) weight/bias and (1,C,1) running statistics -> (C,); logits stay (3,) / (2,)."""
    if key.endswith((".mean_weight", ".var_weight")) or t.dim() == 1:
        return t
    if t.dim() in (3, 4) and t.shape[0] == 1 and all(s == 1 for s in t.shape[2:]):
        return t.reshape(t.shape[1])
    raise CheckpointError(
        f"SN tensor {key} has shape {_shape(t)}: expected (1,C,1,1), (1,C,1) or (C,)"
    )


@dataclass
class Conversion:
    """An official checkpoint mapped to our backbone: ``state`` (keys ``prefix + our key``),
    the mapping rows (official key, our key, official shape, our shape), dropped tensors."""

    info: SNImageNetInfo
    state: Dict[str, Tensor]
    mapping: List[Tuple[str, str, Tuple[int, ...], Tuple[int, ...]]]
    dropped: List[Tuple[str, Tuple[int, ...]]]
    prefix: str = ""
    source: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)  # epoch, best_prec1, arch name

    def metadata(self) -> Dict[str, Any]:
        """What converted files store under ``SN_IMAGENET_KEY`` (plain values only)."""
        return {
            **self.info.to_dict(),
            "prefix": self.prefix,
            "source": self.source,
            "dropped": [k for k, _ in self.dropped],
            "extras": self.extras,
        }

    def to_checkpoint(self) -> Dict[str, Any]:
        """A detectron2 checkpoint dict, loaded by exact names (no matching heuristics)."""
        return {
            "model": self.state,
            "__author__": AUTHOR,
            "matching_heuristics": False,
            SN_IMAGENET_KEY: self.metadata(),
        }

    def report(self) -> str:
        """The conversion report: what the file is, each mapped tensor, dropped tensors and the
        config settings the weights need."""
        extras = ", ".join(f"{k} {v}" for k, v in self.extras.items())
        lines = [
            f"ImageNet SN checkpoint {self.source}: {self.info.name}, blocks per stage "
            f"{'-'.join(map(str, self.info.blocks))}" + (f" ({extras})" if extras else ""),
            f"{len(self.mapping)} tensors mapped to '{self.prefix}*'; norm weight/bias "
            "(1,C,1,1) and running statistics (1,C,1) flattened to (C,)",
        ]
        lines += [
            f"  {src} {list(s)} -> {self.prefix}{dst}" + (f" {list(d)}" if d != s else "")
            for src, dst, s, d in self.mapping
        ]
        dropped = ", ".join(f"{k} {list(s)}" for k, s in self.dropped) or "none"
        lines.append(f"dropped (classifier, not used for detection): {dropped}")
        lines.append("config settings these weights need:")
        settings = self.info.required_settings()
        lines += [f"  {k}: {v}" for k, v in settings.items()]
        if self.info.version == "v1":
            lines.append("  (C4 models: MODEL.BACKBONE.NAME build_sn_resnet_backbone)")
        else:
            lines.append("  (C4-style models: MODEL.BACKBONE.NAME build_sn_resnet_v2_backbone)")
        return "\n".join(lines)


def convert_official(obj: Any, prefix: str = "", source: str = "") -> Conversion:
    """Convert an official ImageNet SN checkpoint (the loaded dict, or a bare state dict).

    Every tensor but ``fc.*`` is mapped; a missing or unknown tensor raises.

    Raises:
        CheckpointError: if ``obj`` is not an official SN ResNet checkpoint or is incomplete.
    """
    state = official_state_dict(obj)
    if state is None:
        raise CheckpointError(
            f"{source or 'the input'} is not an ImageNet SN ResNet checkpoint (expected a dict "
            "with 'state_dict' holding module.conv1.weight, module.sn1.mean_weight, ...)"
        )
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    try:
        info = inspect_state_dict(state)
    except CheckpointError as e:
        raise CheckpointError(f"{source or 'the input'}: {e}") from None
    rows = official_layout(info)
    dropped = [(k, _shape(v)) for k, v in state.items() if k.startswith("fc.")]
    expected = {src for src, _ in rows}
    missing = expected - set(state)
    unknown = set(state) - expected - {k for k, _ in dropped}
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {_sample(missing)}")
        if unknown:
            problems.append(f"unknown {_sample(unknown)}")
        raise CheckpointError(
            f"{source or 'the input'} looks like {info.name} but its tensors do not match that "
            f"layout: {'; '.join(problems)}"
        )
    converted, mapping = {}, []
    for src, dst in rows:
        t = state[src]
        if _CONV_KEY.search(src):
            if t.dim() != 4:
                raise CheckpointError(f"conv tensor {src} has shape {_shape(t)}: expected 4-D")
            out = t
        else:
            out = _flatten_norm_tensor(src, t)
        converted[prefix + dst] = out
        mapping.append((src, dst, _shape(t), _shape(out)))
    extras = {}
    if isinstance(obj, Mapping) and "state_dict" in obj:
        for key in ("model", "arch", "epoch", "best_prec1"):
            value = obj.get(key)
            if isinstance(value, (Tensor, np.generic)) and np.size(value) == 1:
                value = value.item()  # plain Python values only: converted files load weights-only
            if isinstance(value, str):
                extras[key] = str(value)
            elif isinstance(value, (int, float)):
                extras[key] = round(float(value), 4) if isinstance(value, float) else int(value)
    return Conversion(info, converted, mapping, sorted(dropped), prefix, source, extras)


# ---------------------------------------------------------------------------------------------
# Checking a converted state dict against a model


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
        norms = [m for m in resnet.modules() if isinstance(m, (SwitchNorm2d, FrozenSwitchNorm2d))]
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
        parts.append(f"model keys not in the checkpoint: {_sample(missing)}")
    if extra:
        parts.append(f"checkpoint keys not in the model: {_sample(extra)}")
    return "; ".join(parts)


def _settings_problems(info: SNImageNetInfo, layout: BackboneLayout) -> List[str]:
    """Config settings of the model (seen through ``layout``) that disagree with what the weights need."""
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
            " set MODEL.RESNETS.NORM to SN (or SyncSN)"
        )
    elif layout.sn_using_bn != {info.using_bn}:
        have = "has" if info.using_bn else "has no"
        problems.append(
            f"the checkpoint {have} the BN branch (mean_weight of length "
            f"{3 if info.using_bn else 2}) but the model's SN layers are built with "
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

    Every parameter and buffer of the model's ResNet must receive a tensor of its exact shape.
    Tensors of stages the model does not build (OUT_FEATURES stops earlier) are returned as
    unused and not loaded.

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
    want = {layout.prefix + k: v for k, v in layout.resnet.state_dict().items()}
    problems = _settings_problems(info, layout)
    for warning in input_convention_warnings(model):
        logger.warning(f"{source}: {warning}")
    missing = set(want) - set(state)
    if missing and not problems:
        problems.append("the checkpoint lacks tensors the backbone needs")
    differ = [
        k
        for k in sorted(set(want) & set(state), key=_natural)
        if _shape(state[k]) != _shape(want[k])
        # logits of another length are the BN-branch mismatch reported above
        and not (
            k.endswith(("mean_weight", "var_weight")) and layout.sn_using_bn != {info.using_bn}
        )
    ]
    if differ:
        shapes = [f"{k} {list(_shape(state[k]))} vs {list(_shape(want[k]))}" for k in differ]
        problems.append(
            f"shapes differ (checkpoint vs model) for {len(shapes)} tensors: "
            f"{'; '.join(shapes[:_SHOWN])}{' ...' if len(shapes) > _SHOWN else ''}; the "
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
    unused = sorted(set(state) - set(want))
    return {k: v for k, v in state.items() if k in want}, layout, unused
