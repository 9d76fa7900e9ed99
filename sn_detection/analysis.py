"""What SN learned: the IN/LN/BN shares of every SN layer, grouped by part of the model.

Every SN layer (``SwitchNorm2d``, ``SyncSwitchNorm2d``, ``FrozenSwitchNorm2d``) holds two logit
vectors, ``mean_weight`` and ``var_weight``; its shares are their softmax (IN, LN, BN order; BN is
0 in layers without the BN branch). Layers are read from a model (:func:`model_importances`) or
from any state dict (:func:`state_dict_importances`: frozen layers keep their logits as buffers, so
they are found as well), and from files by :func:`load_importances`: our and detectron2's
checkpoints (``{"model": state_dict, ...}``, ``.pth`` or ``.pkl``) and the released ImageNet SN
``.pth`` (recognised by contents and renamed to our backbone's names).

Each layer belongs to one *part*, decided by its module name: ``stem``, ``res2`` .. ``res5`` (the
v2 backbone's final ``norm_out`` belongs to ``res5``), ``fpn``, ``rpn``, ``box_head``,
``mask_head``, ``keypoint_head``; any other layer to the first two components of its name. Layers
are listed in network order (parts in that order, registration order inside a part). A part's
summary is the plain mean of its layers' shares.

The training scalars (see ``sn_detection.engine.SNImportanceWriter``) are named
``sn/<part>/<mean|var>_<IN|LN|BN>``; :func:`read_metrics` reads them back from ``metrics.json``.
"""

import csv
import io
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .checkpoint import convert_official, official_state_dict, read_checkpoint
from .layers import FrozenSwitchNorm2d, SwitchNorm2d

BRANCHES = ("IN", "LN", "BN")
STATS = ("mean", "var")
PART_ORDER = (
    "stem", "res2", "res3", "res4", "res5", "fpn", "rpn", "box_head", "mask_head", "keypoint_head",
)  # fmt: skip
SCALAR_PREFIX = "sn"
# the model-wide BN shares, which detectron2's console writer prints (names with "[metric]")
CONSOLE_SCALARS = {"mean": "[metric]sn/BN_mean", "var": "[metric]sn/BN_var"}
_SCALAR = re.compile(r"^sn/(?P<part>.+)/(?P<stat>mean|var)_(?P<branch>IN|LN|BN)$")
_STAGE = re.compile(r"^res\d+$")
_OTHER_PARTS = {
    "fpn": "fpn", "top_block": "fpn", "proposal_generator": "rpn", "rpn_head": "rpn",
    "box_head": "box_head", "mask_head": "mask_head", "keypoint_head": "keypoint_head",
    "norm_out": "res5",
}  # fmt: skip
Shares = Dict[str, float]


def part_of(name: str) -> Tuple[str, str]:
    """(part, short name) of the SN layer called ``name`` in its model, e.g.
    ``backbone.bottom_up.res3.0.conv1.norm`` -> ``("res3", "res3.0.conv1.norm")``; the short name
    starts at the component that decided the part, so it is the same in a detector and in an
    ImageNet backbone."""
    components = name.split(".")
    for i, c in enumerate(components):
        if c == "stem" or _STAGE.match(c):
            return c, ".".join(components[i:])
        part = _OTHER_PARTS.get(c) or ("fpn" if c.startswith("fpn_") else None)
        if part is not None:
            return part, ".".join(components[i:])
    return ".".join(components[:2]), name


@dataclass(frozen=True)
class LayerImportance:
    """The shares of one SN layer: ``mean`` and ``var`` map IN/LN/BN to softmax weights."""

    name: str
    part: str
    short_name: str
    mean: Shares
    var: Shares
    using_bn: bool

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "part": self.part,
            "short_name": self.short_name,
            "using_bn": self.using_bn,
            "mean": dict(self.mean),
            "var": dict(self.var),
        }


def _shares(row: Sequence[float]) -> Shares:
    return {b: float(row[i]) if i < len(row) else 0.0 for i, b in enumerate(BRANCHES)}


def _part_rank(part: str) -> int:
    return PART_ORDER.index(part) if part in PART_ORDER else len(PART_ORDER)


def importances_from_logits(
    logits: Iterable[Tuple[str, Tensor, Tensor]],
) -> List[LayerImportance]:
    """The shares of each ``(name, mean_weight, var_weight)``, in network order.

    The softmax runs on the logits' device, all layers with the same number of branches at once,
    and the results reach the host in one transfer per group: one synchronisation in all."""
    items = [(name, m.detach(), v.detach()) for name, m, v in logits]
    groups: Dict[Tuple[int, torch.device], List[int]] = OrderedDict()
    for i, (name, m, v) in enumerate(items):
        if m.dim() != 1 or m.shape != v.shape or m.numel() not in (2, 3):
            raise ValueError(
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
    for i, (name, m, _) in enumerate(items):
        part, short = part_of(name)
        mean, var = rows[i]
        layers.append(
            LayerImportance(name, part, short, _shares(mean), _shares(var), len(mean) == 3)
        )
    order = sorted(range(len(layers)), key=lambda i: (_part_rank(layers[i].part), i))
    return [layers[i] for i in order]


def sn_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every SN layer of ``model`` (trainable, synchronized and frozen), with
    the name a checkpoint of the model uses (a DistributedDataParallel wrapper is looked
    through)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (SwitchNorm2d, FrozenSwitchNorm2d))
    ]


