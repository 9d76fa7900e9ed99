"""The norm study's checks and run loop (sn_detection.study) with a stand-in for tools/train_net.py
that writes a metrics.json in a fraction of a second: settings recorded and compared, failed runs
recorded while the others go on, run folders locked, training processes that die with the study."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sn_detection.study import (
    RUN_RECORD,
    Study,
    StudyError,
    default_norms,
    job_env,
    load_config,
    locked_runs,
    norm_overrides,
    plan,
    prepare_study,
    run_study,
)
from sn_detection.testing import CONFIGS
from sn_detection.utils.cli import InputError

SMOKE = str(CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml")
# A stand-in for tools/train_net.py: reads the KEY VALUE overrides, writes detectron2's
# metrics.json (two records, an evaluation at the end); fails where FAKE_FAIL names "<norm>:<seed>";
# with FAKE_PID_FILE, adds its pid there and sleeps; with FAKE_MEET_DIR, waits for a second run to
# start and writes what it saw; for SSN, model_final.pth of sparse_sn_model.
FAKE_TRAIN_NET = textwrap.dedent(
    """
    import json, os, sys, time
    args = sys.argv[sys.argv.index("--config-file") + 2 :]
    opts = dict(zip(args[::2], args[1::2]))
    norm, seed = opts["MODEL.RESNETS.NORM"], int(opts["SEED"])
    if os.environ.get("FAKE_PID_FILE"):
        with open(os.environ["FAKE_PID_FILE"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(120)
    if os.environ.get("FAKE_MEET_DIR"):  # wait (up to 60 s) until another run has started too
        meet = os.environ["FAKE_MEET_DIR"]
        open(os.path.join(meet, f"{norm}{seed}"), "w").close()
        deadline = time.time() + 60
        while len(os.listdir(meet)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        with open(os.path.join(opts["OUTPUT_DIR"], "met.txt"), "w") as f:
            f.write(f"{len(os.listdir(meet))} {os.environ.get('OMP_NUM_THREADS')}")
    print("training", norm, seed)
    if os.environ.get("FAKE_FAIL") == f"{norm}:{seed}":
        print("RuntimeError: the batch is empty")
        sys.exit(3)
    ap = 10.0 * (seed + 1) + len(norm)
    records = [
        {"iteration": 0, "total_loss": 2.0, "time": 0.1},
        {"iteration": 1, "total_loss": 1.0, "time": 0.3, "bbox/AP": ap, "bbox/AP50": 2 * ap,
         "bbox/AP75": ap / 2},
    ]
    with open(os.path.join(opts["OUTPUT_DIR"], "metrics.json"), "w") as f:
        f.write("\\n".join(json.dumps(r) for r in records) + "\\n")
    if norm == "SSN":
        import torch
        from sn_detection.testing import sparse_sn_model
        final = os.path.join(opts["OUTPUT_DIR"], "model_final.pth")
        torch.save({"model": sparse_sn_model().state_dict()}, final)
    """
)


@pytest.fixture
def fake_train_net(tmp_path):
    path = tmp_path / "fake_train_net.py"
    path.write_text(FAKE_TRAIN_NET)
    return [sys.executable, str(path)]


def _quiet(line):
    """A log that prints nothing."""


def prepare(tmp_path, fake_train_net, *opts, **options):
    options = {"norms": ["BN", "GN"], "seeds": [0, 1], **options}
    output = str(tmp_path / "out")
    return prepare_study(SMOKE, list(opts), output, fake_train_net, **options)


# -- checks before training --------------------------------------------------------------------


def test_negative_seeds_are_refused(tmp_path, fake_train_net):
    with pytest.raises(StudyError, match="--seeds -1: seeds are non-negative integers"):
        prepare(tmp_path, fake_train_net, seeds=[0, -1])


@pytest.mark.parametrize("given", [["TEST.EVAL_PERIOD", "0"], ["TEST.EVAL_PERIOD", "7"]])
def test_the_users_eval_period_is_kept(tmp_path, fake_train_net, given):
    study = prepare(tmp_path, fake_train_net, *given)
    assert study.settings("GN", 0)["config"]["TEST.EVAL_PERIOD"] == int(given[1])


def test_eval_period_given_twice_is_refused(tmp_path, fake_train_net):
    with pytest.raises(StudyError, match="--eval-period or TEST.EVAL_PERIOD, not both"):
        prepare(tmp_path, fake_train_net, "TEST.EVAL_PERIOD", "5", eval_period=3)


def test_max_iter_0_is_refused_before_training(tmp_path, fake_train_net):
    with pytest.raises(StudyError, match="SOLVER.MAX_ITER is 0: give a positive count"):
        prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "0")


def test_an_output_that_is_a_file_is_refused(tmp_path, fake_train_net):
    (tmp_path / "out").write_text("")
    with pytest.raises(StudyError, match="--output .*out is a file"):
        prepare(tmp_path, fake_train_net)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_is_refused(tmp_path, fake_train_net):
    (tmp_path / "out").mkdir(mode=0o500)
    with pytest.raises(StudyError, match="is not writable"):
        prepare(tmp_path, fake_train_net)


def test_coco_files_are_checked_before_training(tmp_path, fake_train_net):
    (tmp_path / "images").mkdir()
    (tmp_path / "list.json").write_text("[]")
    files = [str(tmp_path / "list.json"), str(tmp_path / "images")]
    with pytest.raises(InputError, match="--coco-train .*list.json holds a JSON list"):
        prepare(tmp_path, fake_train_net, coco_train=files)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dataset_test": "nowhere"}, "dataset 'nowhere' (DATASETS.TEST) is not registered"),
        ({"norms": ["BN", "SwitchNorm"]}, "invalid norm 'SwitchNorm'; valid norms: FrozenBN, SN, "),
        ({"norms": ["FrozenBN"]}, "FrozenBN freezes pretrained BN statistics"),
        ({"coco_train": ["missing.json", "."]}, "--coco-train: the COCO json"),
    ],
)
def test_bad_names_and_files_are_refused_before_anything_trains(
    tmp_path, fake_train_net, options, message
):
    with pytest.raises(InputError) as error:
        prepare(tmp_path, fake_train_net, **options)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_frozen_bn_freezes_the_backbone_only_and_sync_norms_join_on_several_processes():
    assert norm_overrides("FrozenBN")[1::2] == ["FrozenBN", "", "", ""]
    assert norm_overrides("SN")[1::2] == ["SN"] * 4
    cfg = load_config(SMOKE, [])
    assert default_norms(cfg, 1) == ["BN", "GN", "SN", "SSN"]
    assert default_norms(cfg, 2) == ["BN", "GN", "naiveSyncBN", "SN", "SSN", "SyncSN", "SyncSSN"]
    cfg.MODEL.WEIGHTS = "weights.pkl"
    assert default_norms(cfg, 1)[0] == "FrozenBN"


# -- the run loop ------------------------------------------------------------------------------


def test_an_ssn_run_records_its_choices_per_part_in_the_results(tmp_path, fake_train_net):
    study = prepare(tmp_path, fake_train_net, norms=["SSN"], seeds=[0])
    assert run_study(study, "test", log=_quiet) == 0
    shares = json.loads((tmp_path / "out/results.json").read_text())["sn_shares"]["SSN"]
    assert shares["res3"]["ssn"]["mean_choice"] == {"IN": 1, "LN": 1, "BN": 0}
    assert (shares["res3"]["ssn"]["mean_fixed"], shares["fpn"]["ssn"]["var_fixed"]) == (2, 0)
    markdown = (tmp_path / "out/results.md").read_text()
    assert "Sparse SN choices of SSN" in markdown and "| res3 | 2 | 1 | 1 | 0 |" in markdown


def test_each_run_records_the_settings_it_was_trained_with(tmp_path, fake_train_net):
    study = prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "3", seeds=[0])
    assert run_study(study, "test", log=_quiet) == 0
    record = json.loads((tmp_path / "out/runs/GN/seed0" / RUN_RECORD).read_text())
    assert record["status"] == "finished"
    config = record["settings"]["config"]
    assert (config["SOLVER.MAX_ITER"], config["SEED"], config["MODEL.FPN.NORM"]) == (3, 0, "GN")
    assert record["settings"]["overrides"] == ["SOLVER.MAX_ITER", "3"]
    assert (
        "3 iterations, overrides `SOLVER.MAX_ITER 3`" in (tmp_path / "out/results.md").read_text()
    )


def test_a_rerun_skips_the_finished_runs(tmp_path, fake_train_net):
    assert run_study(prepare(tmp_path, fake_train_net, seeds=[0]), "test", log=_quiet) == 0
    record = tmp_path / "out/runs/GN/seed0" / RUN_RECORD
    before = record.stat().st_mtime_ns
    lines = []
    assert run_study(prepare(tmp_path, fake_train_net, seeds=[0]), "test", log=lines.append) == 0
    assert sum("finished before, skipped" in line for line in lines) == 2
    assert record.stat().st_mtime_ns == before
    assert "| GN | 1 |" in (tmp_path / "out/results.md").read_text()


def test_a_rerun_with_other_settings_is_refused_naming_the_difference(tmp_path, fake_train_net):
    study = prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "3", seeds=[0])
    assert run_study(study, "test", log=_quiet) == 0
    rerun = prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "4", seeds=[0])
    with pytest.raises(
        StudyError,
        match="seed0 was trained with other settings: SOLVER.MAX_ITER 3, now 4.*--retrain",
    ):
        plan(rerun)


def test_retrain_trains_the_runs_whose_settings_differ(tmp_path, fake_train_net):
    study = prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "3", seeds=[0])
    assert run_study(study, "test", log=_quiet) == 0
    rerun = prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "4", seeds=[0], retrain=True)
    assert set(plan(rerun).values()) == {None}  # every run trains again
    same = prepare(tmp_path, fake_train_net, "SOLVER.MAX_ITER", "3", seeds=[0], retrain=True)
    assert None not in plan(same).values()  # runs with these settings are kept


def test_a_finished_run_without_recorded_settings_is_refused(tmp_path, fake_train_net):
    study = prepare(tmp_path, fake_train_net, seeds=[0])
    record = tmp_path / "out/runs/BN/seed0" / RUN_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"status": "finished", "norm": "BN", "seed": 0}))
    with pytest.raises(StudyError, match="other settings: no settings recorded"):
        plan(study)


def test_a_corrupt_run_record_is_refused_naming_the_file(tmp_path, fake_train_net):
    study = prepare(tmp_path, fake_train_net, seeds=[0])
    record = tmp_path / "out/runs/BN/seed0" / RUN_RECORD
    record.parent.mkdir(parents=True)
    record.write_text('{"norm": "BN", "fin')
    with pytest.raises(StudyError, match=f"{record} is not JSON .*delete it"):
        plan(study)


def test_a_failed_run_is_recorded_and_the_others_go_on(tmp_path, fake_train_net, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "GN:0")
    study = prepare(tmp_path, fake_train_net)
    assert run_study(study, "test", log=_quiet) == 1
    out = tmp_path / "out"
    failed = json.loads((out / "runs/GN/seed0" / RUN_RECORD).read_text())
    assert failed["status"] == "failed" and failed["error"] == "exit status 3"
    assert failed["log_tail"][-1] == "RuntimeError: the batch is empty"
    for norm, seed in (("BN", 0), ("BN", 1), ("GN", 1)):  # trained after the failure too
        assert (
            json.loads((out / f"runs/{norm}/seed{seed}" / RUN_RECORD).read_text())["status"]
            == "finished"
        )
    table = (out / "results.md").read_text()
    assert "| GN | 1 of 2 |" in table and "| BN | 2 |" in table
    assert "- GN seed 0: exit status 3; log: `runs/GN/seed0/train.log`" in table


def test_jobs_trains_runs_side_by_side_sharing_out_the_cores(tmp_path, fake_train_net, monkeypatch):
    (tmp_path / "meet").mkdir()
    monkeypatch.setenv("FAKE_MEET_DIR", str(tmp_path / "meet"))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    lines = []
    assert run_study(prepare(tmp_path, fake_train_net, seeds=[0], jobs=2), "t", lines.append) == 0
    for norm in ("BN", "GN"):  # each saw the other one running, and the user's thread count
        assert (tmp_path / f"out/runs/{norm}/seed0/met.txt").read_text() == "2 3"
    assert lines[:2] == [
        "[norm_study] 1/2 BN seed 0: training ...",
        "[norm_study] 2/2 GN seed 0: training ...",
    ]
    assert "| BN | 1 |" in (tmp_path / "out/results.md").read_text()


def test_each_job_gets_its_share_of_the_cores_unless_the_user_set_it():
    cores = os.cpu_count()
    assert job_env({"A": "1"}, 2) == {"A": "1", "OMP_NUM_THREADS": str(max(1, cores // 2))}
    assert job_env({"OMP_NUM_THREADS": "4"}, 2) == {"OMP_NUM_THREADS": "4"}
    assert job_env({}, 1) == {}


def test_jobs_below_one_or_on_gpus_are_refused(tmp_path, fake_train_net, monkeypatch):
    with pytest.raises(StudyError, match="--jobs must be at least 1"):
        prepare(tmp_path, fake_train_net, jobs=0)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(StudyError, match="--jobs 2 runs trainings side by side on the CPU"):
        prepare(tmp_path, fake_train_net, "MODEL.DEVICE", "cuda", jobs=2)


def test_a_rerun_trains_the_failed_runs_again(tmp_path, fake_train_net, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "GN:0")
    assert run_study(prepare(tmp_path, fake_train_net, seeds=[0]), "test", log=_quiet) == 1
    monkeypatch.delenv("FAKE_FAIL")
    rerun = prepare(tmp_path, fake_train_net, seeds=[0])
    assert plan(rerun)[("GN", 0)] is None and plan(rerun)[("BN", 0)] is not None


# -- locks and stopping ------------------------------------------------------------------------

STUDY_PROCESS = """
import sys
from sn_detection.study import Study, run_study
study = Study(config_file={config!r}, overrides=[], norms=["GN"], seeds={seeds!r},
              output={output!r}, num_gpus=1, train_command={command!r}, jobs={jobs})
sys.exit(run_study(study, "test"))
"""


def _start_study(tmp_path, fake_train_net, jobs=1):
    """A study in a process of its own whose ``jobs`` trainings sleep; returns (study process,
    the trainings' pids) once they run."""
    pid_file = tmp_path / "training.pid"
    code = STUDY_PROCESS.format(
        config=SMOKE,
        seeds=list(range(jobs)),
        output=str(tmp_path / "out"),
        command=fake_train_net,
        jobs=jobs,
    )
    env = dict(os.environ, FAKE_PID_FILE=str(pid_file))
    study = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.DEVNULL,
        # as from a terminal: a process that starts with SIGINT ignored keeps ignoring it (Python
        # then raises no KeyboardInterrupt), and a suite run as a background job of a script
        # (`make test &`) hands SIGINT ignored down to every process it starts
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (pid_file.exists() and len(pid_file.read_text().split()) == jobs):
        assert study.poll() is None and time.time() < deadline, "the study did not start training"
        time.sleep(0.1)
    return study, [int(pid) for pid in pid_file.read_text().split()]


def _gone(pid, timeout=15.0):
    """Whether process ``pid`` ends (or is a zombie) within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.1)


def _stop(pid):
    """Kill ``pid`` if a failed test left it running."""
    if not _gone(pid, 0):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig,jobs", [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)])
def test_a_stopped_study_stops_its_trainings_and_leaves_no_old_results(
    tmp_path, fake_train_net, sig, jobs
):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/results.md").write_text("an older study's table")
    study, trainings = _start_study(tmp_path, fake_train_net, jobs)
    try:
        study.send_signal(sig)
        assert study.wait(timeout=60) == 130
        assert all(_gone(training) for training in trainings)
    finally:
        for training in trainings:
            _stop(training)
    assert not (tmp_path / "out/results.md").exists()


def test_a_killed_studys_training_dies_and_holds_the_run_folder_until_then(
    tmp_path, fake_train_net
):
    study, (training,) = _start_study(tmp_path, fake_train_net)
    rerun = Study(SMOKE, [], ["GN"], [0], str(tmp_path / "out"), 1, fake_train_net)
    try:
        with pytest.raises(
            StudyError, match=f"runs/GN/seed0 is in use by a live process .*training pid {training}"
        ):
            with locked_runs(rerun):
                pass
        study.kill()
        study.wait()
        assert _gone(training)
    finally:
        _stop(training)
    with locked_runs(rerun) as locks:  # free once no process holds it
        assert list(locks) == [("GN", 0)]
