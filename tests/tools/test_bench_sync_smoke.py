"""benchmarks/bench_sync.py --quick runs end to end and reports one collective per SyncSN layer."""

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sync.py"


def _row(output: str, shape: str, layer: str) -> list:
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == shape and cells[2] == layer:
            return cells
    raise AssertionError(f"no row for {shape} / {layer} in:\n{output}")


def test_bench_sync_quick_reports_timings_and_collective_counts():
    result = subprocess.run(
        [sys.executable, "-W", "ignore", str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for shape in ("tiny map", "tiny RoIs"):
        sn, sync_sn = _row(out, shape, "SN (no sync)"), _row(out, shape, "SyncSN")
        naive = _row(out, shape, "NaiveSyncBN (N)")
        assert sn[-2:] == ["0", "0"]  # collectives forward, backward
        assert sync_sn[-2:] == ["1", "1"]
        assert naive[-2:] == ["1", "1"]
        for row in (sn, sync_sn, naive):
            assert float(row[3]) > 0 and float(row[4]) >= float(row[3])  # fwd ms, fwd+bwd ms