def model_importances(model: nn.Module) -> List[LayerImportance]:
    """The shares of every SN layer of ``model``, in network order."""
    return importances_from_logits((n, m.mean_weight, m.var_weight) for n, m in sn_modules(model))


def state_dict_importances(state: Mapping[str, Any]) -> List[LayerImportance]:
    """The shares of every SN layer in a state dict (tensors or numpy arrays): each pair of
    ``<layer>.mean_weight`` and ``<layer>.var_weight``."""
    logits = []
    for key, value in state.items():
        if isinstance(key, str) and key.endswith(".mean_weight"):
            layer = key[: -len(".mean_weight")]
            if layer + ".var_weight" in state:
                var = state[layer + ".var_weight"]
                logits.append((layer, torch.as_tensor(value), torch.as_tensor(var)))
    return importances_from_logits(logits)


@dataclass
class Importances:
    """The SN layers of one checkpoint file: where they come from and their shares."""

    source: str
    kind: str  # "detectron2 checkpoint", "ImageNet SN checkpoint (official layout)", "state dict"
    layers: List[LayerImportance]
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


def _strip_module(state: Mapping[str, Any]) -> Mapping[str, Any]:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_importances(path: str) -> Importances:
    """The SN layers of a checkpoint file, read without running code (see module docstring).

    Raises:
        ValueError: for a file with no SN layers (naming what it holds instead).
    """
    obj = read_checkpoint(path)
    iteration = None
    if official_state_dict(obj) is not None:
        kind = "ImageNet SN checkpoint (official layout)"
        state = convert_official(obj, source=path).state
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        kind = "detectron2 checkpoint"
        state = _strip_module(obj["model"])
        iteration = obj.get("iteration")
    elif isinstance(obj, Mapping):
        kind = "state dict"
        state = _strip_module(obj.get("state_dict", obj))
    else:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    layers = state_dict_importances(state)
    if not layers:
        keys = ", ".join(list(map(str, state))[:3])
        raise ValueError(
            f"{path} ({kind}, {len(state)} entries, e.g. {keys}) has no SN layer: no pair of "
            "<layer>.mean_weight and <layer>.var_weight tensors. Give a checkpoint of a model "
            "with SN/SyncSN layers."
        )
    return Importances(path, kind, layers, int(iteration) if iteration is not None else None)


def summarize(layers: Sequence[LayerImportance]) -> Dict[str, Dict[str, Any]]:
    """{part: {"layers": count, "mean": shares, "var": shares}} in network order, each share the
    plain mean over the part's layers."""
    parts: Dict[str, List[LayerImportance]] = OrderedDict()
    for layer in layers:
        parts.setdefault(layer.part, []).append(layer)
    return OrderedDict(
        (part, {"layers": len(members), **_mean_shares(members)}) for part, members in parts.items()
    )


def _mean_shares(layers: Sequence[LayerImportance]) -> Dict[str, Shares]:
    return {
        stat: {b: sum(getattr(m, stat)[b] for m in layers) / len(layers) for b in BRANCHES}
        for stat in STATS
    }


def scalar_name(part: str, stat: str, branch: str) -> str:
    """The EventStorage name of a part's share, e.g. ``sn/res4/var_BN``."""
    return f"{SCALAR_PREFIX}/{part}/{stat}_{branch}"


def importance_scalars(layers: Sequence[LayerImportance]) -> Dict[str, float]:
    """The training scalars: every part's six shares, and the model-wide mean BN shares that the
    console shows (``CONSOLE_SCALARS``)."""
    scalars = {
        scalar_name(part, stat, b): s[stat][b]
        for part, s in summarize(layers).items()
        for stat in STATS
        for b in BRANCHES
    }
    if layers:
        for stat, name in CONSOLE_SCALARS.items():
            scalars[name] = sum(getattr(layer, stat)["BN"] for layer in layers) / len(layers)
    return scalars


# -- metrics.json -------------------------------------------------------------------------------


