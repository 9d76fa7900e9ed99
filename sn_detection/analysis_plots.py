"""Figures of the SN shares (matplotlib's object API: no pyplot, no backend or global state).

- :func:`importance_figure`: the SN paper's importance figure. Every SN layer in network order;
  for each, two stacked bars of its IN/LN/BN shares, the mean's on the left and the variance's
  (lighter, hatched) on the right; parts separated and labelled. With two runs, one panel each,
  layers aligned by name.
- :func:`training_figure`: the per-part shares over the iterations of a training run (from
  ``metrics.json``), one panel per part, mean solid and variance dashed; the share axis, common
  to the panels, spans the values (shares often move a few percent only, invisible on 0..1).
"""

from typing import IO, Dict, List, Optional, Sequence, Tuple

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .analysis import BRANCHES, STATS, Importances, LayerImportance, align

COLORS = {"IN": "#1f77b4", "LN": "#ff7f0e", "BN": "#2ca02c"}
DPI = 100
_BAR = 0.42  # width of each of a layer's two bars (layer pitch 1)
_VAR_STYLE = {"alpha": 0.55, "hatch": "///"}  # the variance bars and their legend entry


def _spans(parts: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(part, first index, last index) of each run of equal consecutive parts."""
    spans: List[Tuple[str, int, int]] = []
    for i, part in enumerate(parts):
        if spans and spans[-1][0] == part:
            spans[-1] = (part, spans[-1][1], i)
        else:
            spans.append((part, i, i))
    return spans


def _panel(ax: Axes, parts: Sequence[str], layers: Sequence[Optional[LayerImportance]]) -> None:
    """One run's stacked bars, layer i at x = i; ``None`` marks a layer the run lacks."""
    for stat, offset in (("mean", -_BAR / 2), ("var", _BAR / 2)):
        bottom = [0.0] * len(layers)
        for branch in BRANCHES:
            heights = [getattr(layer, stat)[branch] if layer else 0.0 for layer in layers]
            ax.bar(
                [i + offset for i in range(len(layers))],
                heights,
                _BAR,
                bottom=bottom,
                color=COLORS[branch],
                edgecolor="white",
                linewidth=0,
                **({} if stat == "mean" else _VAR_STYLE),
            )
            bottom = [b + h for b, h in zip(bottom, heights)]
    spans = _spans(parts)
    for _, first, _ in spans[1:]:
        ax.axvline(first - 0.5, color="0.3", linewidth=0.8, linestyle="--")
    narrow = any(last - first + 1 < len(part) / 2 for part, first, last in spans)
    ax.set_xticks([(first + last) / 2 for _, first, last in spans])
    ax.set_xticklabels(
        [part for part, _, _ in spans],
        fontsize=8,
        rotation=30 if narrow else 0,
        ha="right" if narrow else "center",
    )
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    for i in (i for i, layer in enumerate(layers) if layer is None):
        ax.text(i, 0.5, "absent", rotation=90, ha="center", va="center", fontsize=6, color="0.4")


def _legend(fig: Figure, handles: list) -> None:
    """The legend above the panels, and the panels fitted below it."""
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))


def _branch_handles() -> list:
    return [Patch(color=COLORS[b], label=b) for b in BRANCHES]


def importance_figure(runs: Sequence[Importances], labels: Sequence[str]) -> Figure:
    """The importance figure of one run, or of two runs aligned layer by layer."""
    rows = align(runs)
    parts = [part for _, part, _ in rows]
    width = min(max(6.0, 1.5 + 0.13 * len(rows)), 20.0)
    fig = Figure(figsize=(width, 2.4 * len(runs) + 0.6))
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for k, (ax, run, label) in enumerate(zip(axes, runs, labels)):
        _panel(ax, parts, [found[k] for _, _, found in rows])
        ax.set_title(f"{label}: {len(run.layers)} SN layers ({run.kind})", fontsize=9, loc="left")
    _legend(
        fig,
        _branch_handles()
        + [
            Patch(facecolor="0.5", label="left bar: mean"),
            Patch(facecolor="0.5", label="right bar: variance", **_VAR_STYLE),
        ],
    )
    return fig


def training_figure(history: Dict[str, Dict[str, List[Tuple[int, float]]]]) -> Figure:
    """Per-part shares over the iterations (``analysis.read_metrics``)."""
    parts = list(history)
    cols = min(4, len(parts))
    nrows = -(-len(parts) // cols)
    fig = Figure(figsize=(3.0 * cols, 2.2 * nrows + 0.5))
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True).ravel()
    for ax, part in zip(axes, parts):
        for stat, style in zip(STATS, ("-", "--")):
            for branch in BRANCHES:
                points = history[part].get(f"{stat}_{branch}", [])
                if points:
                    iterations, values = zip(*points)
                    ax.plot(iterations, values, style, color=COLORS[branch], linewidth=1.2)
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(parts) :]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("share", fontsize=8)
    _legend(
        fig,
        _branch_handles()
        + [
            Line2D([], [], color="0.3", linestyle="-", label="mean"),
            Line2D([], [], color="0.3", linestyle="--", label="variance"),
        ],
    )
    return fig


def save_png(fig: Figure, f: IO[bytes], dpi: int = DPI) -> None:
    """Write ``fig`` as PNG to the open binary file ``f``."""
    fig.savefig(f, format="png", dpi=dpi)
