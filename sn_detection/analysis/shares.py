"""The IN/LN/BN shares of SN layers (the softmax of their logits; for sparse SN layers their
sparsestmax weights, one-hot where fixed), read from a model, a state dict or a checkpoint file,
and summarised per part of the model.

A layer's part comes from its module name (:func:`part_of`); layers are listed in network order.
A part's summary is the plain mean of its layers' shares. The training scalars are named
``sn/<part>/<mean|var>_<IN|LN|BN>``, and for parts with sparse SN layers ``sn/<part>/fixed``
(:func:`share_scalars`).
"""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..checkpoint import convert_official, official_state_dict, read_checkpoint
from ..checkpoint.official_layout import strip_module_prefix
from ..layers import named_switch_norms
from ..layers.sparsestmax import saved_weights, weights_as_logits
from ..layers.switch_norm import BRANCHES, LOGIT_NAMES, SSN_BUFFER_NAMES
from ..utils.cli import InputError

STATS = ("mean", "var")
PART_ORDER = (
    "stem",
    "res2",
    "res3",
    "res4",
    "res5",
    "fpn",
    "rpn",
    "box_head",
    "mask_head",
    "keypoint_head",
)
SCALAR_PREFIX = "sn"
# the model-wide BN shares, which detectron2's console writer prints (names with "[metric]")
CONSOLE_SCALARS = {"mean": "[metric]sn/BN_mean", "var": "[metric]sn/BN_var"}
_OTHER_PARTS = {
    "fpn": "fpn",
    "top_block": "fpn",
    "proposal_generator": "rpn",
    "rpn_head": "rpn",
    "box_head": "box_head",
    "mask_head": "mask_head",
    "keypoint_head": "keypoint_head",
    "norm_out": "res5",
}
_MEAN_KEY, _VAR_KEY = (f".{name}" for name in LOGIT_NAMES)
Shares = Dict[str, float]
Fixed = Tuple[bool, bool]  # whether a sparse SN layer's mean and variance weights are fixed
ONE_HOT = 1.0 - 1e-6  # a share at least this large is the layer's choice


class AnalysisError(InputError):
    """An input of the analysis (checkpoint, metrics.json, run record) that cannot be used; the
    message names the file and the fix."""


def part_of(name: str) -> Tuple[str, str]:
    """(part, short name) of the SN layer called ``name`` in its model, e.g.
    ``backbone.bottom_up.res3.0.conv1.norm`` -> ``("res3", "res3.0.conv1.norm")``. The short name
    starts at the component that decided the part, so it is the same in a detector and in an
    ImageNet backbone. Parts: ``stem``, ``res<k>`` (``norm_out`` of the v2 backbone: ``res5``),
    ``fpn``, ``rpn``, the heads; any other layer: the first two components of its name."""
    components = name.split(".")
    for i, c in enumerate(components):
        if c == "stem" or (c.startswith("res") and c[3:].isdigit()):
            return c, ".".join(components[i:])
        part = _OTHER_PARTS.get(c) or ("fpn" if c.startswith("fpn_") else None)
        if part is not None:
            return part, ".".join(components[i:])
    return ".".join(components[:2]), name


def part_rank(part: str) -> int:
    """The position of ``part`` in network order (unknown parts after the known ones)."""
    return PART_ORDER.index(part) if part in PART_ORDER else len(PART_ORDER)


@dataclass(frozen=True)
class LayerShares:
    """The shares of one SN layer: ``mean`` and ``var`` map IN/LN/BN to its mix weights (BN 0
    for a layer without the BN branch). ``fixed``: for a sparse SN layer, whether its mean and
    variance weights are fixed; None for an SN layer."""

    name: str
    part: str
    short_name: str
    mean: Shares
    var: Shares
    using_bn: bool
    fixed: Optional[Fixed] = None

    @property
    def sparse(self) -> bool:
        return self.fixed is not None

    def choice(self, stat: str) -> Optional[str]:
        """The branch that ``stat`` ("mean" or "var") uses alone (a one-hot weight vector, as a
        fixed one is), or None."""
        shares = getattr(self, stat)
        return next((b for b in BRANCHES if shares[b] >= ONE_HOT), None)

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "name": self.name,
            "part": self.part,
            "short_name": self.short_name,
            "using_bn": self.using_bn,
            "mean": dict(self.mean),
            "var": dict(self.var),
        }
        if self.fixed is not None:
            out.update(sparse=True, mean_fixed=self.fixed[0], var_fixed=self.fixed[1])
            out.update((f"{stat}_choice", self.choice(stat)) for stat in STATS)
        return out