def read_metrics(path: str) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """The per-part shares written during training, from detectron2's ``metrics.json`` (one JSON
    object per line): {part: {"mean_IN": [(iteration, share), ...], ...}}, parts in network order.

    Raises:
        ValueError: if the file holds no ``sn/<part>/...`` scalar (naming the file).
    """
    history: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path} line {number} is not JSON ({e.msg}): expected detectron2's "
                    "metrics.json, one JSON object per line"
                ) from None
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            for key, value in record.items():
                m = _SCALAR.match(key)
                if m and isinstance(value, (int, float)) and math.isfinite(value):
                    series = history.setdefault(m["part"], {})
                    series.setdefault(f"{m['stat']}_{m['branch']}", []).append(
                        (int(record["iteration"]), float(value))
                    )
    if not history:
        raise ValueError(
            f"{path} has no SN shares (no sn/<part>/<mean|var>_<IN|LN|BN> scalars): train with "
            "tools/train_net.py, which writes them every 20 iterations"
        )
    ordered = sorted(enumerate(history), key=lambda t: (_part_rank(t[1]), t[0]))
    return OrderedDict((part, history[part]) for _, part in ordered)


# -- tables -------------------------------------------------------------------------------------

COLUMNS = [f"{stat}_{b}" for stat in STATS for b in BRANCHES]


def _row(shares: Mapping[str, Shares]) -> List[float]:
    return [shares[stat][b] for stat in STATS for b in BRANCHES]


def layers_csv(runs: Sequence[Importances], labels: Sequence[str]) -> str:
    """One row per SN layer (network order of the first run, then layers only in the second):
    index, part, layer (short name), the six shares of each run, and with two runs their
    differences (second minus first); empty cells where a run lacks the layer."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["index", "part", "layer"]
    for label in labels:
        header += [f"{label}:{c}" for c in COLUMNS]
    if len(runs) == 2:
        header += [f"delta:{c}" for c in COLUMNS]
    writer.writerow(header)
    for index, (short, part, found) in enumerate(align(runs)):
        row: List[Any] = [index, part, short]
        values = [_row(_by_stat(layer)) if layer else None for layer in found]
        for v in values:
            row += [f"{x:.6f}" for x in v] if v else [""] * len(COLUMNS)
        if len(runs) == 2:
            a, b = values
            row += [f"{y - x:+.6f}" for x, y in zip(a, b)] if a and b else [""] * len(COLUMNS)
        writer.writerow(row)
    return out.getvalue()


def _by_stat(layer: LayerImportance) -> Dict[str, Shares]:
    return {"mean": layer.mean, "var": layer.var}


def align(
    runs: Sequence[Importances],
) -> List[Tuple[str, str, List[Optional[LayerImportance]]]]:
    """(short name, part, [each run's layer or None]) over the union of the runs' layers, matched
    by short name (so an ImageNet backbone lines up with the detector fine-tuned from it), in the
    network order of the first run, the second run's other layers after those of their part."""
    by_run = [{layer.short_name: layer for layer in run.layers} for run in runs]
    names: List[Tuple[str, str]] = []
    seen = set()
    for run in runs:
        for layer in run.layers:
            if layer.short_name not in seen:
                seen.add(layer.short_name)
                names.append((layer.short_name, layer.part))
    order = sorted(
        range(len(names)), key=lambda i: (_part_rank(names[i][1]), _first_part(names, i), i)
    )
    return [(names[i][0], names[i][1], [r.get(names[i][0]) for r in by_run]) for i in order]


def _first_part(names: List[Tuple[str, str]], i: int) -> int:
    """Where the part of names[i] first appears, to keep unknown parts in first-seen order."""
    return next(j for j, (_, part) in enumerate(names) if part == names[i][1])


def parts_markdown(runs: Sequence[Importances], labels: Sequence[str]) -> str:
    """A markdown table of the per-part shares (percent) of each run."""
    lines = []
    for run, label in zip(runs, labels):
        lines += [
            f"SN shares of {label} ({run.kind}"
            + (f", iteration {run.iteration}" if run.iteration is not None else "")
            + "), percent, mean of the part's layers:",
            "",
            "| part | layers | mean IN | mean LN | mean BN | var IN | var LN | var BN |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for part, s in run.summary().items():
            cells = " | ".join(f"{100 * v:.1f}" for v in _row(s))
            lines.append(f"| {part} | {s['layers']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def report(runs: Sequence[Importances], labels: Sequence[str]) -> Dict[str, Any]:
    """The JSON report: each run (source, kind, iteration, per-part summary, every layer), and
    with two runs the per-part differences of the shares (second minus first)."""
    out: Dict[str, Any] = {"runs": [{"label": lb, **r.to_dict()} for r, lb in zip(runs, labels)]}
    if len(runs) == 2:
        a, b = (r.summary() for r in runs)
        out["difference"] = {
            part: {s: {x: b[part][s][x] - a[part][s][x] for x in BRANCHES} for s in STATS}
            for part in a
            if part in b
        }
    return out
