"""tools/norm_study.py end to end: a tiny study (2 norms x 2 seeds x 4 iterations on a user's COCO
files of 2 images) writes the table and the plots; a rerun skips the finished runs; bad dataset
names and norms are one-line errors before anything trains."""
import csv
import json
import os
import shutil
import statistics
import time

import cv2
import pytest

from sn_detection.data.shapes import prepare_shapes_dataset
from sn_detection.testing import CONFIGS, REPO, load_script

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"
NORMS, SEEDS = ("GN", "SN"), (0, 1)
TINY = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "TEST.DETECTIONS_PER_IMAGE", "5",
]  # fmt: skip


def _norm_study():
    return load_script("tools/norm_study.py")


def _tiny_coco(directory):
    """A user's COCO files: the first 2 images of the shapes validation set."""
    json_file = prepare_shapes_dataset()["val"]
    coco = json.load(open(json_file))
    coco["images"] = coco["images"][:2]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (directory / "images").mkdir(parents=True)
    source = os.path.join(os.path.dirname(json_file), "val")
    for im in coco["images"]:
        shutil.copy(os.path.join(source, im["file_name"]), directory / "images")
    (directory / "instances.json").write_text(json.dumps(coco))
    return [str(directory / "instances.json"), str(directory / "images")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    coco = _tiny_coco(root / "data")
    argv = [
        "--config-file", str(SMOKE), "--norms", *NORMS, "--seeds", *map(str, SEEDS),
        "--coco-train", *coco, "--coco-test", *coco, "--eval-period", "2",
        "--output", str(root / "out"), *TINY,
    ]  # fmt: skip
    assert _norm_study().main(argv) == 0
    return root / "out", argv


def _final_metrics(run_dir):
    """The last evaluation in a run's metrics.json, read here independently of the tool."""
    records = [json.loads(line) for line in open(run_dir / "metrics.json") if line.strip()]
    last = max((r for r in records if "bbox/AP" in r), key=lambda r: r["iteration"])
    tasks = (("bbox", "box"), ("segm", "mask"))
    return {f"{label}_{m}": last[f"{t}/{m}"] for t, label in tasks for m in ("AP", "AP50", "AP75")}


def test_table_holds_mean_and_std_over_seeds_of_each_runs_final_metrics(study):
    out, _ = study
    rows = {r["norm"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert list(rows) == list(NORMS)
    for norm in NORMS:
        runs = [_final_metrics(out / "runs" / norm / f"seed{s}") for s in SEEDS]
        assert rows[norm]["runs"] == "2"
        for key in ("box_AP", "box_AP75", "mask_AP", "mask_AP50"):
            values = [r[key] for r in runs]
            mean, std = (float(rows[norm][f"{key}_{s}"]) for s in ("mean", "std"))
            assert mean == pytest.approx(statistics.fmean(values), abs=1e-4)
            assert std == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert float(rows[norm]["time_per_iter_s_mean"]) > 0
        assert float(rows[norm]["peak_memory_mib_mean"]) > 100  # a detector process, in MiB
        assert rows[norm]["peak_memory"] == "max RSS"
    markdown = (out / "results.md").read_text()
    assert "| GN | 2 |" in markdown and "| SN | 2 |" in markdown
    assert "Learned shares of SN" in markdown and "| res3 |" in markdown  # SN only
    assert "Learned shares of GN" not in markdown
    shares = json.loads((out / "results.json").read_text())["sn_shares"]
    assert set(shares) == {"SN"} and sum(shares["SN"]["fpn"]["var"].values()) == pytest.approx(1)


def test_plots_are_pngs_with_a_panel_per_curve(study):
    out, _ = study
    ap, loss = (cv2.imread(str(out / name)) for name in ("ap_curve.png", "loss.png"))
    assert ap.shape == (360, 1000, 3)  # box AP and mask AP panels
    assert loss.shape == (360, 500, 3)
    assert ap.std() > 10  # something is drawn


def test_ap_curve_has_the_periodic_and_the_final_evaluation(study):
    out, _ = study
    run = json.loads((out / "runs/GN/seed0/run.json").read_text())
    assert [it for it, _ in run["curves"]["box_AP"]] == [2, 4]


def test_rerun_skips_finished_runs(study, capsys):
    out, argv = study
    before = (out / "runs/SN/seed1/run.json").stat().st_mtime_ns
    start = time.time()
    assert _norm_study().main(argv) == 0
    assert time.time() - start < 30  # no training: tables and plots only
    assert capsys.readouterr().out.count("finished before, skipped") == 4
    assert (out / "runs/SN/seed1/run.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset-test", "nowhere"], "dataset 'nowhere' (DATASETS.TEST) is not registered"),
        (["--norms", "BN", "SwitchNorm"], "invalid norm 'SwitchNorm'; valid norms: FrozenBN, SN, "),
        (["--norms", "FrozenBN"], "FrozenBN freezes pretrained BN statistics"),
        (["--coco-train", "missing.json", "."], "the COCO json"),
    ],
)
def test_bad_input_is_a_one_line_error_before_anything_trains(tmp_path, capsys, extra, message):
    argv = ["--config-file", str(SMOKE), "--output", str(tmp_path / "out"), *extra]
    assert _norm_study().main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out/runs").exists()


def test_frozen_bn_freezes_the_backbone_only_and_sync_norms_join_on_several_processes():
    norm_study = _norm_study()
    assert norm_study.norm_overrides("FrozenBN")[1::2] == ["FrozenBN", "", "", ""]
    assert norm_study.norm_overrides("SN")[1::2] == ["SN"] * 4
    cfg = norm_study._load_config(str(SMOKE), [])
    assert norm_study.default_norms(cfg, 1) == ["BN", "GN", "SN"]
    assert norm_study.default_norms(cfg, 2) == ["BN", "GN", "naiveSyncBN", "SN", "SyncSN"]
    cfg.MODEL.WEIGHTS = "weights.pkl"
    assert norm_study.default_norms(cfg, 1)[0] == "FrozenBN"