def _shares(row: Sequence[float]) -> Shares:
    return {b: float(row[i]) if i < len(row) else 0.0 for i, b in enumerate(BRANCHES)}


def shares_from_logits(
    logits: Iterable[Tuple[str, Tensor, Tensor]], fixed: Optional[Mapping[str, Fixed]] = None
) -> List[LayerShares]:
    """The shares (softmax) of each ``(name, mean_weight, var_weight)``, in network order;
    ``fixed`` gives the fixed flags of the sparse SN layers among them, by name.

    The softmax runs on the logits' device, all layers with the same number of branches at once,
    and the results reach the host in one transfer per group: one synchronisation in all."""
    items = [(name, m.detach(), v.detach()) for name, m, v in logits]
    groups: Dict[Tuple[int, torch.device], List[int]] = OrderedDict()
    for i, (name, m, v) in enumerate(items):
        if m.dim() != 1 or m.shape != v.shape or m.numel() not in (2, 3):
            raise AnalysisError(
                f"SN layer {name}: mean_weight {tuple(m.shape)} and var_weight {tuple(v.shape)} "
                "must both have 3 logits (IN, LN, BN) or 2 (IN, LN)"
            )
        groups.setdefault((m.numel(), m.device), []).append(i)
    rows: Dict[int, Tuple[List[float], List[float]]] = {}
    for indices in groups.values():
        stacked = torch.stack([torch.stack([items[i][1], items[i][2]]) for i in indices])
        shares = torch.softmax(stacked.float(), dim=-1).cpu().tolist()  # (layers, 2, branches)
        rows.update(zip(indices, shares))
    layers = []
    fixed = fixed or {}
    for i, (name, _, _) in enumerate(items):
        part, short = part_of(name)
        mean, var = rows[i]
        layers.append(
            LayerShares(
                name, part, short, _shares(mean), _shares(var), len(mean) == 3, fixed.get(name)
            )
        )
    order = sorted(range(len(layers)), key=lambda i: (part_rank(layers[i].part), i))
    return [layers[i] for i in order]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper, so names are those of its checkpoints."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_shares(model: nn.Module) -> List[LayerShares]:
    """The shares of every SN layer of ``model`` (frozen ones included), in network order; for
    sparse SN layers their sparsestmax weights (given as logits whose softmax they are)."""
    return layer_shares(named_switch_norms(_unwrap(model)))


def layer_shares(layers: Iterable[Tuple[str, nn.Module]]) -> List[LayerShares]:
    """The shares of ``(name, SN layer)`` pairs (:func:`model_shares`), with the fixed flags of
    the sparse ones (read in one transfer)."""
    layers = list(layers)
    sparse = [(n, m) for n, m in layers if getattr(m, "_holds_sparse_state", False)]
    fixed = {}
    if sparse:
        flags = torch.stack([m._fixed() for _, m in sparse]).cpu().tolist()
        fixed = {n: (bool(f[0]), bool(f[1])) for (n, _), f in zip(sparse, flags)}
    return shares_from_logits(((n, *softmax_logits_of(m)) for n, m in layers), fixed)


def softmax_logits_of(layer: nn.Module) -> Tuple[Tensor, Tensor]:
    """Logits whose softmax is the layer's mix weights (SN and frozen SN: its own logits)."""
    if hasattr(layer, "softmax_logits"):
        return layer.softmax_logits()
    return layer.mean_weight, layer.var_weight


def _logit_tensor(value: Any, key: str, source: str) -> Tensor:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise AnalysisError(
            f"{source or 'the state dict'}: {key} is a {type(value).__name__}, not a tensor of "
            "numbers: give a checkpoint saved by torch.save or detectron2's checkpointer"
        )
    return t


