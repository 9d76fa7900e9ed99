"""The files a tool writes for the user, all or none: :func:`share_report` composes the
visualizer's figures and tables in memory, :func:`write_files` writes a set of files so that a
failure leaves none of them changed."""

import contextlib
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

from ..utils.file_io import atomic_write
from .metrics import fixed_at, read_metrics_json, share_history
from .plots import DPI, png_bytes, shares_figure, training_figure
from .shares import load_shares
from .tables import check_comparable, layers_csv, parts_markdown, report

Content = Union[str, bytes]
SHARES_FILES = ("sn_shares.png", "sn_shares.csv", "sn_shares.md", "sn_shares.json")
TRAINING_FILE = "sn_training.png"


def labels_for(paths: Sequence[str]) -> List[str]:
    """Names of the runs in figures and tables: the file names, with their folder where equal."""
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):
        folders = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
        names = [os.path.join(d, n) for d, n in zip(folders, names)]
    return names


def share_report(
    weights: Sequence[str], metrics: Optional[str] = None, dpi: int = DPI
) -> Dict[str, Content]:
    """{file name: content} of the visualizer: with checkpoints, ``sn_shares.png`` (the figure of
    every layer's shares; two checkpoints side by side), ``.csv`` (per layer, with differences),
    ``.md`` (per part) and ``.json`` (all of it); with a ``metrics.json``, ``sn_training.png``,
    and the iteration from which each part's sparse SN layers were all fixed (in the ``.md`` and
    ``.json`` of the first checkpoint). Every input is read before anything is composed; raises
    on any unusable input."""
    runs = [load_shares(p) for p in weights]
    check_comparable(runs)
    records = read_metrics_json(metrics) if metrics else None
    history = share_history(records, metrics) if metrics else None
    fixed = fixed_at(records, metrics) if metrics else None
    files: Dict[str, Content] = {}
    if runs:
        labels = labels_for(weights)
        png, csv_, md, json_ = SHARES_FILES
        files[png] = png_bytes(shares_figure(runs, labels), dpi)
        files[csv_] = layers_csv(runs, labels)
        files[md] = parts_markdown(runs, labels, fixed)
        out = report(runs, labels)
        if fixed:
            out["runs"][0]["fixed_at"] = fixed
        files[json_] = json.dumps(out, indent=2) + "\n"
    if history is not None:
        files[TRAINING_FILE] = png_bytes(training_figure(history), dpi)
    return files


def write_files(directory: str, files: Mapping[str, Content]) -> List[str]:
    """Write every ``{name: content}`` into ``directory`` (created if needed) and return the
    paths: each file goes to a temporary file first, checked and written in full, and all are
    renamed into place only when every one is written, so an error (a destination that is a
    directory, a full disk) leaves every file of ``directory`` as it was."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, name) for name in files]
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(atomic_write(p, "wb")) for p in paths]
        for f, content in zip(handles, files.values()):
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
    return paths
