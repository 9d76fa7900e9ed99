"""tools/lazyconfig_train_net.py end to end: the tiny SN LazyConfig trains in bfloat16 on the CPU
with the precise pass and evaluates, --eval-only of the result reports the same AP, a 2-process
SyncSN run; wrong keys, values and norms in one line, before anything is built."""

import json
import math
import os
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig, instantiate

from sn_detection.engine import PreciseSN, get_sn_modules
from sn_detection.engine.lazy import lazy_precise_sn
from sn_detection.layers import SwitchNorm2d
from sn_detection.testing import CONFIGS, REPO, copypaste_metrics, load_script
from sn_detection.utils.cli import run_tool

SMOKE = CONFIGS / "LazyConfig/quick_schedules/mask_rcnn_sn_smoke.py"
# 64-pixel images for training and evaluation: the end-to-end runs test the plumbing, not the AP
SMALL = [
    f"dataloader.{split}.mapper.augmentations.0.{key}={value}"
    for split, size in (("train", "[64]"), ("test", "64"))
    for key, value in (("short_edge_length", size), ("max_size", "64"))
]


def _lazyconfig_train_net(*args, timeout=600):
    env = dict(os.environ, DETECTRON2_DATASETS=str(REPO / "datasets"))
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/lazyconfig_train_net.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_trains_in_bfloat16_on_the_cpu_evaluates_and_eval_only_reproduces_the_ap(tmp_path):
    out = tmp_path / "run"
    rc, log = _lazyconfig_train_net(
        "--config-file",
        str(SMOKE),
        f"train.output_dir={out}",
        "train.max_iter=2",
        "train.amp.enabled=True",
        "train.amp.precision=bfloat16",
        "train.precise_bn.enabled=True",
        "train.precise_bn.num_iter=2",
        *SMALL,
    )
    assert rc == 0, log[-4000:]
    assert "Starting training from iteration 0" in log
    # the precise pass ran after the last iteration, before the checkpoint and the evaluation
    assert "Running precise SN/BN statistics for 2 iterations" in log
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [r for r in records if "total_loss" in r]  # written after the last iteration
    assert len(trained) == 1 and math.isfinite(trained[0]["total_loss"])
    assert "[metric]sn/BN_mean" in trained[0]  # the SN shares are written with the losses
    metrics = copypaste_metrics(log)
    assert set(metrics) == {"bbox", "segm"}, log[-2000:]
    # default_setup saved the config as YAML: it loads back and builds SN layers
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.train.amp.precision == "bfloat16"
    assert any(isinstance(m, SwitchNorm2d) for m in instantiate(saved.model).modules())

    rc, log = _lazyconfig_train_net(  # --eval-only after the overrides, as tools/train_net.py
        "--config-file",
        str(SMOKE),
        f"train.init_checkpoint={out / 'model_final.pth'}",
        f"train.output_dir={tmp_path / 'eval'}",
        "--eval-only",
        *SMALL,
    )
    assert rc == 0, log[-4000:]
    eval_metrics = copypaste_metrics(log)
    for task in ("bbox", "segm"):
        assert eval_metrics[task]["AP"] == metrics[task]["AP"]
    # the same detections as at the end of training: weights and SN statistics were loaded
    results = "inference/coco_instances_results.json"
    trained = json.loads((out / results).read_text())
    assert trained and json.loads((tmp_path / "eval" / results).read_text()) == trained


def test_two_process_syncsn_run_trains_and_evaluates(tmp_path):
    # --num-gpus 2 on a CPU-only machine: 2 processes on gloo; DDP gets no device ids
    norms = [
        "model.backbone.bottom_up.stem.norm",
        "model.backbone.bottom_up.stages.norm",
        "model.backbone.norm",
        "model.roi_heads.box_head.conv_norm",
        "model.roi_heads.mask_head.conv_norm",
    ]
    rc, log = _lazyconfig_train_net(
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "--config-file",
        str(SMOKE),
        f"train.output_dir={tmp_path}",
        "train.max_iter=2",
        *[f"{key}=SyncSN" for key in norms],
        *SMALL,
    )
    assert rc == 0, log[-4000:]
    assert "Rank of current process: 0. World size: 2" in log
    assert "SyncSwitchNorm2d" in log and "(norm): SwitchNorm2d" not in log
    assert set(copypaste_metrics(log)) == {"bbox", "segm"}
    assert (tmp_path / "model_final.pth").is_file()


