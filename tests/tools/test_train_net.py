"""tools/train_net.py end to end: one training run (frozen stem and res2, the precise pass) whose
log, metrics and weights the tests read, --eval-only of its weights, a 2-process SyncSN run and
the compiled mixer; config and --resume errors in one line, before anything is built."""

import json
import os
import re
import subprocess
import sys
import warnings
from collections import defaultdict

import pytest
import torch

from sn_detection.engine import yaml_training_config
from sn_detection.testing import CONFIGS, REPO, copypaste_metrics, load_script
from sn_detection.utils.cli import run_tool

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"
# 64-pixel images for training and evaluation: the end-to-end runs test the plumbing, not the AP
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64"]
SMALL += ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]


def _train_net(*args, timeout=600, **env_vars):
    env = dict(os.environ, DETECTRON2_DATASETS=str(REPO / "datasets"), **env_vars)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(output directory, log) of one smoke training run: stem and res2 frozen (their shares
    must be logged too), the precise pass on 2 batches."""
    out = tmp_path_factory.mktemp("train_net") / "run"
    log = _train_net(
        "--config-file",
        str(SMOKE),
        "MODEL.BACKBONE.FREEZE_AT",
        "2",
        "TEST.PRECISE_BN.ENABLED",
        "True",
        "TEST.PRECISE_BN.NUM_ITER",
        "2",
        "OUTPUT_DIR",
        str(out),
        *SMALL,
    )
    return out, log


def test_training_reports_coco_box_and_mask_ap(run):
    out, log = run
    assert "Starting training from iteration 0" in log
    assert (out / "model_final.pth").is_file()
    assert set(copypaste_metrics(log)) == {"bbox", "segm"}, log[-2000:]


def test_eval_only_of_the_trained_weights_reproduces_the_ap(run, tmp_path):
    out, log = run
    eval_log = _train_net(
        "--config-file",
        str(SMOKE),
        "--eval-only",
        "MODEL.BACKBONE.FREEZE_AT",
        "2",
        "MODEL.WEIGHTS",
        str(out / "model_final.pth"),
        "OUTPUT_DIR",
        str(tmp_path / "eval"),
        *SMALL,
    )
    metrics, eval_metrics = copypaste_metrics(log), copypaste_metrics(eval_log)
    for task in ("bbox", "segm"):
        assert set(eval_metrics[task]) >= {"AP", "AP50", "AP75"}
        assert eval_metrics[task]["AP"] == metrics[task]["AP"]
    assert (tmp_path / "eval/inference/sn_shapes_val_10/coco_instances_results.json").is_file()


def test_the_precise_pass_runs_before_the_weights_are_saved(run):
    out, log = run
    assert "Running precise SN/BN statistics for 2 iterations" in log
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    counts = [int(v) for k, v in state.items() if k.endswith(".num_batches")]
    assert counts and all(n == 2 for n in counts)  # every trainable SN layer: recomputed


def _part(name):
    """The part of a layer of the smoke model, written out here independently of the library."""
    for pattern, part in (
        (r"\.(stem)\.", None),
        (r"\.(res\d)\.", None),
        (r"backbone\.fpn_", "fpn"),
        (r"roi_heads\.box_head\.", "box_head"),
        (r"roi_heads\.mask_head\.", "mask_head"),
    ):
        m = re.search(pattern, name)
        if m:
            return part or m.group(1)
    raise AssertionError(f"unexpected SN layer {name}")


def test_the_shares_of_every_part_are_logged_at_the_last_iteration(run):
    out, log = run
    assert re.search(r"iter: 5 .*\[metric\]sn/BN_mean: 0\.\d+", log)  # the console writer
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last = [r for r in records if "sn/res3/mean_BN" in r][-1]
    assert last["iteration"] == 5  # the last training iteration (MAX_ITER 6)

    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    shares = defaultdict(list)
    for key in state:
        if key.endswith(".mean_weight"):
            layer = key[: -len(".mean_weight")]
            for stat in ("mean", "var"):
                shares[(_part(layer), stat)].append(
                    torch.softmax(state[f"{layer}.{stat}_weight"], 0)
                )
    parts = {part for part, _ in shares}
    assert parts == {"stem", "res2", "res3", "res4", "res5", "fpn", "box_head", "mask_head"}
    for (part, stat), values in shares.items():
        expected = torch.stack(values).mean(0).tolist()
        for i, branch in enumerate(("IN", "LN", "BN")):
            logged = last[f"sn/{part}/{stat}_{branch}"]
            assert logged == pytest.approx(expected[i], abs=1e-6), (part, stat, branch)


def test_two_process_syncsn_run_trains_and_reports_coco_ap(tmp_path):
    # --num-gpus 2 on a CPU-only machine: detectron2's launcher starts 2 processes on gloo
    log = _train_net(
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",  # a free port: other runs may hold the default
        "--config-file",
        str(CONFIGS / "quick_schedules/mask_rcnn_syncsn_smoke.yaml"),
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        str(tmp_path),
        *SMALL,
    )
    assert "Rank of current process: 0. World size: 2" in log
    assert "SyncSwitchNorm2d" in log  # the model printed at start-up uses SyncSN
    assert set(copypaste_metrics(log)) == {"bbox", "segm"}
    assert (tmp_path / "model_final.pth").is_file()


def test_compiled_mixer_trains_and_evaluates_without_falling_back(tmp_path):
    """The mixer as CUDA runs it, through torch.compile (here inductor's CPU backend), in the whole
    model: SN in backbone, FPN and both heads, training then evaluation. Varying RoI counts and
    channel counts must neither fail compilation nor exhaust dynamo's recompilation limit."""
    log = _train_net(
        "--config-file",
        str(SMOKE),
        "OUTPUT_DIR",
        str(tmp_path),
        "MODEL.ROI_BOX_HEAD.NORM",
        "SN",
        "MODEL.ROI_MASK_HEAD.NORM",
        "SN",
        SN_DETECTION_COMPILE_MIXER="1",
    )
    assert "torch.compile of SN's" not in log  # the warning of a fallback to eager
    assert "recompile_limit" not in log
    assert set(copypaste_metrics(log)) == {"bbox", "segm"}


# -- the command line, without training -----------------------------------------------------------


def _tool():
    return load_script("tools/train_net.py")


def _fails(capsys, *argv):
    """The exit status and the stderr of tools/train_net.py run in this process with ``argv``."""
    status = run_tool(_tool().main, list(argv))
    return status, capsys.readouterr().err


def test_resume_and_eval_only_may_follow_the_config_overrides():
    parse_args = _tool().parse_args
    args = parse_args(["--config-file", "c.yaml", "MODEL.WEIGHTS", "w.pth", "--resume"])
    assert args.resume and not args.eval_only and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    args = parse_args(["--config-file", "c.yaml", "OUTPUT_DIR", "o", "--eval-only"])
    assert args.eval_only and args.opts == ["OUTPUT_DIR", "o"]


def test_harden_goes_with_eval_only_before_or_after_the_overrides(capsys):
    parse_args = _tool().parse_args
    args = parse_args(["--config-file", "c.yaml", "--eval-only", "MODEL.WEIGHTS", "w", "--harden"])
    assert args.eval_only and args.harden and args.opts == ["MODEL.WEIGHTS", "w"]
    assert not parse_args(["--config-file", "c.yaml", "--eval-only"]).harden
    with pytest.raises(SystemExit):
        parse_args(["--config-file", "c.yaml", "--harden"])
    assert "--harden evaluates a trained model: use it with --eval-only" in capsys.readouterr().err


def test_another_option_after_the_overrides_names_where_it_belongs(capsys):
    with pytest.raises(SystemExit):
        _tool().parse_args(["--config-file", "c.yaml", "SEED", "1", "--num-gpus", "2"])
    assert "--num-gpus comes after the config overrides" in capsys.readouterr().err


def test_an_unknown_key_is_one_line_with_close_matches_and_nothing_is_written(capsys, tmp_path):
    status, err = _fails(
        capsys,
        "--config-file",
        str(SMOKE),
        "OUTPUT_DIR",
        str(tmp_path / "o"),
        "MODEL.SN.MOMENTUMM",
        "0.1",
    )
    assert status == 2
    assert err.splitlines() == [
        "error: command line: unknown config key MODEL.SN.MOMENTUMM (did you mean "
        "MODEL.SN.MOMENTUM or MODEL.SN.EPS or MODEL.SN.LAST_GAMMA?)"
    ]
    assert not (tmp_path / "o").exists()


def test_an_unknown_key_in_the_config_file_names_the_file(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f'_BASE_: "{SMOKE}"\nSOLVER:\n  MAX_ITERS: 2\n')
    status, err = _fails(capsys, "--config-file", str(config))
    assert status == 2
    assert (
        f"error: {config}: unknown config key SOLVER.MAX_ITERS (did you mean SOLVER.MAX_ITER" in err
    )


def test_a_value_of_the_wrong_type_names_the_key(capsys):
    status, err = _fails(capsys, "--config-file", str(SMOKE), "SOLVER.MAX_ITER", "abc")
    assert status == 2
    assert err == "error: command line: SOLVER.MAX_ITER must be of type int, got 'abc' (str)\n"


def test_an_unknown_amp_precision_is_refused_with_the_known_ones(capsys):
    status, err = _fails(capsys, "--config-file", str(SMOKE), "SOLVER.AMP.PRECISION", "float8")
    assert status == 2
    assert err.startswith("error: SOLVER.AMP.PRECISION must be one of 'float16', 'bfloat16'")


def test_a_bad_ssn_key_is_one_line_before_training(capsys):
    status, err = _fails(
        capsys, "--config-file", str(SMOKE), "MODEL.RESNETS.NORM", "SSN",
        "MODEL.SN.SSN_LOGITS_LR_FACTOR", "-0.1",
    )  # fmt: skip
    assert status == 2
    assert err == "error: MODEL.SN.SSN_LOGITS_LR_FACTOR must be > 0 (e.g. 0.1), got -0.1\n"


def test_an_ssn_key_in_a_model_without_ssn_layers_is_a_warning():
    with pytest.warns(UserWarning, match=r"MODEL.SN.SSN_LOGITS_CLIP_NORM is 2.0 but no part .*"):
        yaml_training_config(str(SMOKE), ["MODEL.SN.SSN_LOGITS_CLIP_NORM", "2.0"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same key with an SSN part: no warning
        opts = ["MODEL.SN.SSN_LOGITS_CLIP_NORM", "2.0", "MODEL.FPN.NORM", "SyncSSN"]
        yaml_training_config(str(SMOKE), opts)


def test_errors_are_found_before_several_processes_start(capsys):
    status, err = _fails(
        capsys, "--num-gpus", "2", "--config-file", str(SMOKE), "SOLVER.MAX_ITER", "abc"
    )
    assert status == 2 and len(err.splitlines()) == 1


def test_resume_with_an_empty_last_checkpoint_names_the_file_and_the_fix(capsys, tmp_path):
    (tmp_path / "last_checkpoint").write_text("")
    status, err = _fails(
        capsys, "--config-file", str(SMOKE), "--resume", "OUTPUT_DIR", str(tmp_path)
    )
    assert status == 2
    assert err == (
        f"error: {tmp_path}/last_checkpoint is empty: delete it or train without --resume\n"
    )


def test_a_stock_config_given_sn_names_the_sn_builder_before_anything_is_written(capsys, tmp_path):
    # detectron2's own Mask R-CNN config with SN fails before anything is built or written,
    # naming our builder (instead of detectron2's KeyError: 'SN' from deep inside)
    from detectron2 import model_zoo

    config = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    status, err = _fails(
        capsys,
        "--config-file",
        config,
        "MODEL.RESNETS.NORM",
        "SN",
        "OUTPUT_DIR",
        str(tmp_path / "o"),
    )
    assert status == 2 and len(err.splitlines()) == 1
    assert "set MODEL.BACKBONE.NAME to 'build_sn_resnet_fpn_backbone'" in err
    assert not (tmp_path / "o").exists()
