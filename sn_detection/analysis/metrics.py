"""The one reader of detectron2's ``metrics.json`` (one JSON object per line, written by its
JSONWriter), and what the tools take from it: the SN shares over training (:func:`share_history`)
and a run's evaluations, loss curve and speed (:func:`run_summary`)."""

import json
import math
import re
import statistics
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .shares import AnalysisError, part_rank

Record = Dict[str, Any]
History = Dict[str, Dict[str, List[Tuple[int, float]]]]  # part -> "mean_IN" -> [(iteration, share)]
TASKS = (("bbox", "box"), ("segm", "mask"))  # detectron2's evaluation task, our label
METRICS = ("AP", "AP50", "AP75")
_SHARE = re.compile(r"^sn/(?P<part>.+)/(?P<stat>mean|var)_(?P<branch>IN|LN|BN)$")
_FIXED = re.compile(r"^sn/(?P<part>.+)/fixed$")
_FORMAT = "expected detectron2's metrics.json, one JSON object per line"


def read_metrics_json(path: str) -> List[Record]:
    """The records of ``path`` that have an ``iteration``, sorted by it (stable).

    Raises:
        AnalysisError: naming the file (and line) for a file that is not UTF-8 text, a line that
            is not JSON, or an ``iteration`` that is not a whole number.
    """
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise AnalysisError(
            f"{path} is not text (byte {e.start} is not UTF-8): {_FORMAT}"
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{path} line {number} is not JSON ({e.msg}): {_FORMAT}") from None
        if not isinstance(record, dict) or "iteration" not in record:
            continue
        iteration = record["iteration"]
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            raise AnalysisError(
                f"{path} line {number}: iteration is {json.dumps(iteration)}, not a whole number: "
                f"{_FORMAT}"
            )
        records.append(record)
    records.sort(key=lambda r: r["iteration"])
    return records


def _number(value: Any, key: str, record: Record, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnalysisError(
            f"{path}: {key} of iteration {record['iteration']} is {json.dumps(value)}, not a "
            "number: "
            f"{_FORMAT}"
        )
    return float(value)


def share_history(records: Sequence[Record], path: str) -> History:
    """The per-part shares written during training (``sn/<part>/<mean|var>_<IN|LN|BN>``), parts in
    network order; non-finite values are left out.

    Raises:
        AnalysisError: if there is no such scalar, or one is not a number (naming ``path``).
    """
    history: History = {}
    for record in records:
        for key, value in record.items():
            m = _SHARE.match(key)
            if m:
                share = _number(value, key, record, path)
                if math.isfinite(share):
                    series = history.setdefault(m["part"], {})
                    series.setdefault(f"{m['stat']}_{m['branch']}", []).append(
                        (record["iteration"], share)
                    )
    if not history:
        raise AnalysisError(
            f"{path} has no SN shares (no sn/<part>/<mean|var>_<IN|LN|BN> scalars): train with "
            "tools/train_net.py, which writes them every 20 iterations"
        )
    ordered = sorted(enumerate(history), key=lambda t: (part_rank(t[1]), t[0]))
    return OrderedDict((part, history[part]) for _, part in ordered)


def fixed_at(records: Sequence[Record], path: str) -> Dict[str, Optional[int]]:
    """{part: the first iteration from which every sparse SN weight vector of the part was fixed
    (its ``sn/<part>/fixed`` scalar 1 from there on), or None if never}, parts in network order;
    empty for a run without sparse SN layers. Resolution: the scalars' period."""
    out: Dict[str, Optional[int]] = {}
    for record in records:
        for key, value in record.items():
            m = _FIXED.match(key)
            if m:
                fraction = _number(value, key, record, path)
                if fraction < 1.0:
                    out[m["part"]] = None
                elif out.get(m["part"]) is None:
                    out[m["part"]] = record["iteration"]
    ordered = sorted(enumerate(out), key=lambda t: (part_rank(t[1]), t[0]))
    return OrderedDict((part, out[part]) for _, part in ordered)


def run_summary(records: Sequence[Record], max_iter: int, path: str) -> Dict[str, Any]:
    """A training run's results: ``final`` (the last evaluation, {"box": {"AP": ..}, "mask": ..},
    in percent as detectron2 reports it), ``curves`` ("loss" and "<box|mask>_AP":
    [iterations trained, value] pairs; metrics.json counts iterations from 0) and
    ``time_per_iter`` (the median of detectron2's ``time``, NaN if none)."""
    final: Dict[str, Dict[str, float]] = {}
    curves: Dict[str, List[List[float]]] = {"loss": []}
    times = []
    for r in records:
        trained = min(r["iteration"] + 1, max_iter)
        if "total_loss" in r:
            curves["loss"].append([trained, _number(r["total_loss"], "total_loss", r, path)])
        if "time" in r:
            times.append(_number(r["time"], "time", r, path))
        for task, label in TASKS:
            if f"{task}/AP" in r:
                values = {m: _number(r.get(f"{task}/{m}"), f"{task}/{m}", r, path) for m in METRICS}
                curves.setdefault(f"{label}_AP", []).append([trained, values["AP"]])
                final[label] = values
    return {
        "final": final,
        "curves": curves,
        "time_per_iter": statistics.median(times) if times else float("nan"),
    }
