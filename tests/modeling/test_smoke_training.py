"""Every new architecture with SN trains a few iterations and evaluates on the CPU; with SyncSN on
2 gloo processes its running statistics stay equal across the processes; an SSN detector trained
with the radius rising to 1 ends with every SSN layer fixed."""

import math

import pytest
import torch

from sn_detection.layers import SwitchNorm2d, SyncSwitchNorm2d
from sn_detection.testing import CONFIGS, load_config, run_distributed, train_and_evaluate

SMOKE = CONFIGS / "quick_schedules"
# smoke config -> the tasks its evaluation reports
TASKS = {
    "retinanet_sn_smoke.yaml": {"bbox"},
    "cascade_mask_rcnn_sn_smoke.yaml": {"bbox", "segm"},
    "panoptic_fpn_sn_smoke.yaml": {"bbox", "segm", "sem_seg", "panoptic_seg"},
    "keypoint_rcnn_sn_smoke.yaml": {"bbox", "keypoints"},
    "mask_rcnn_C4_sn_smoke.yaml": {"bbox", "segm"},
    "mask_rcnn_regnet_sn_smoke.yaml": {"bbox", "segm"},
}
# every norm key of detectron2's defaults (and MODEL.REGNETS) that a model may read
NORM_NODES = (
    "RESNETS",
    "FPN",
    "ROI_BOX_HEAD",
    "ROI_MASK_HEAD",
    "RETINANET",
    "SEM_SEG_HEAD",
    "REGNETS",
)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    # one directory for the process: COCOEvaluator remembers the json it converts there
    return str(tmp_path_factory.mktemp("evaluation"))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_trains_and_evaluates_on_cpu(name, eval_dir):
    cfg = load_config(SMOKE / name)
    torch.manual_seed(0)
    model, results = train_and_evaluate(cfg, eval_dir)
    assert set(results) == TASKS[name]
    headlines = {"sem_seg": ("mIoU",), "panoptic_seg": ("PQ", "SQ", "RQ")}
    for task, metrics in results.items():
        for key in headlines.get(task, ("AP",)):
            assert math.isfinite(metrics[key]), (task, metrics)
    norms = [m for m in model.modules() if isinstance(m, SwitchNorm2d)]
    # SN layers ran in training: the running statistics of their BN branch moved off zero
    assert norms and any(m.running_var.abs().sum() > 0 for m in norms)


def _syncsn_runs(rank: int, world_size: int):
    """Each smoke model with SyncSN everywhere, under DDP, 2 iterations of 64-pixel images."""
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.modeling import build_model

    import sn_detection  # noqa: F401  (registers the builders in the child)
    from sn_detection import build_sn_optimizer

    results = {}
    for name in sorted(TASKS):
        opts = []
        for node in NORM_NODES:
            opts += [f"MODEL.{node}.NORM", "SyncSN"]
        opts += ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64"]  # a third less work
        cfg = load_config(SMOKE / name, "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "2", *opts)
        torch.manual_seed(0)  # the same initial weights on both processes
        model = build_model(cfg)
        optimizer = build_sn_optimizer(cfg, model)
        ddp = create_ddp_model(model, device_ids=None, forward_sync_buffers=False)
        loader = build_detection_train_loader(cfg)
        trainer = SimpleTrainer(ddp, loader, optimizer)
        trainer.train(0, cfg.SOLVER.MAX_ITER)
        first = next(iter(loader))
        images = [d["image_id"] for d in first]
        layers = [m for m in model.modules() if isinstance(m, SyncSwitchNorm2d)]
        results[name] = {
            "layers": len(layers),
            "stats": [torch.cat([m.running_mean, m.running_var]) for m in layers],
            "images": images,
        }
    return results


def test_syncsn_on_two_processes_gives_equal_statistics_on_both():
    rank0, rank1 = run_distributed(_syncsn_runs, 2, timeout=280)
    for name in TASKS:
        a, b = rank0[name], rank1[name]
        assert a["layers"] > 0 and a["layers"] == b["layers"], name
        assert a["images"] != b["images"], name  # the processes saw different images
        for k, (sa, sb) in enumerate(zip(a["stats"], b["stats"])):
            assert sa.abs().sum() > 0, (name, k)
            torch.testing.assert_close(sa, sb, rtol=1e-4, atol=1e-5, msg=f"{name} layer {k}")


def test_ssn_detector_trained_with_the_radius_rising_ends_with_every_ssn_layer_fixed():
    """Mask R-CNN with SSN in every norm key, MAX_ITER 6, under the trainer's SSNSchedule (radius
    iter / MAX_ITER before each step, hold_fixed_logits after it): every layer ends one-hot."""
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model

    from sn_detection import build_sn_optimizer
    from sn_detection.engine import SSNSchedule
    from sn_detection.layers import sparse_switch_norms

    opts = []
    for node in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        opts += [f"MODEL.{node}.NORM", "SSN"]
    cfg = load_config(SMOKE / "mask_rcnn_sn_smoke.yaml", "SOLVER.MAX_ITER", "6", *opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    max_iter = cfg.SOLVER.MAX_ITER
    optimizer = build_sn_optimizer(cfg, model)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    trainer.register_hooks([SSNSchedule(model, max_iter)])
    trainer.train(0, max_iter)
    layers = [layer for _, layer in sparse_switch_norms(model)]
    assert len(layers) > 10
    assert all(layer.mean_fixed.item() == 1 and layer.var_fixed.item() == 1 for layer in layers)
    for layer in layers:
        for weights in layer.mix_weights():
            assert sorted(weights.tolist())[-1] == 1.0 and weights.sum().item() == 1.0
