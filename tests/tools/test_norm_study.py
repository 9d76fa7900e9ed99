"""tools/norm_study.py as a user runs it: a tiny study (SN, one seed, 2 iterations on a user's COCO
files of 2 images) writes the table and the plots from its run's own metrics. The checks, the run
loop and the tables are tested on their own in tests/analysis."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest

from sn_detection.data.shapes import prepare_shapes_dataset
from sn_detection.testing import CONFIGS, REPO

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"
TINY = (
    "MODEL.ROI_HEADS.NUM_CLASSES 3 SOLVER.MAX_ITER 2 SOLVER.WARMUP_ITERS 1 "
    "INPUT.MIN_SIZE_TRAIN (64,) INPUT.MAX_SIZE_TRAIN 64 INPUT.MIN_SIZE_TEST 64 "
    "INPUT.MAX_SIZE_TEST 64 TEST.DETECTIONS_PER_IMAGE 5"
).split()


def _tiny_coco(directory):
    """A user's COCO files: the first 2 images of the shapes validation set."""
    json_file = prepare_shapes_dataset()["val"]
    with open(json_file) as f:
        coco = json.load(f)
    coco["images"] = coco["images"][:2]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (directory / "images").mkdir(parents=True)
    source = os.path.join(os.path.dirname(json_file), "val")
    for im in coco["images"]:
        shutil.copy(os.path.join(source, im["file_name"]), directory / "images")
    (directory / "instances.json").write_text(json.dumps(coco))
    return [str(directory / "instances.json"), str(directory / "images")]


def _run_tool(argv):
    return subprocess.run(
        [sys.executable, str(REPO / "tools/norm_study.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    coco = _tiny_coco(root / "data")
    argv = ["--config-file", str(SMOKE), "--norms", "SN", "--seeds", "0", "--eval-period", "1"]
    argv += ["--coco-train", *coco, "--coco-test", *coco, "--output", str(root / "out"), *TINY]
    proc = _run_tool(argv)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return root / "out"


def test_table_holds_the_runs_final_metrics_and_learned_shares(study):
    out = study
    with open(out / "runs/SN/seed0/metrics.json") as f:  # read here, independently of the tool
        records = [json.loads(line) for line in f if line.strip()]
    last = max((r for r in records if "bbox/AP" in r), key=lambda r: r["iteration"])
    table = json.loads((out / "results.json").read_text())["table"]
    assert [(row["norm"], row["runs"]) for row in table] == [("SN", 1)]
    assert table[0]["box_AP"] == [pytest.approx(last["bbox/AP"]), 0.0]
    assert table[0]["mask_AP50"] == [pytest.approx(last["segm/AP50"]), 0.0]
    assert table[0]["peak_memory_mib"][0] > 100  # a detector process, in MiB
    markdown = (out / "results.md").read_text()
    assert "2 iterations" in markdown and "| SN | 1 |" in markdown
    assert "Learned shares of SN" in markdown and "| res3 |" in markdown
    shares = json.loads((out / "results.json").read_text())["sn_shares"]
    assert sum(shares["SN"]["fpn"]["var"].values()) == pytest.approx(1)


def test_ap_curve_has_the_periodic_and_the_final_evaluation(study):
    out = study
    run = json.loads((out / "runs/SN/seed0/run.json").read_text())
    assert [it for it, _ in run["curves"]["box_AP"]] == [1, 2]


def test_plots_are_pngs_with_a_panel_per_curve(study):
    out = study
    ap, loss = (cv2.imread(str(out / name)) for name in ("ap_curve.png", "loss.png"))
    assert ap.shape == (360, 1000, 3)  # box AP and mask AP panels
    assert loss.shape == (360, 500, 3)
    assert ap.std() > 10  # something is drawn
