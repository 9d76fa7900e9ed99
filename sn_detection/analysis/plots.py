"""Figures (matplotlib's object API: no pyplot, no backend or global state): the SN shares of
every layer (:func:`shares_figure`), the shares over training (:func:`training_figure`), and the
norm study's curves (:func:`curves_figure`)."""

import io
from typing import IO, Dict, List, Optional, Sequence, Tuple

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..layers.switch_norm import BRANCHES
from .metrics import History
from .shares import STATS, CheckpointShares, LayerShares
from .tables import align

COLORS = {"IN": "#1f77b4", "LN": "#ff7f0e", "BN": "#2ca02c"}
DPI = 100
_BAR = 0.42  # width of each of a layer's two bars (layer pitch 1)
_VAR_STYLE = {"alpha": 0.55, "hatch": "///"}  # the variance bars and their legend entry
Band = Tuple[List[int], List[float], List[float], List[float]]  # iterations, mean, low, high


def _spans(parts: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(part, first index, last index) of each run of equal consecutive parts."""
    spans: List[Tuple[str, int, int]] = []
    for i, part in enumerate(parts):
        if spans and spans[-1][0] == part:
            spans[-1] = (part, spans[-1][1], i)
        else:
            spans.append((part, i, i))
    return spans


def _panel(ax: Axes, parts: Sequence[str], layers: Sequence[Optional[LayerShares]]) -> None:
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


def shares_figure(runs: Sequence[CheckpointShares], labels: Sequence[str]) -> Figure:
    """The SN paper's figure of the shares: every SN layer in network order, two stacked bars of
    its IN/LN/BN shares each, the mean's on the left and the variance's (lighter, hatched) on the
    right, parts separated and labelled. With two runs, one panel each, layers aligned by name."""
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


def training_figure(history: History) -> Figure:
    """The per-part shares over the iterations (``metrics.share_history``), one panel per part,
    mean solid and variance dashed; the share axis, common to the panels, spans the values
    (shares often move a few percent only, invisible on 0..1)."""
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


def curves_figure(
    panels: Sequence[Tuple[str, Dict[str, Band]]], title: str, dpi: int = DPI
) -> Figure:
    """One panel per (y label, {norm: band}): per norm the mean over seeds as a line and a band
    from the lowest to the highest seed."""
    fig = Figure(figsize=(5 * max(len(panels), 1), 3.6))
    for ax, (ylabel, bands) in zip(fig.subplots(1, max(len(panels), 1), squeeze=False)[0], panels):
        for norm, (its, mean, low, high) in bands.items():
            (line,) = ax.plot(its, mean, marker="o" if len(its) < 12 else None, label=norm)
            ax.fill_between(its, low, high, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_png(fig: Figure, f: IO[bytes], dpi: int = DPI) -> None:
    """Write ``fig`` as PNG to the open binary file ``f``."""
    fig.savefig(f, format="png", dpi=dpi)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """``fig`` as PNG data."""
    buffer = io.BytesIO()
    save_png(fig, buffer, dpi)
    return buffer.getvalue()
