"""Norms in YAML reach backbone, FPN, box head and mask head; freezing and LAST_GAMMA."""

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d
from sn_detection.testing import CONFIGS, load_config
from sn_detection.utils.cli import InputError

SN_2X = CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml"
DEMO = CONFIGS / "quick_schedules/mask_rcnn_sn_demo.yaml"


def _norm_types(module):
    return {type(m) for m in module.modules() if type(m).__name__.endswith(("Norm", "Norm2d"))}


def _parts(model):
    return {
        "stem+res2": [model.backbone.bottom_up.stem, model.backbone.bottom_up.res2],
        "res3-5": [getattr(model.backbone.bottom_up, f"res{i}") for i in (3, 4, 5)],
        "fpn": [m for n, m in model.backbone.named_children() if n.startswith("fpn_")],
        "box_head": [model.roi_heads.box_head],
        "mask_head": [model.roi_heads.mask_head],
    }


def _types_of(parts):
    return set().union(*(_norm_types(m) for m in parts))


def test_sn_everywhere_with_frozen_stem_and_res2():
    model = build_model(load_config(SN_2X))
    parts = _parts(model)
    assert _types_of(parts["stem+res2"]) == {FrozenSwitchNorm2d}
    for name in ("res3-5", "fpn", "box_head", "mask_head"):
        assert _types_of(parts[name]) == {SwitchNorm2d}, name
    assert model.roi_heads.box_head.conv1.bias is None  # a norm follows: no conv bias
    assert all(not p.requires_grad for p in model.backbone.bottom_up.res2.parameters())
    sn = model.backbone.bottom_up.res3[0].conv1.norm
    assert sn.momentum == 0.003 and sn.using_bn


@pytest.mark.parametrize(
    "norm, expected", [("GN", nn.GroupNorm), ("SyncSN", SyncSwitchNorm2d), ("BN", nn.BatchNorm2d)]
)
def test_yaml_norm_reaches_every_part(norm, expected):
    nodes = ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD")
    cfg = load_config(DEMO, *(x for node in nodes for x in (f"MODEL.{node}.NORM", norm)))
    parts = _parts(build_model(cfg))
    for name, modules in parts.items():
        assert _types_of(modules) == {expected}, name


def test_mixed_norms_and_frozen_bn_baseline():
    cfg = load_config(CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_frozenbn.yaml")
    parts = _parts(build_model(cfg))
    assert _types_of(parts["res3-5"]) == {FrozenBatchNorm2d}
    assert _types_of(parts["fpn"] + parts["box_head"] + parts["mask_head"]) == set()


def test_no_bn_branch_config():
    cfg = load_config(CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml")
    model = build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, (SwitchNorm2d, FrozenSwitchNorm2d))]
    assert norms and all(not m.using_bn for m in norms)
    assert all(m.mean_weight.shape == (2,) for m in norms)


def test_last_gamma_zeroes_the_last_norm_of_each_block():
    model = build_model(load_config(DEMO, "MODEL.SN.LAST_GAMMA", "True"))
    block = model.backbone.bottom_up.res3[0]  # R18: BasicBlock, last norm is conv2's
    assert torch.equal(block.conv2.norm.weight, torch.zeros_like(block.conv2.norm.weight))
    assert torch.equal(block.conv1.norm.weight, torch.ones_like(block.conv1.norm.weight))


def test_unknown_norm_in_yaml_fails_at_build_with_valid_names():
    with pytest.raises(InputError, match="MODEL.FPN.NORM is 'Switch'.*Valid names: SN, SyncSN"):
        build_model(load_config(DEMO, "MODEL.FPN.NORM", "Switch"))


def test_sn_model_trains_one_step_on_cpu():
    cfg = load_config(DEMO)
    model = build_model(cfg).train()
    image = torch.rand(3, 96, 128) * 255
    inst = Instances((96, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0]]))
    inst.gt_classes = torch.tensor([1])
    masks = torch.zeros(1, 96, 128, dtype=torch.bool)
    masks[0, 10:60, 10:50] = True
    inst.gt_masks = BitMasks(masks)
    with EventStorage():
        losses = model([{"image": image, "instances": inst}] * 2)
    sum(losses.values()).backward()
    sn = model.backbone.bottom_up.stem.conv1.norm
    assert sn.mean_weight.grad is not None and torch.isfinite(sn.mean_weight.grad).all()
    assert sn.running_var.abs().sum() > 0
