"""benchmarks/bench_norm.py --quick runs end to end and prints a row per layer and shape."""

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_norm.py"
LAYERS = ("SN ours", "SSN ours", "SN ours, plain", "SN reference", "BatchNorm2d", "GroupNorm(32)")


def test_bench_norm_quick_prints_the_table():
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(SCRIPT), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0][:1].isdigit():
            rows[cells[0], cells[1]] = cells
    for shape in ("2x32x24x32", "64x32x7x7"):
        for layer in (*LAYERS, "FrozenBatchNorm2d"):
            row = rows[shape, layer]
            fwd, total, ratio, best, best_ratio, saved, beyond, peak = map(float, row[2:])
            assert (
                0 < fwd <= total and 0 < best <= total and ratio > 0 and best_ratio > 0 and peak > 0
            )
            assert beyond <= saved
        assert rows[shape, "GroupNorm(32)"][4] == rows[shape, "GroupNorm(32)"][6] == "1.00"
        # ours keeps only the input (and (N, C)-sized statistics) for backward
        assert float(rows[shape, "SN ours"][8]) < float(rows[shape, "SN reference"][8])
    assert "SN ours / GroupNorm(32), fwd+bwd, median:" in result.stdout
