"""benchmarks/bench_model.py runs and prints its table (tiny images, one iteration), with the
ratio of Sparse SN's iteration to SN's."""

import re
import subprocess
import sys

from sn_detection.testing import REPO

# the box head's cost is set by the sampled RoIs: few of them keep the smoke run short
FEW_ROIS = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64"]


def test_bench_model_prints_time_and_memory_ratios_with_ssn_over_sn():
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/bench_model.py"),
            *("--norms", "SN", "SSN"),
            *("--iters", "1", "--warmup", "0", "--size", "64", "96"),
            *("--opts", *FEW_ROIS),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("Mask R-CNN R50-FPN, 2 images of 64x96")
    assert lines[0].endswith("overrides: " + " ".join(FEW_ROIS))
    rows = {line.split()[0]: [float(c) for c in line.split()[1:]] for line in lines[2:4]}
    assert set(rows) == {"SN", "SSN"}
    assert rows["SN"][1] == rows["SN"][3] == 1.0  # without GN, ratios are relative to the first
    assert all(value > 0 for value in rows["SSN"])
    summary = re.fullmatch(
        r"SSN / SN: time (\d+\.\d+) \(target <= 1\.05\), peak memory (\d+\.\d+)", lines[4]
    )
    assert summary, lines[4]
    assert abs(float(summary[1]) - rows["SSN"][0] / rows["SN"][0]) < 0.01
    assert abs(float(summary[2]) - rows["SSN"][2] / rows["SN"][2]) < 0.01
