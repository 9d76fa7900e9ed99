"""SNTrainer: its __init__ still mirrors detectron2's, its hooks are where they must be (sparse SN's
schedule only for SSN models), and its
evaluator passes the keypoint sigmas and adds semantic segmentation and PQ for panoptic data."""

import hashlib
import inspect

import pytest
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

from sn_detection.engine import (
    NonFiniteBatchWarner,
    PreciseSN,
    SNSharesWriter,
    SNTrainer,
    SSNSchedule,
)
from sn_detection.engine.trainer import DETECTRON2_INIT
from sn_detection.evaluation import PanopticEvaluator
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
