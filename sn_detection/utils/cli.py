"""The one way every tool of this package reports a failure: one line on stderr and an exit status.

A tool's ``main`` raises; ``run_tool`` turns the package's input errors (``InputError`` and its
subclasses: a bad flag, file, config key or checkpoint) into ``error: <message>`` and exit status 2,
and an operating-system failure (disk full, permission denied) into one line and exit status 1.
Anything else is a bug and keeps its traceback. ``--debug`` on the command line or
``SN_DETECTION_DEBUG=1`` in the environment shows the traceback of every failure.
"""

import os
import sys
from typing import Callable, List, Optional, Sequence

DEBUG_ENV = "SN_DETECTION_DEBUG"
EXIT_BAD_INPUT = 2
EXIT_OS_ERROR = 1


class InputError(ValueError):
    """Input that cannot be used (a flag, file, config key or value); the message names it and the
    fix. Tools report it in one line and exit with status 2."""


def one_line(message: object) -> str:
    """``message`` with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(message).split())


def debugging(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether tracebacks are wanted: ``--debug`` in ``argv`` or ``SN_DETECTION_DEBUG`` set to a
    value other than "", "0"."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def without_debug_flag(argv: Optional[Sequence[str]] = None) -> List[str]:
    """``argv`` (default ``sys.argv[1:]``) without ``--debug``, for parsers that do not know it."""
    argv = sys.argv[1:] if argv is None else argv
    return [a for a in argv if a != "--debug"]


def run_tool(
    main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None
) -> int:
    """Run ``main(args)`` (``args``: ``argv`` without ``--debug``) and return its exit status (0 if
    it returns None); report failures as described in the module docstring."""
    debug = debugging(argv)
    try:
        status = main(without_debug_flag(argv))
    except InputError as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_OS_ERROR
    return 0 if status is None else int(status)
