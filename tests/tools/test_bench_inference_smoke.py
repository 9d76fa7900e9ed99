"""benchmarks/bench_inference.py runs end to end at a tiny size and prints eager and exported
latencies with the SN/GN ratios; benchmarks/bench_norm.py --eval prints the eval-mode table."""

import subprocess
import sys

from sn_detection.testing import REPO

# a small model, so that the smoke run takes seconds
TINY = [
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "20",
    "TEST.DETECTIONS_PER_IMAGE",
    "5",
    "MODEL.ROI_BOX_HEAD.CONV_DIM",
    "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    "32",
]


def _run(script, *args):
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _rows(out, columns):
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == columns and cells[0][:1].isdigit():
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_bench_inference_prints_eager_and_exported_latency_with_ratios_to_gn():
    out = _run(
        "bench_inference.py",
        "--sizes",
        "64x96",
        "--norms",
        "SN",
        "GN",
        "--repeats",
        "1",
        "--warmup",
        "1",
        *TINY,
    )
    rows = _rows(out, 9)
    assert set(rows) == {("64x96", "SN"), ("64x96", "GN")}
    for cells in rows.values():
        assert int(cells[0]) >= 0 and all(float(c) > 0 for c in cells[1:])
    assert rows["64x96", "GN"][5:] == ["1.000", "1.000"]  # the ratios are to GN
    assert "SN / GN, eager, 64x96: " in out and "SN / GN, exported, 64x96: " in out


def test_bench_norm_eval_mode_prints_forward_times_with_the_exported_sn_path():
    out = _run("bench_norm.py", "--quick", "--eval", "--device", "cpu")
    rows = _rows(out, 7)
    for layer in ("SN ours", "SN exported", "GroupNorm(32)", "FrozenBatchNorm2d"):
        fwd, ratio, best, best_ratio, peak = map(float, rows["2x32x24x32", layer])
        assert 0 < best <= fwd and ratio > 0 and best_ratio > 0 and peak > 0
    assert "SN exported / GroupNorm(32), eval-mode forward, median:" in out