def _sparse_softmax_logits(
    layer: str, mean: Tensor, var: Tensor, state: Mapping[str, Any], source: str
) -> Tuple[Tensor, Tensor, Fixed]:
    """Logits whose softmax is the mix weights of the saved sparse SN layer ``layer``
    (``sparsestmax.saved_weights``: sparsestmax at its radius, the one-hot choice where fixed),
    and its fixed flags."""
    if mean.numel() not in (2, 3) or mean.shape != var.shape:
        return mean, var, (False, False)  # shares_from_logits names the bad shapes
    saved = []
    for name in SSN_BUFFER_NAMES:
        value = state[f"{layer}.{name}"]
        if isinstance(value, Tensor) and value.dtype in (torch.bool, torch.uint8):
            value = value.long()  # fixed flags saved as bool or byte
        value = _logit_tensor(value, f"{layer}.{name}", source)
        if value.numel() != 1:
            raise AnalysisError(
                f"{source or 'the state dict'}: {layer}.{name} has {value.numel()} values, not 1: "
                "not a sparse SN layer's state; give a checkpoint saved by this package or the "
                "official SSN code"
            )
        saved.append(value.reshape(1))
    radius, mean_fixed, var_fixed = saved
    fixed = torch.cat([mean_fixed, var_fixed]).double()
    weights = saved_weights(torch.stack([mean, var]).double(), radius.double(), fixed)
    logits = weights_as_logits(weights)
    return logits[0], logits[1], (bool(fixed[0] != 0), bool(fixed[1] != 0))


def state_dict_shares(state: Mapping[str, Any], source: str = "") -> List[LayerShares]:
    """The shares of every SN layer in a state dict (tensors or numpy arrays): each pair of
    ``<layer>.mean_weight`` and ``<layer>.var_weight``; a layer that also has ``radius``,
    ``mean_fixed`` and ``var_fixed`` (sparse SN, ours or the official ``SSN2d``) gets its sparse
    weights and fixed flags. ``source`` names the state dict in errors."""
    logits = []
    fixed = {}
    for key, value in state.items():
        if isinstance(key, str) and key.endswith(_MEAN_KEY):
            layer = key[: -len(_MEAN_KEY)]
            if layer + _VAR_KEY in state:
                var_key = layer + _VAR_KEY
                mean = _logit_tensor(value, key, source)
                var = _logit_tensor(state[var_key], var_key, source)
                if all(f"{layer}.{name}" in state for name in SSN_BUFFER_NAMES):
                    mean, var, fixed[layer] = _sparse_softmax_logits(
                        layer, mean, var, state, source
                    )
                logits.append((layer, mean, var))
    return shares_from_logits(logits, fixed)


def summarize(layers: Sequence[LayerShares]) -> Dict[str, Dict[str, Any]]:
    """{part: {"layers": count, "mean": shares, "var": shares}} in network order, each share the
    plain mean over the part's layers; a part with sparse SN layers also has ``"ssn"``
    (:func:`sparse_summary`)."""
    parts: Dict[str, List[LayerShares]] = OrderedDict()
    for layer in layers:
        parts.setdefault(layer.part, []).append(layer)
    out: Dict[str, Dict[str, Any]] = OrderedDict()
    for part, members in parts.items():
        out[part] = {"layers": len(members), **_mean_shares(members)}
        if any(layer.sparse for layer in members):
            out[part]["ssn"] = sparse_summary(members)
    return out


def sparse_summary(layers: Sequence[LayerShares]) -> Dict[str, Any]:
    """Of the sparse SN layers among ``layers``: their count (``layers``), how many chose each
    branch for the mean and the variance (``mean_choice``, ``var_choice``: IN/LN/BN counts; a
    layer not yet one-hot counts in none) and how many have fixed mean and variance weights
    (``mean_fixed``, ``var_fixed``)."""
    sparse = [layer for layer in layers if layer.sparse]
    out: Dict[str, Any] = {"layers": len(sparse)}
    for i, stat in enumerate(STATS):
        choices = [layer.choice(stat) for layer in sparse]
        out[f"{stat}_choice"] = {b: choices.count(b) for b in BRANCHES}
        out[f"{stat}_fixed"] = sum(layer.fixed[i] for layer in sparse)
    return out