def test_precise_bn_enabled_recomputes_the_sn_statistics():
    cfg = LazyConfig.load(str(SMOKE))
    model = instantiate(cfg.model)
    assert not cfg.train.precise_bn.enabled and lazy_precise_sn(cfg, model) is None
    cfg = LazyConfig.apply_overrides(
        cfg, ["train.precise_bn.enabled=True", "train.precise_bn.num_iter=2"]
    )
    hook = lazy_precise_sn(cfg, model)
    assert isinstance(hook, PreciseSN)
    layers = get_sn_modules(model)
    assert layers and all(m.running_var.abs().sum() == 0 for m in layers)  # as initialised
    hook.update_stats()
    # every SN layer's BN-branch statistics are the average of the 2 batches
    assert all(m.num_batches.item() == 2 and m.running_var.abs().sum() > 0 for m in layers)


# -- the command line, without training -----------------------------------------------------------


def _tool():
    return load_script("tools/lazyconfig_train_net.py")


def _fails(capsys, *overrides):
    """The exit status and stderr of the tool run in this process on the smoke config."""
    status = run_tool(_tool().main, ["--config-file", str(SMOKE), *overrides])
    return status, capsys.readouterr().err


def test_resume_and_eval_only_may_follow_the_overrides(capsys):
    parse_args = _tool().parse_args
    args = parse_args(["--config-file", "c.py", "train.output_dir=o", "--resume"])
    assert args.resume and not args.eval_only and args.opts == ["train.output_dir=o"]
    args = parse_args(["--config-file", "c.py", "train.max_iter=2", "--eval-only", "a.b=1"])
    assert args.eval_only and args.opts == ["train.max_iter=2", "a.b=1"]
    with pytest.raises(SystemExit):
        parse_args(["--config-file", "c.py", "train.max_iter=2", "--num-gpus", "2"])
    assert "--num-gpus comes after the config overrides (such as train.init_checkpoint=PATH)" in (
        capsys.readouterr().err
    )


def test_a_misspelt_key_is_refused_with_the_close_matches(capsys, tmp_path):
    status, err = _fails(capsys, f"train.output_dir={tmp_path / 'o'}", "train.max_itr=2")
    assert status == 2
    assert err.splitlines() == [
        "error: command line: unknown config key train.max_itr (did you mean train.max_iter "
        "or train.amp or train.eval_period?)"
    ]
    assert not (tmp_path / "o").exists()


def test_an_unknown_amp_precision_is_refused_with_the_known_ones(capsys):
    status, err = _fails(capsys, "train.amp.precision=float8")
    assert status == 2
    assert err == "error: train.amp.precision must be one of 'float16', 'bfloat16', got 'float8'\n"


def test_a_train_value_of_the_wrong_type_names_the_key(capsys):
    status, err = _fails(capsys, "train.max_iter=abc")
    assert status == 2
    assert err == "error: train.max_iter must be a positive integer, got 'abc'\n"


def test_an_override_without_a_value_is_refused(capsys):
    status, err = _fails(capsys, "train.max_iter")
    assert status == 2 and "override 'train.max_iter' is not key=value" in err


def test_a_detectron2_constructor_given_sn_is_named_before_anything_is_built(capsys, tmp_path):
    status, err = _fails(
        capsys,
        f"train.output_dir={tmp_path}",
        "model.backbone.bottom_up.stem._target_=detectron2.modeling.backbone.BasicStem",
    )
    assert status == 2 and len(err.splitlines()) == 1
    assert (
        "set model.backbone.bottom_up.stem._target_ to sn_detection.modeling.sn_basic_stem" in err
    )
    assert not (tmp_path / "config.yaml").exists()
