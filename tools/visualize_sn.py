#!/usr/bin/env python
"""Show what the SN layers of a model learned: the IN/LN/BN shares of every SN layer.

Usage:
    tools/visualize_sn.py WEIGHTS [WEIGHTS2] [--metrics METRICS_JSON] --output DIR [--dpi 100]

WEIGHTS is a checkpoint of ours or detectron2's (model_final.pth, .pkl) or a released ImageNet SN
.pth, recognised by its contents and read without running code. Writes to DIR (created if needed):
    sn_importance.png   every SN layer in network order, stacked IN/LN/BN bars of the mean (left)
                        and variance (right) shares, parts labelled; with WEIGHTS2, one panel each
    sn_importance.csv   the same numbers, one row per layer (with WEIGHTS2: both and differences)
    sn_importance.md    the per-part shares as a markdown table
    sn_importance.json  all of it (per-part summaries, every layer, differences)
    sn_training.png     with --metrics: detectron2's metrics.json of a training run, per-part
                        shares over the iterations
Frozen SN layers (MODEL.BACKBONE.FREEZE_AT) are included. Every input is read and every file
composed before the first is written; an error writes nothing and exits with status 1.
"""

import argparse
import io
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Union

from sn_detection.analysis import layers_csv, load_importances, parts_markdown, read_metrics, report
from sn_detection.analysis_plots import DPI, importance_figure, save_png, training_figure
from sn_detection.checkpoint import CheckpointError
from sn_detection.utils.file_io import atomic_write


def labels_for(paths: Sequence[str]) -> List[str]:
    """Names of the runs in figures and tables: the file names, with their folder where equal."""
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) < len(names):
        folders = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
        names = [os.path.join(d, n) for d, n in zip(folders, names)]
    return names


def _png(fig, dpi: int) -> bytes:
    buffer = io.BytesIO()
    save_png(fig, buffer, dpi)
    return buffer.getvalue()


def compose(
    weights: Sequence[str], metrics: Optional[str], dpi: int
) -> Dict[str, Union[str, bytes]]:
    """{file name: content} of every file to write; raises on any unreadable input."""
    runs = [load_importances(p) for p in weights]
    history = read_metrics(metrics) if metrics else None
    files: Dict[str, Union[str, bytes]] = {}
    if runs:
        labels = labels_for(weights)
        files["sn_importance.png"] = _png(importance_figure(runs, labels), dpi)
        files["sn_importance.csv"] = layers_csv(runs, labels)
        files["sn_importance.md"] = parts_markdown(runs, labels)
        files["sn_importance.json"] = json.dumps(report(runs, labels), indent=2) + "\n"
    if history is not None:
        files["sn_training.png"] = _png(training_figure(history), dpi)
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("weights", nargs="*", help="one or two checkpoints (compared if two)")
    parser.add_argument("--metrics", help="detectron2 metrics.json of a training run")
    parser.add_argument("--output", required=True, help="directory of the files written")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"of the PNGs (default {DPI})")
    args = parser.parse_args(argv)
    if not args.weights and not args.metrics:
        parser.error("give WEIGHTS (one or two checkpoints), --metrics METRICS_JSON, or both")
    if len(args.weights) > 2:
        parser.error(f"at most two checkpoints are compared, got {len(args.weights)}")
    if args.dpi <= 0:
        parser.error(f"--dpi must be positive, got {args.dpi}")
    try:
        files = compose(args.weights, args.metrics, args.dpi)
        os.makedirs(args.output, exist_ok=True)
        for name, content in files.items():
            with atomic_write(os.path.join(args.output, name), "wb") as f:
                f.write(content if isinstance(content, bytes) else content.encode())
    except (CheckpointError, ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # one line
        return 1
    if "sn_importance.md" in files:
        print(files["sn_importance.md"])
    for name in files:
        print(f"wrote {os.path.join(args.output, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
