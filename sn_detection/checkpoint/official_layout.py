"""The released ImageNet SN and Sparse SN checkpoints: recognise them by contents and convert them.

An official checkpoint is a ``torch.save`` dict ``{'state_dict': {['module.' +] key: tensor},
'epoch', 'best_prec1', 'optimizer', ...}`` of a ResNet v1 or v2 (pre-activation) + SN classifier,
or of the ResNet v1 + SSN one, whose norms (the official ``SSN2d``) also keep the buffers
``radius``, ``mean_fixed`` and ``var_fixed`` (see docs/PRETRAINED.md). :func:`convert_official`
maps every tensor to our backbones' names and shapes (norm weight/bias (1,C,1,1) and running
statistics (1,C,1) become (C,); the SSN buffers keep the (1,) of our sparse SN layers) and drops
``fc.*``. Nothing here matches names fuzzily.
"""

import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..layers.sparsestmax import is_one_hot, saved_weights
from ..layers.switch_norm import (
    AFFINE_NAMES,
    BRANCHES,
    LOGIT_NAMES,
    RUNNING_NAMES,
    SSN_BUFFER_NAMES,
)
from ..modeling.resnet_v2 import BLOCKS_PER_STAGE
from ..utils.file_io import atomic_save
from .errors import SHOWN, CheckpointError, sample_keys

# key of the conversion metadata in converted checkpoints (a dict of plain values)
SN_IMAGENET_KEY = "sn_imagenet"
AUTHOR = "sn_detection (tools/convert_sn_imagenet_to_d2.py)"

DEPTHS = {tuple(blocks): depth for depth, blocks in BLOCKS_PER_STAGE.items()}
PIXEL_MEAN = [123.675, 116.28, 103.53]  # ImageNet mean (0.485, 0.456, 0.406) in 0-255 units
PIXEL_STD = [58.395, 57.12, 57.375]  # ImageNet std (0.229, 0.224, 0.225) in 0-255 units
# version -> (FPN backbone, C4 backbone)
BACKBONE_NAMES = {
    "v1": ("build_sn_resnet_fpn_backbone", "build_sn_resnet_backbone"),
    "v2": ("build_sn_resnet_v2_fpn_backbone", "build_sn_resnet_v2_backbone"),
}
_LOGIT_SUFFIXES = tuple(f".{name}" for name in LOGIT_NAMES)
_SSN_SUFFIXES = tuple(f".{name}" for name in SSN_BUFFER_NAMES)
RADIUS, MEAN_FIXED, VAR_FIXED = SSN_BUFFER_NAMES
DEFAULT_WIDTHS = (64, 256, 64)
_CONV_KEY = re.compile(r"(^|\.)(conv\d|downsample|downsample\.0)\.weight$")
WIDTH_KEYS = (
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "MODEL.RESNETS.WIDTH_PER_GROUP",
)


def _tensors_only(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, (Tensor, np.ndarray)) for v in obj.values())


def strip_module_prefix(state: Mapping) -> Dict[str, Any]:
    """``state`` as a dict, without the "module." prefix that (Distributed)DataParallel gives
    every key; unchanged unless every key has it."""
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
        return strip_module_prefix(obj["state_dict"])
    if _tensors_only(obj):
        state = strip_module_prefix(obj)
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


def describe_foreign(obj: Any, source: str) -> Optional[str]:
    """Why ``obj`` cannot initialise an SN detector, for classifier checkpoints that are not SN
    ResNets ("a checkpoint of another architecture", with the converter to use for torchvision
    ones); None for anything else. The one message of SNCheckpointer and the converter."""
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
        f"{source} is an ImageNet classifier checkpoint ({len(state)} tensors, keys like "
        f"{sample_keys(state, 3)}) of another architecture: it {what}"
    )


