"""Every shipped config, YAML and Python (LazyConfig), loads and builds a model."""

import pytest
import torch
from detectron2.modeling import build_model

from sn_detection.testing import CONFIGS, load_config

ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


def test_configs_are_found():
    names = {p.name for p in ALL_CONFIGS}
    assert {
        "Base-SN-RCNN-FPN.yaml",
        "mask_rcnn_R_50_FPN_2x_sn.yaml",
        "mask_rcnn_R_50_FPN_2x_sn_8x1.yaml",
        "mask_rcnn_R_50_FPN_2x_gn.yaml",
        "mask_rcnn_R_50_FPN_2x_frozenbn.yaml",
        "mask_rcnn_R_50_FPN_2x_syncsn.yaml",
        "faster_rcnn_R_50_FPN_2x_sn.yaml",
        "mask_rcnn_sn_demo.yaml",
        "retinanet_R_50_FPN_2x_sn.yaml",
        "cascade_mask_rcnn_R_50_FPN_2x_sn.yaml",
        "panoptic_fpn_R_50_2x_sn.yaml",
        "keypoint_rcnn_R_50_FPN_2x_sn.yaml",
        "mask_rcnn_R_50_C4_2x_sn.yaml",
        "mask_rcnn_regnetx_4gf_FPN_2x_sn.yaml",
    } <= names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    if hasattr(model, "roi_heads"):  # not RetinaNet
        assert hasattr(model.roi_heads, "mask_head") == cfg.MODEL.MASK_ON
        assert hasattr(model.roi_heads, "keypoint_head") == cfg.MODEL.KEYPOINT_ON


LAZY_CONFIGS = sorted((CONFIGS / "LazyConfig").rglob("*.py"))


def test_lazy_configs_are_found():
    names = {str(p.relative_to(CONFIGS / "LazyConfig")) for p in LAZY_CONFIGS}
    assert {
        "mask_rcnn_R_50_FPN_2x_sn.py",
        "mask_rcnn_R_50_FPN_2x_syncsn.py",
        "quick_schedules/mask_rcnn_sn_smoke.py",
    } <= names


@pytest.mark.parametrize("path", LAZY_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_lazy_config_loads_and_builds(path):
    # the files under common/ are parts that the others import; those with a model build it
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(path))
    if "common" not in path.parts:
        assert {"model", "optimizer", "dataloader", "train", "lr_multiplier"} <= set(cfg)
    if "model" in cfg:
        torch.manual_seed(0)
        model = instantiate(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_detectron2_model_zoo_get_config_works():
    # detectron2.model_zoo imports pkg_resources, which setuptools >= 81 no longer ships
    # (requirements.txt pins one that does)
    from detectron2 import model_zoo

    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    assert model.backbone.bottom_up.stem.norm == "FrozenBN"
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
