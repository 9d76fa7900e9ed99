"""benchmarks/bench_model.py runs and prints its table (tiny images, one iteration)."""

import subprocess
import sys

from sn_detection.testing import REPO

# the box head's cost is set by the sampled RoIs: few of them keep the smoke run short
FEW_ROIS = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64"]


def test_bench_model_prints_time_and_memory_ratios():
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/bench_model.py"),
            "--norms",
            "GN",
            "SN",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--size",
            "64",
            "96",
            "--opts",
            *FEW_ROIS,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("Mask R-CNN R50-FPN, 2 images of 64x96")
    assert lines[0].endswith("overrides: " + " ".join(FEW_ROIS))
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"GN", "SN"}
    assert float(rows["GN"][1]) == 1.0  # ratios are relative to GN
    assert float(rows["SN"][0]) > 0 and float(rows["SN"][2]) > 0
