"""The command line of tools/train_net.py and tools/lazyconfig_train_net.py: detectron2's
``default_argument_parser``, with ``--resume`` and ``--eval-only`` also accepted after the config
overrides."""

import argparse
from typing import Optional, Sequence

from detectron2.engine import default_argument_parser

__all__ = ["parse_train_args"]

# the flags that may follow the overrides -> their attribute
TRAILING_FLAGS = {"--resume": "resume", "--eval-only": "eval_only", "--harden": "harden"}


def parse_train_args(
    argv: Optional[Sequence[str]] = None,
    tool: str = "tools/train_net.py",
    override: str = "MODEL.WEIGHTS PATH",
) -> argparse.Namespace:
    """detectron2's arguments of ``tool`` (``sys.argv[1:]`` if ``argv`` is None). Its parser
    hands everything after the first config override to ``args.opts`` (``KEY VALUE`` pairs for
    yacs, ``key=value`` for LazyConfig), so ``--resume`` or ``--eval-only`` written after them would
    reach the config as a key (yacs: "odd length"; LazyConfig: not an override): they are taken
    out of the overrides here. Any other option there is an error that says where it belongs,
    with ``override`` as the example of an override."""
    parser = default_argument_parser()
    parser.add_argument(
        "--harden",
        action="store_true",
        help="with --eval-only: evaluate the model as it deploys, every SN layer rounded to its "
        "argmax choice (sn_detection.export.deploy); compare with plain --eval-only",
    )
    args = parser.parse_args(argv)
    opts = []
    for item in args.opts:
        if item in TRAILING_FLAGS:
            setattr(args, TRAILING_FLAGS[item], True)
        elif item.startswith("--"):
            parser.error(
                f"{item} comes after the config overrides (such as {override}); put it before "
                f"them (e.g. {tool} --config-file CFG {item} ... {override})"
            )
        else:
            opts.append(item)
    args.opts = opts
    if args.harden and not args.eval_only:
        parser.error("--harden evaluates a trained model: use it with --eval-only")
    return args
