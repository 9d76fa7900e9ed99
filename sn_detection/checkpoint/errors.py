"""The error of the checkpoint code, and how its messages quote state-dict keys."""

import re
from typing import Dict, Iterable, List

from ..utils.cli import InputError

SHOWN = 4  # modules quoted in an error message


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


def first_line(text: object, limit: int = 160) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    text = str(text).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def natural_key(key: str) -> list:
    """Sort key that puts res4.6 before res4.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def sample_keys(keys: Iterable[str], limit: int = SHOWN) -> str:
    """Keys in natural order grouped by module, ``limit`` modules shown:
    "res4.6.conv1.weight, res4.6.conv1.norm.{weight,bias} (and 40 more keys)"."""
    keys = sorted(keys, key=natural_key)
    groups: Dict[str, List[str]] = {}
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    shown, count = [], 0
    for parent, leaves in list(groups.items())[:limit]:
        head = f"{parent}." if parent else ""
        shown.append(head + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"))
        count += len(leaves)
    more = f" (and {len(keys) - count} more keys)" if len(keys) > count else ""
    return ", ".join(shown) + more
