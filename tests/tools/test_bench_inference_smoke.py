"""benchmarks/bench_inference.py runs end to end at a tiny size and prints eager and traced
latencies with the ratios to the floor (no norm) and to GN, and what the SSN models deployed as;
benchmarks/bench_norm.py --eval prints the eval-mode table."""

import re
import subprocess
import sys

import pytest

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
FOLDED = "BN folded into the convolution"


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


def _became(out, label):
    """{part: {what: count}} from the line saying what the SN layers of ``label`` became."""
    line = next(line for line in out.splitlines() if line.startswith(label + " (seed 0): "))
    parts = {}
    for part in line.split(": ", 1)[1].split("; "):
        name, items = part.split(": ", 1)
        parts[name] = {what: int(n) for what, n in re.findall(r"(.+?) \((\d+)\)(?:, |$)", items)}
    return parts


@pytest.fixture(scope="module")
def inference_output():
    return _run(
        "bench_inference.py",
        *("--models", "SSN-mixed", "BN-folded", "SN"),
        *("--sizes", "64x96", "--threads", "1", "--repeats", "1", "--warmup", "1"),
        *TINY,
    )


def test_bench_inference_prints_eager_and_traced_latency_with_ratios_to_floor_and_gn(
    inference_output,
):
    out = inference_output
    rows = _rows(out, 11)
    labels = ("SSN hardened, mixed", "hardened, all BN", "SN", "GN", "no norm")
    assert set(rows) == {("64x96", label) for label in labels}  # GN and the floor always run
    for cells in rows.values():
        assert int(cells[0]) >= 0 and all(float(c) > 0 for c in cells[1:])
    assert rows["64x96", "no norm"][5:7] == ["1.000", "1.000"]  # ratios to the floor
    assert rows["64x96", "GN"][7:] == ["1.000", "1.000"]  # and to GN
    for what in ("hardened, all BN / no norm", "SSN hardened, mixed / GN", "SN / GN"):
        for mode in ("eager", "traced"):
            assert f"{what}, {mode}, 64x96: " in out


def test_bench_inference_hardened_all_bn_model_has_every_norm_folded_into_its_convolution(
    inference_output,
):
    all_bn = _became(inference_output, "hardened, all BN")
    assert set(all_bn) == {"backbone", "FPN", "heads"}
    assert all(list(counts) == [FOLDED] for counts in all_bn.values())


def test_bench_inference_mixed_ssn_model_deploys_every_layer_as_the_one_norm_its_part_chose(
    inference_output,
):
    mixed = _became(inference_output, "SSN hardened, mixed")
    all_bn = _became(inference_output, "hardened, all BN")
    count = sum(sum(counts.values()) for counts in all_bn.values())
    assert sum(sum(counts.values()) for counts in mixed.values()) == count
    assert "SN (soft mix, kept)" not in str(mixed)  # frozen stages included
    assert mixed["backbone"][FOLDED] > sum(mixed["backbone"].values()) / 2
    assert set(mixed["FPN"]) <= {"IN", "LN"}
    assert set(mixed["heads"]) <= {"IN", "LN", "IN mean, LN var"}


def test_bench_norm_eval_mode_prints_forward_times_with_the_exported_sn_path():
    out = _run("bench_norm.py", "--quick", "--eval", "--device", "cpu")
    rows = _rows(out, 7)
    for layer in ("SN ours", "SN exported", "GroupNorm(32)", "FrozenBatchNorm2d"):
        fwd, ratio, best, best_ratio, peak = map(float, rows["2x32x24x32", layer])
        assert 0 < best <= fwd and ratio > 0 and best_ratio > 0 and peak > 0
    assert "SN exported / GroupNorm(32), eval-mode forward, median:" in out
