"""SNTrainer: its __init__ still mirrors detectron2's, its hooks are where they must be (sparse SN's
schedule only for SSN models), and its
evaluator passes the keypoint sigmas and adds semantic segmentation and PQ for panoptic data."""

import hashlib
import inspect

import pytest
import torch
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.layers import Conv2d

from sn_detection.engine import (
    NonFiniteBatchWarner,
    PreciseSN,
    SNSharesWriter,
    SNTrainer,
    SSNSchedule,
)
from sn_detection.engine.trainer import DETECTRON2_INIT
from sn_detection.evaluation import PanopticEvaluator
from sn_detection.layers import named_switch_norms
from sn_detection.layers.one_hot_norm import OneHotNorm2d
from sn_detection.testing import CONFIGS, load_config


def test_trainer_init_still_mirrors_detectron2():
    """SNTrainer.__init__ mirrors DefaultTrainer.__init__ (no seam for the checkpointer, DDP's
    arguments and the loop): when detectron2 changes it, this fails, and the mirror must be
    brought up to date (then update DETECTRON2_INIT in sn_detection/engine/trainer.py)."""
    source = inspect.getsource(DefaultTrainer.__init__)
    assert hashlib.sha256(source.encode()).hexdigest() == DETECTRON2_INIT, source


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    cfg = load_config(
        CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml",
        "TEST.PRECISE_BN.ENABLED",
        "True",
        "TEST.PRECISE_BN.NUM_ITER",
        "2",
        "OUTPUT_DIR",
        str(tmp_path_factory.mktemp("trainer")),
    )
    return SNTrainer(cfg)


def _types(trainer):
    return [type(h) for h in trainer._hooks]


def test_the_precise_pass_replaces_precise_bn_before_the_checkpointer(trainer):
    types = _types(trainer)
    assert hooks.PreciseBN not in types
    assert types.index(PreciseSN) + 1 == types.index(hooks.PeriodicCheckpointer)


def test_the_shares_are_written_just_before_the_writers(trainer):
    types = _types(trainer)
    assert types.index(SNSharesWriter) + 1 == types.index(hooks.PeriodicWriter)


def test_non_finite_batches_are_checked_after_the_lr_scheduler(trainer):
    types = _types(trainer)
    assert types.index(NonFiniteBatchWarner) == types.index(hooks.LRScheduler) + 1


def test_an_sn_model_has_no_ssn_schedule(trainer):
    assert SSNSchedule not in _types(trainer)


def test_an_ssn_model_gets_the_ssn_schedule_before_the_checkpointer(tmp_path):
    opts = ["OUTPUT_DIR", str(tmp_path)]
    for node in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        opts += [f"MODEL.{node}.NORM", "SSN"]
    cfg = load_config(CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml", *opts)
    types = _types(SNTrainer(cfg))
    assert types.index(SSNSchedule) < types.index(hooks.PeriodicCheckpointer)


def test_evaluator_passes_the_keypoint_oks_sigmas(tmp_path):
    # detectron2's COCOEvaluator takes the sigmas from its caller; without them keypoint AP uses
    # COCO's 17 person sigmas, which fails on the shapes' 2 keypoints
    cfg = load_config(CONFIGS / "quick_schedules/keypoint_rcnn_sn_smoke.yaml")
    evaluator = SNTrainer.build_evaluator(cfg, "sn_shapes_keypoints_val", str(tmp_path))
    assert tuple(evaluator._kpt_oks_sigmas) == tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS) == (0.05, 0.05)


def test_evaluator_adds_sem_seg_and_pq_for_panoptic_data(tmp_path):
    cfg = load_config(CONFIGS / "quick_schedules/panoptic_fpn_sn_smoke.yaml")
    evaluator = SNTrainer.build_evaluator(cfg, "sn_shapes_panoptic_val", str(tmp_path))
    types = [type(e) for e in evaluator._evaluators]
    assert types == [SemSegEvaluator, COCOEvaluator, PanopticEvaluator]


def test_eval_only_with_harden_evaluates_the_deployed_model(trainer, tmp_path, monkeypatch):
    """``--eval-only --harden``: the loaded weights, every SN layer rounded to its choice and
    deployed as one norm (BN choices folded into their convolutions), then evaluated."""
    state = trainer.model.state_dict()
    for key in state:  # the bottom-up network chose BN, the rest (equal logits) IN, its first
        if key.startswith("backbone.bottom_up.") and key.endswith(("mean_weight", "var_weight")):
            state[key] = torch.tensor([0.0, 0.0, 1.0])
    weights = tmp_path / "w.pth"
    torch.save({"model": state}, weights)
    cfg = trainer.cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(weights)
    tested = []
    record = classmethod(lambda cls, cfg, model: tested.append(model))
    monkeypatch.setattr(SNTrainer, "test", record)
    SNTrainer.evaluate(cfg, harden=True)
    (model,) = tested
    assert not list(named_switch_norms(model))
    assert not model.training
    bottom_up = model.backbone.bottom_up
    convs = [m for m in bottom_up.modules() if isinstance(m, Conv2d)]
    assert convs and all(m.norm is None for m in convs)  # BN folded into every convolution
    heads = [m for m in model.roi_heads.modules() if isinstance(m, OneHotNorm2d)]
    assert heads and all((m.mean_branch, m.var_branch) == ("IN", "IN") for m in heads)
    SNTrainer.evaluate(cfg, harden=False)
    assert list(named_switch_norms(tested[1]))  # without --harden: the soft SN model
