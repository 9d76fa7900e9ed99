#!/usr/bin/env python
"""Show what the SN layers of a model learned: the IN/LN/BN shares of every SN layer (for sparse
SN layers their sparsestmax weights, one-hot once fixed, and which statistic each chose).

Usage:
    tools/visualize_sn.py WEIGHTS [WEIGHTS2] [--metrics METRICS_JSON] --output DIR [--dpi 100]

WEIGHTS is a checkpoint of ours or detectron2's (model_final.pth, .pkl) or a released ImageNet SN
or SSN .pth, recognised by its contents and read without running code. Writes to DIR (created if
needed):
    sn_shares.png   every SN layer in network order, stacked IN/LN/BN bars of the mean (left) and
                    variance (right) shares, parts labelled; with WEIGHTS2, one panel each
    sn_shares.csv   the same numbers, one row per layer (with WEIGHTS2: both and differences);
                    for sparse SN, also mean_choice, var_choice and fixed (mean+var, mean, var,
                    none)
    sn_shares.md    the per-part shares as a markdown table; for sparse SN, a second one of how
                    many layers chose IN/LN/BN and are fixed, and with --metrics the iteration
                    from which each part's layers were all fixed (from the sn/<part>/fixed
                    scalars)
    sn_shares.json  all of it (per-part summaries, every layer, differences)
    sn_training.png with --metrics: detectron2's metrics.json of a training run, per-part shares
                    over the iterations
Frozen SN layers (MODEL.BACKBONE.FREEZE_AT) are included. Every input is read and every file
composed before the first is written; an error writes nothing: one line, exit status 2 for a bad
input, 1 for a failed write.
"""

import argparse
import sys
from typing import List

from sn_detection.analysis.plots import DPI
from sn_detection.analysis.report import share_report, write_files
from sn_detection.utils.cli import run_tool


def main(argv: List[str]) -> int:
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
    files = share_report(args.weights, args.metrics, args.dpi)
    paths = write_files(args.output, files)
    if "sn_shares.md" in files:
        print(files["sn_shares.md"])
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
