"""End to end: tools/train_net.py trains a few iterations, then --eval-only reports COCO AP."""
import os
import subprocess
import sys

from sn_detection.testing import CONFIGS, REPO, copypaste_metrics, load_script

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"


def _train_net(*args, timeout=600, **env_vars):
    env = dict(os.environ, DETECTRON2_DATASETS=str(REPO / "datasets"), **env_vars)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_then_eval_only_report_coco_box_and_mask_ap(tmp_path):
    out = tmp_path / "run"
    log = _train_net("--config-file", str(SMOKE), "OUTPUT_DIR", str(out))
    assert "Starting training from iteration 0" in log
    assert (out / "model_final.pth").is_file()
    metrics = copypaste_metrics(log)
    assert set(metrics) == {"bbox", "segm"}, log[-2000:]

    log = _train_net(
        "--config-file", str(SMOKE), "--eval-only",
        "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"),
    )
    eval_metrics = copypaste_metrics(log)
    assert set(eval_metrics) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(eval_metrics[task]) >= {"AP", "AP50", "AP75"}
        # the reloaded weights reproduce the evaluation at the end of training
        assert eval_metrics[task]["AP"] == metrics[task]["AP"]
    assert (tmp_path / "eval/inference/sn_shapes_val/coco_instances_results.json").is_file()


def test_two_process_syncsn_run_trains_and_reports_coco_ap(tmp_path):
    # --num-gpus 2 on a CPU-only machine: detectron2's launcher starts 2 processes on gloo
    log = _train_net(
        "--num-gpus", "2",
        "--config-file", str(CONFIGS / "quick_schedules/mask_rcnn_syncsn_smoke.yaml"),
        "OUTPUT_DIR", str(tmp_path),
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
        "--config-file", str(SMOKE), "OUTPUT_DIR", str(tmp_path),
        "MODEL.ROI_BOX_HEAD.NORM", "SN", "MODEL.ROI_MASK_HEAD.NORM", "SN",
        SN_DETECTION_COMPILE_MIXER="1",
    )
    assert "torch.compile of SN's" not in log  # the warning of a fallback to eager
    assert "recompile_limit" not in log
    assert set(copypaste_metrics(log)) == {"bbox", "segm"}


def test_trainer_init_still_mirrors_detectron2():
    """Trainer.__init__ copies DefaultTrainer.__init__ (no seam for the checkpointer and DDP's
    arguments): when detectron2 changes it, this fails, and the copy must be brought up to date
    (then update DETECTRON2_INIT in tools/train_net.py)."""
    import hashlib
    import inspect

    from detectron2.engine import DefaultTrainer

    train_net = _train_net_module()
    source = inspect.getsource(DefaultTrainer.__init__)
    assert hashlib.sha256(source.encode()).hexdigest() == train_net.DETECTRON2_INIT, source


def _train_net_module():
    return load_script("tools/train_net.py")


def test_resume_and_eval_only_may_follow_the_config_overrides():
    parse_args = _train_net_module().parse_args
    args = parse_args(["--config-file", "c.yaml", "MODEL.WEIGHTS", "w.pth", "--resume"])
    assert args.resume and not args.eval_only and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    args = parse_args(["--config-file", "c.yaml", "OUTPUT_DIR", "o", "--eval-only"])
    assert args.eval_only and args.opts == ["OUTPUT_DIR", "o"]


def test_another_option_after_the_overrides_names_where_it_belongs(capsys):
    import pytest

    with pytest.raises(SystemExit):
        _train_net_module().parse_args(["--config-file", "c.yaml", "SEED", "1", "--num-gpus", "2"])
    assert "--num-gpus comes after the config overrides" in capsys.readouterr().err


def test_setup_names_the_sn_builder_for_a_stock_config_given_sn(tmp_path):
    # detectron2's own Mask R-CNN config with SN: setup() fails before anything is built or
    # written, naming our builder (instead of detectron2's KeyError: 'SN' from deep inside)
    import pytest
    from detectron2 import model_zoo

    train_net = _train_net_module()
    config = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    args = train_net.parse_args(
        ["--config-file", config, "MODEL.RESNETS.NORM", "SN", "OUTPUT_DIR", str(tmp_path / "o")]
    )
    expected = "set MODEL.BACKBONE.NAME to 'build_sn_resnet_fpn_backbone'"
    with pytest.raises(ValueError, match=expected):
        train_net.setup(args)
    assert not (tmp_path / "o").exists()


def test_evaluator_passes_the_keypoint_oks_sigmas_and_adds_sem_seg_and_pq_for_panoptic(tmp_path):
    # detectron2's COCOEvaluator takes the sigmas from its caller; without them keypoint AP uses
    # COCO's 17 person sigmas, which fails on the shapes' 2 keypoints
    from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

    from sn_detection.evaluation import PanopticEvaluator
    from sn_detection.testing import load_config

    trainer = _train_net_module().Trainer
    cfg = load_config(CONFIGS / "quick_schedules/keypoint_rcnn_sn_smoke.yaml")
    evaluator = trainer.build_evaluator(cfg, "sn_shapes_keypoints_val", str(tmp_path))
    assert tuple(evaluator._kpt_oks_sigmas) == tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS) == (0.05, 0.05)
    cfg = load_config(CONFIGS / "quick_schedules/panoptic_fpn_sn_smoke.yaml")
    evaluator = trainer.build_evaluator(cfg, "sn_shapes_panoptic_val", str(tmp_path))
    types = [type(e) for e in evaluator._evaluators]
    assert types == [SemSegEvaluator, COCOEvaluator, PanopticEvaluator]