@dataclass(frozen=True)
class SNImageNetInfo:
    """What an official checkpoint holds: ResNet version, depth, blocks per stage, BN branch,
    and whether its norms are sparse SN (SSN)."""

    version: str  # "v1" or "v2" (pre-activation)
    depth: int
    blocks: Tuple[int, ...]
    using_bn: bool
    # (stem out, res2 out, res2 bottleneck) channels; the released models have the defaults
    widths: Tuple[int, int, int] = DEFAULT_WIDTHS
    sparse: bool = False  # SSN2d layers: radius, mean_fixed and var_fixed besides SN's tensors

    @property
    def norm(self) -> str:
        """The norm name our backbone needs for these layers: "SSN" or "SN"."""
        return "SSN" if self.sparse else "SN"

    @property
    def name(self) -> str:
        branch = "IN/LN/BN" if self.using_bn else "IN/LN, no BN branch"
        return f"ResNet-{self.depth} {self.version} + {self.norm} ({branch})"

    def required_settings(self) -> Dict[str, Any]:
        """The config values these weights need (FPN backbone name; C4 uses the other one)."""
        settings = {
            "MODEL.BACKBONE.NAME": BACKBONE_NAMES[self.version][0],
            "MODEL.RESNETS.DEPTH": self.depth,
            "MODEL.RESNETS.NORM": self.norm,
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
            "sparse": self.sparse,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "SNImageNetInfo":
        return cls(
            d["version"],
            int(d["depth"]),
            tuple(int(b) for b in d["blocks"]),
            bool(d["using_bn"]),
            tuple(int(w) for w in d.get("widths", DEFAULT_WIDTHS)),
            bool(d.get("sparse", False)),  # files converted before SSN was read are SN
        )


def _norm_rows(src: str, dst: str, info: SNImageNetInfo) -> List[Tuple[str, str]]:
    names = AFFINE_NAMES + LOGIT_NAMES + (RUNNING_NAMES if info.using_bn else ())
    names += SSN_BUFFER_NAMES if info.sparse else ()
    return [(f"{src}.{p}", f"{dst}.{p}") for p in names]


def key_mapping(info: SNImageNetInfo) -> List[Tuple[str, str]]:
    """(official key, our key without prefix) for every tensor of an official checkpoint but fc."""
    rows = [("conv1.weight", "stem.conv1.weight")] + _norm_rows("sn1", "stem.conv1.norm", info)
    for k, num_blocks in enumerate(info.blocks, start=1):
        for i in range(num_blocks):
            src, dst = f"layer{k}.{i}", f"res{k + 1}.{i}"
            for j in (1, 2, 3):
                rows.append((f"{src}.conv{j}.weight", f"{dst}.conv{j}.weight"))
                norm = f"{dst}.conv{j}.norm" if info.version == "v1" else f"{dst}.norm{j}"
                rows += _norm_rows(f"{src}.sn{j}", norm, info)
            if i == 0 and info.version == "v1":
                rows.append((f"{src}.downsample.0.weight", f"{dst}.shortcut.weight"))
                rows += _norm_rows(f"{src}.downsample.1", f"{dst}.shortcut.norm", info)
            elif i == 0:
                rows.append((f"{src}.downsample.weight", f"{dst}.shortcut.weight"))
    if info.version == "v2":
        rows += _norm_rows("sn_out", "norm_out", info)
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
    lengths = {v.numel() for k, v in state.items() if k.endswith(_LOGIT_SUFFIXES)}
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
    sparse = _is_sparse(state, norms)
    problems = _sparse_state_problems(state, norms) if sparse else []
    if problems:
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise CheckpointError(
            f"the SSN checkpoint's radius and fixed flags are inconsistent: "
            f"{'; '.join(problems[:SHOWN])}{more}. The official SSN code saves one value each, "
            "the radius in [0, 1], the flags 0 or 1, and a fixed vector's logits as 1 for its "
            "choice and 0 for the others: download the file again"
        )
    widths = tuple(
        state[k].shape[0]
        for k in ("conv1.weight", "layer1.0.conv3.weight", "layer1.0.conv1.weight")
    )
    version = "v2" if v2 else "v1"
    return SNImageNetInfo(version, DEPTHS[blocks], blocks, using_bn, widths, sparse)


def _is_sparse(state: Mapping[str, Any], norms: List[str]) -> bool:
    """Whether the SN layers ``norms`` of ``state`` are the official SSN2d, with radius,
    mean_fixed and var_fixed; a checkpoint with them in some of its layers only raises."""
    lacking = [f"{n}.{b}" for n in norms for b in SSN_BUFFER_NAMES if f"{n}.{b}" not in state]
    if len(lacking) == len(norms) * len(SSN_BUFFER_NAMES):
        return False
    if lacking:
        complete = len(norms) - len({key.rpartition(".")[0] for key in lacking})
        raise CheckpointError(
            f"the checkpoint is partly Sparse SN: {complete} of {len(norms)} SN layers have the "
            f"SSN buffers {', '.join(SSN_BUFFER_NAMES)}, but {sample_keys(lacking)} are "
            "missing. An official SSN checkpoint has the three in every layer: download it again"
        )
    return True


def _sparse_state_problems(state: Mapping[str, Any], norms: List[str]) -> List[str]:
    """What is wrong with the SSN buffers of the SN layers ``norms`` of ``state``: a buffer
    without exactly one value, a radius outside [0, 1], a fixed flag other than 0 or 1, a fixed
    weight vector whose logits have no single largest entry (its choice is undefined)."""
    problems = []
    for norm in norms:
        values = {}
        for name in SSN_BUFFER_NAMES:
            t = torch.as_tensor(state[f"{norm}.{name}"])
            if t.numel() != 1 or t.is_complex():
                problems.append(f"{norm}.{name} has shape {list(t.shape)}, not [1]")
            else:
                values[name] = float(t.reshape(()))
        radius = values.get(RADIUS)
        if radius is not None and not 0.0 <= radius <= 1.0:  # NaN too
            problems.append(f"{norm}.{RADIUS} is {radius:g}, not in [0, 1]")
        for flag_name, logit_name in zip((MEAN_FIXED, VAR_FIXED), LOGIT_NAMES):
            flag = values.get(flag_name)
            if flag is not None and flag not in (0.0, 1.0):
                problems.append(f"{norm}.{flag_name} is {flag:g}, not 0 or 1")
            elif flag == 1.0:
                logits = torch.as_tensor(state[f"{norm}.{logit_name}"]).double().flatten()
                if int((logits == logits.max()).sum()) != 1:
                    problems.append(
                        f"{norm}.{flag_name} is 1 but {norm}.{logit_name} "
                        f"{[round(v, 4) for v in logits.tolist()]} has no single largest logit"
                    )
    return problems


def _flatten_norm_tensor(key: str, t: Tensor) -> Tensor:
    """(1,C,1,1) weight/bias and (1,C,1) running statistics -> (C,); logits stay (3,) / (2,);
    the SSN buffers (one value each) become what our sparse SN layers keep: a (1,) float radius
    and (1,) long fixed flags."""
    if key.endswith(_SSN_SUFFIXES):
        return t.reshape(1).float() if key.endswith(f".{RADIUS}") else t.reshape(1).long()
    if key.endswith(_LOGIT_SUFFIXES) or t.dim() == 1:
        return t
    if t.dim() in (3, 4) and t.shape[0] == 1 and all(s == 1 for s in t.shape[2:]):
        return t.reshape(t.shape[1])
    raise CheckpointError(
        f"SN tensor {key} has shape {tuple(t.shape)}: expected (1,C,1,1), (1,C,1) or (C,)"
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

    def save(self, path: str) -> None:
        """Write :meth:`to_checkpoint` to ``path``, whole or not at all: a .pkl in detectron2's
        model-zoo format (numpy arrays), anything else with torch.save."""
        checkpoint = self.to_checkpoint()
        if path.endswith(".pkl"):
            checkpoint["model"] = {k: v.detach().cpu().numpy() for k, v in self.state.items()}
            atomic_save(path, lambda f: pickle.dump(checkpoint, f))
        else:
            atomic_save(path, lambda f: torch.save(checkpoint, f))

    def report(self) -> str:
        """The conversion report: what the file is, each mapped tensor, dropped tensors and the
        config settings the weights need."""
        extras = ", ".join(f"{k} {v}" for k, v in self.extras.items())
        lines = [
            f"ImageNet {self.info.norm} checkpoint {self.source}: {self.info.name}, blocks per "
            f"stage {'-'.join(map(str, self.info.blocks))}" + (f" ({extras})" if extras else ""),
            f"{len(self.mapping)} tensors mapped to '{self.prefix}*'; norm weight/bias "
            "(1,C,1,1) and running statistics (1,C,1) flattened to (C,)"
            + ("; SSN radius and fixed flags kept as (1,)" if self.info.sparse else ""),
        ]
        if self.info.sparse:
            lines.append(ssn_summary_line(self.state))
        lines += [
            f"  {src} {list(s)} -> {self.prefix}{dst}" + (f" {list(d)}" if d != s else "")
            for src, dst, s, d in self.mapping
        ]
        dropped = ", ".join(f"{k} {list(s)}" for k, s in self.dropped) or "none"
        lines.append(f"dropped (classifier, not used for detection): {dropped}")
        lines.append("config settings these weights need:")
        lines += [f"  {k}: {v}" for k, v in self.info.required_settings().items()]
        c4_backbone = BACKBONE_NAMES[self.info.version][1]
        lines.append(f"  (C4 models: MODEL.BACKBONE.NAME {c4_backbone})")
        return "\n".join(lines)


def ssn_summary_line(state: Mapping[str, Tensor]) -> str:
    """One line on the sparse SN layers of a converted state dict: their radius, and for the
    means and the variances how many layers are fixed and how many chose each statistic (their
    mix weights, ``sparsestmax.saved_weights``, are one-hot on it), or still mix several."""
    layers = [k[: -len(_LOGIT_SUFFIXES[0])] for k in state if k.endswith(_LOGIT_SUFFIXES[0])]
    radii, fixed, choices = [], [], []
    for layer in layers:
        logits = torch.stack([state[f"{layer}.{name}"].double() for name in LOGIT_NAMES])
        flags = torch.cat([state[f"{layer}.{MEAN_FIXED}"], state[f"{layer}.{VAR_FIXED}"]])
        radius = state[f"{layer}.{RADIUS}"].double()
        weights = saved_weights(logits, radius, flags)
        radii.append(float(radius.reshape(())))
        fixed.append([bool(f) for f in flags.tolist()])
        chosen = zip(is_one_hot(weights).tolist(), weights.argmax(-1).tolist())
        choices.append([BRANCHES[i] if one_hot else None for one_hot, i in chosen])
    low, high = min(radii), max(radii)
    parts = [f"{len(layers)} SSN layers, radius {low:g}" + (f" to {high:g}" if high > low else "")]
    for row, stat in enumerate(("mean", "var")):
        chosen = [c[row] for c in choices]
        counts = ", ".join(f"{b} {chosen.count(b)}" for b in BRANCHES)
        mixed = chosen.count(None)
        parts.append(
            f"{stat}: {sum(f[row] for f in fixed)} fixed, chose {counts}"
            + (f", {mixed} still mixing" if mixed else "")
        )
    return "; ".join(parts)


def convert_official(obj: Any, prefix: str = "", source: str = "") -> Conversion:
    """Convert an official ImageNet SN checkpoint (the loaded dict, or a bare state dict).

    Every tensor but ``fc.*`` is mapped; a missing or unknown tensor raises.

    Raises:
        CheckpointError: if ``obj`` is not an official SN ResNet checkpoint or is incomplete.
    """
    name = source or "the input"
    state = official_state_dict(obj)
    if state is None:
        raise CheckpointError(
            describe_foreign(obj, name)
            or f"{name} is not an ImageNet SN ResNet checkpoint (expected a dict with "
            "'state_dict' holding module.conv1.weight, module.sn1.mean_weight, ...)"
        )
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    try:
        info = inspect_state_dict(state)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    rows = key_mapping(info)
    dropped = [(k, tuple(v.shape)) for k, v in state.items() if k.startswith("fc.")]
    expected = {src for src, _ in rows}
    missing = expected - set(state)
    unknown = set(state) - expected - {k for k, _ in dropped}
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"missing {sample_keys(missing)}")
        if unknown:
            problems.append(f"unknown {sample_keys(unknown)}")
        raise CheckpointError(
            f"{name} looks like {info.name} but its tensors do not match that "
            f"layout: {'; '.join(problems)}"
        )
    converted, mapping = {}, []
    for src, dst in rows:
        t = state[src]
        if _CONV_KEY.search(src):
            if t.dim() != 4:
                raise CheckpointError(f"conv tensor {src} has shape {tuple(t.shape)}: expected 4-D")
            out = t
        else:
            out = _flatten_norm_tensor(src, t)
        converted[prefix + dst] = out
        mapping.append((src, dst, tuple(t.shape), tuple(out.shape)))
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