def _mean_shares(layers: Sequence[LayerShares]) -> Dict[str, Shares]:
    return {
        stat: {b: sum(getattr(m, stat)[b] for m in layers) / len(layers) for b in BRANCHES}
        for stat in STATS
    }


@dataclass
class CheckpointShares:
    """The SN layers of one checkpoint file: where they come from and their shares."""

    source: str
    # "detectron2 checkpoint", "ImageNet SN (or SSN) checkpoint (official layout)", "state dict"
    kind: str
    layers: List[LayerShares]
    iteration: Optional[int] = None

    def summary(self) -> Dict[str, Dict[str, Any]]:
        return summarize(self.layers)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "iteration": self.iteration,
            "parts": self.summary(),
            "layers": [layer.to_dict() for layer in self.layers],
        }


def load_shares(path: str) -> CheckpointShares:
    """The SN layers of a checkpoint file, read without running code: ours and detectron2's
    (``{"model": state_dict, ...}``, ``.pth`` or ``.pkl``), a bare state dict, or the released
    ImageNet SN and SSN ``.pth`` (recognised by contents and renamed to our backbone's names).

    Raises:
        AnalysisError: for a file with no SN layers (naming what it holds instead).
        CheckpointError: for a file that is not a checkpoint, or one that would run code.
    """
    obj = read_checkpoint(path)
    iteration = None
    if official_state_dict(obj) is not None:
        conversion = convert_official(obj, source=path)
        kind = f"ImageNet {conversion.info.norm} checkpoint (official layout)"
        state = conversion.state
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        kind = "detectron2 checkpoint"
        state = strip_module_prefix(obj["model"])
        iteration = obj.get("iteration")
    elif isinstance(obj, Mapping):
        kind = "state dict"
        inner = obj.get("state_dict", obj)
        state = strip_module_prefix(inner) if isinstance(inner, Mapping) else {}
    else:
        raise AnalysisError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    layers = state_dict_shares(state, source=path)
    if not layers:
        keys = ", ".join(list(map(str, state))[:3])
        raise AnalysisError(
            f"{path} ({kind}, {len(state)} entries, e.g. {keys}) has no SN layer: no pair of "
            "<layer>.mean_weight and <layer>.var_weight tensors. Give a checkpoint of a model "
            "with SN/SyncSN/SSN layers."
        )
    try:
        iteration = int(iteration) if iteration is not None else None
    except (TypeError, ValueError):
        iteration = None  # not a count: shown as unknown
    return CheckpointShares(path, kind, layers, iteration)


def scalar_name(part: str, stat: str, branch: str) -> str:
    """The EventStorage name of a part's share, e.g. ``sn/res4/var_BN``."""
    return f"{SCALAR_PREFIX}/{part}/{stat}_{branch}"


def fixed_scalar_name(part: str) -> str:
    """The EventStorage name of the fraction of a part's sparse SN weight vectors (mean and
    variance of each layer) that are fixed, e.g. ``sn/res4/fixed``."""
    return f"{SCALAR_PREFIX}/{part}/fixed"


def share_scalars(layers: Sequence[LayerShares]) -> Dict[str, float]:
    """The training scalars: every part's six shares, for a part with sparse SN layers the
    fraction of their weight vectors that are fixed (``fixed_scalar_name``), and the model-wide
    mean BN shares that the console shows (``CONSOLE_SCALARS``)."""
    summary = summarize(layers)
    scalars = {
        scalar_name(part, stat, b): s[stat][b]
        for part, s in summary.items()
        for stat in STATS
        for b in BRANCHES
    }
    for part, s in summary.items():
        if "ssn" in s:
            ssn = s["ssn"]
            scalars[fixed_scalar_name(part)] = (ssn["mean_fixed"] + ssn["var_fixed"]) / (
                2 * ssn["layers"]
            )
    if layers:
        for stat, name in CONSOLE_SCALARS.items():
            scalars[name] = sum(getattr(layer, stat)["BN"] for layer in layers) / len(layers)
    return scalars
