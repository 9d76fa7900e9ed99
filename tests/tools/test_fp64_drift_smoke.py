"""benchmarks/fp64_drift.py runs end to end with 2 steps: SN and GN drift in a table and JSON."""

import json
import math
import pathlib
import subprocess
import sys

from sn_detection.testing import load_script
from sn_detection.utils.cli import run_tool

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "fp64_drift.py"


def test_two_steps_print_and_write_small_finite_drift_of_both_norms(tmp_path):
    out = tmp_path / "drift.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--steps",
        "2",
        "--size",
        "64",
        "--every",
        "1",
        "--norms",
        "SN",
        "GN",
        "--output",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SN gap/update" in result.stdout and "GN gap/update" in result.stdout
    assert [
        line.split("|")[1].strip()
        for line in result.stdout.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ] == ["1", "2"]
    figures = json.loads(out.read_text())
    assert set(figures) == {"SN", "GN"}
    for rows in figures.values():
        assert [r["step"] for r in rows] == [1, 2]
        for r in rows:
            assert all(math.isfinite(v) and v >= 0 for v in r.values())
        # the copies start from the same weights: after one step they differ by float32 rounding
        assert rows[0]["param_rel"] < 1e-5 and rows[0]["loss_rel"] < 1e-4


def test_bad_arguments_are_one_line_errors(capsys):
    assert run_tool(load_script("benchmarks/fp64_drift.py").main, ["--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error:") and "Traceback" not in err
