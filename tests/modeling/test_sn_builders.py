"""SN and SyncSN in every norm key detectron2 models read; stock builders and unknown names
give errors that name the key and the fix."""

import inspect
import re

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    RPN_HEAD_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
    build_model,
)

from sn_detection.layers import (
    FrozenSwitchNorm2d,
    SparseSwitchNorm2d,
    SwitchNorm2d,
    SyncSparseSwitchNorm2d,
    SyncSwitchNorm2d,
)
from sn_detection.modeling import SN_BUILDERS, CycleSwitchNormList, check_sn_builders
from sn_detection.solver import build_sn_optimizer
from sn_detection.testing import CONFIGS, load_config
from sn_detection.utils.cli import InputError

REGISTRIES = (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    RPN_HEAD_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
)
SMOKE = CONFIGS / "quick_schedules"
RETINANET = SMOKE / "retinanet_sn_smoke.yaml"
CASCADE = SMOKE / "cascade_mask_rcnn_sn_smoke.yaml"
PANOPTIC = SMOKE / "panoptic_fpn_sn_smoke.yaml"
KEYPOINT = SMOKE / "keypoint_rcnn_sn_smoke.yaml"
C4 = SMOKE / "mask_rcnn_C4_sn_smoke.yaml"
REGNET = SMOKE / "mask_rcnn_regnet_sn_smoke.yaml"
# the norm keys each smoke model reads
NORM_KEYS = {
    RETINANET: ("RESNETS", "FPN", "RETINANET"),
    CASCADE: ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"),
    PANOPTIC: ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD", "SEM_SEG_HEAD"),
    KEYPOINT: ("RESNETS", "FPN", "ROI_BOX_HEAD"),
    C4: ("RESNETS",),
    REGNET: ("REGNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"),
}


def _norm_types(module):
    return {type(m) for m in module.modules() if isinstance(m, (SwitchNorm2d, FrozenSwitchNorm2d))}


def _with_norm(path, norm):
    """The smoke config of ``path`` with ``norm`` in every norm key its model reads."""
    opts = []
    for node in NORM_KEYS[path]:
        opts += [f"MODEL.{node}.NORM", norm]
    return load_config(path, *opts)


def test_every_detectron2_builder_that_takes_a_norm_has_an_sn_twin():
    # a registered detectron2 builder reads a norm if its source reads a `.NORM` key; RetinaNet
    # builds RetinaNetHead (no registry), which reads MODEL.RETINANET.NORM
    readers = {"RetinaNet"}
    for registry in REGISTRIES:
        for name, obj in registry:
            if obj.__module__.startswith("detectron2.") and re.search(
                r"\.NORM\b", inspect.getsource(obj)
            ):
                readers.add(name)
    assert readers == set(SN_BUILDERS)
    for stock, ours in SN_BUILDERS.items():
        (registry,) = [r for r in REGISTRIES if stock in r]
        assert ours in registry, f"{ours} is not registered where {stock} is"


@pytest.mark.parametrize(
    "norm, layer",
    [
        ("SN", SwitchNorm2d),
        ("SyncSN", SyncSwitchNorm2d),
        ("SSN", SparseSwitchNorm2d),
        ("SyncSSN", SyncSparseSwitchNorm2d),
    ],
)
@pytest.mark.parametrize("path", list(NORM_KEYS), ids=lambda p: p.stem)
def test_sn_and_syncsn_reach_every_norm_the_model_reads(path, norm, layer):
    model = build_model(_with_norm(path, norm))
    parts = {
        "backbone": model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else None,
        "fpn": getattr(model.backbone, "lateral_convs", None) and model.backbone,
        "retinanet_head": getattr(model, "head", None),
        "sem_seg_head": getattr(model, "sem_seg_head", None),
    }
    if hasattr(model, "roi_heads"):
        heads = model.roi_heads
        parts["box_head"] = getattr(heads, "box_head", None)
        parts["mask_head"] = getattr(heads, "mask_head", None)
        parts["res5"] = getattr(heads, "res5", None)
    if path == C4:
        parts["backbone"] = model.backbone
    for name, part in parts.items():
        if part is None:
            continue
        types = _norm_types(part)
        if name == "mask_head" and path == C4:
            assert not types  # detectron2's C4 mask head has no convs before the deconv
            continue
        assert types == {layer}, (name, types)
    if path == CASCADE:
        assert len(model.roi_heads.box_head) == 3
        for head in model.roi_heads.box_head:
            assert _norm_types(head) == {layer}
    if path == KEYPOINT:
        assert hasattr(model.roi_heads, "keypoint_head")


def test_retinanet_head_keeps_per_level_statistics_with_shared_parameters():
    model = build_model(load_config(RETINANET))
    cycles = [m for m in model.head.modules() if isinstance(m, CycleSwitchNormList)]
    assert len(cycles) == 2 * 2  # NUM_CONVS 2 in the class and box towers
    levels = len(model.head.cls_subnet[1])
    assert levels == 5  # P3-P7
    first = model.head.cls_subnet[1]
    assert all(first[k].weight is first[0].weight for k in range(levels))
    assert all(first[k].mean_weight is first[0].mean_weight for k in range(levels))
    torch.manual_seed(0)
    features = [torch.randn(2, 64, 8, 8) * (k + 1) + k for k in range(levels)]
    model.head.train()
    model.head(features)
    means = torch.stack([first[k].running_mean for k in range(levels)])
    assert all(not torch.equal(means[0], means[k]) for k in range(1, levels))
    # the shared parameters are optimized once
    optimizer = build_sn_optimizer(load_config(RETINANET), model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(params) == len({id(p) for p in params})
    assert any(p is first[0].weight for p in params)


@pytest.mark.parametrize(
    "path, frozen", [(RETINANET, "res2"), (REGNET, "s1")], ids=["resnet", "regnet"]
)
def test_frozen_stages_have_frozen_switchnorm(path, frozen):
    model = build_model(load_config(path, "MODEL.BACKBONE.FREEZE_AT", "2"))
    bottom_up = model.backbone.bottom_up
    for name in ("stem", frozen):
        assert _norm_types(getattr(bottom_up, name)) == {FrozenSwitchNorm2d}, name
    trainable = "res3" if path == RETINANET else "s2"
    assert _norm_types(getattr(bottom_up, trainable)) == {SwitchNorm2d}


def test_regnet_last_gamma_zeroes_the_last_norm_of_each_block():
    regnet = build_model(load_config(REGNET, "MODEL.SN.LAST_GAMMA", "True")).backbone.bottom_up
    block = regnet.s2.b1  # ResBottleneckBlock: its last norm is c_bn
    assert torch.equal(block.f.c_bn.weight, torch.zeros_like(block.f.c_bn.weight))
    assert torch.equal(block.f.a_bn.weight, torch.ones_like(block.f.a_bn.weight))


STOCK = [
    ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone", "build_sn_resnet_fpn_backbone", CASCADE),
    ("MODEL.BACKBONE.NAME", "build_resnet_backbone", "build_sn_resnet_backbone", C4),
    (
        "MODEL.BACKBONE.NAME",
        "build_retinanet_resnet_fpn_backbone",
        "build_sn_retinanet_resnet_fpn_backbone",
        RETINANET,
    ),
    ("MODEL.META_ARCHITECTURE", "RetinaNet", "SNRetinaNet", RETINANET),
    ("MODEL.ROI_HEADS.NAME", "Res5ROIHeads", "SNRes5ROIHeads", C4),
    ("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "SNFastRCNNConvFCHead", CASCADE),
    ("MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead", "SNMaskRCNNConvUpsampleHead", CASCADE),
    ("MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead", "SNSemSegFPNHead", PANOPTIC),
]


@pytest.mark.parametrize("key, stock, ours, path", STOCK, ids=[s[1] for s in STOCK])
def test_a_stock_builder_with_sn_names_the_sn_builder_to_use(key, stock, ours, path):
    cfg = load_config(path, key, stock)
    expected = rf"{key} '{stock}' is detectron2's.*set {key} to '{ours}'"
    with pytest.raises(InputError, match=expected):
        check_sn_builders(cfg)


def test_an_sn_builder_checks_only_its_own_norm_keys():
    # get_cfg()'s defaults: a C4 model whose RoI heads are detectron2's Res5ROIHeads. The backbone
    # builds alone (as the checkpoint converter builds it); the whole model does not.
    opts = "MODEL.ROI_HEADS.NAME Res5ROIHeads MODEL.RESNETS.DEPTH 18"
    opts += " MODEL.RESNETS.RES2_OUT_CHANNELS 64"
    cfg = load_config(CONFIGS / "Base-SN-RCNN-C4.yaml", *opts.split())
    backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))
    assert _norm_types(backbone) == {SwitchNorm2d, FrozenSwitchNorm2d}
    with pytest.raises(ValueError, match="set MODEL.ROI_HEADS.NAME to 'SNRes5ROIHeads'"):
        check_sn_builders(cfg)


def test_a_stock_builder_with_detectron2_norms_is_left_alone():
    cfg = load_config(
        CASCADE, "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NORM", "GN"
    )
    check_sn_builders(cfg)
    assert not _norm_types(build_model(cfg).roi_heads.box_head)


UNKNOWN = [
    (RETINANET, "RESNETS"),
    (RETINANET, "FPN"),
    (RETINANET, "RETINANET"),
    (CASCADE, "ROI_BOX_HEAD"),
    (CASCADE, "ROI_MASK_HEAD"),
    (PANOPTIC, "SEM_SEG_HEAD"),
    (C4, "RESNETS"),
    (REGNET, "REGNETS"),
]


@pytest.mark.parametrize("path, node", UNKNOWN, ids=[f"{p.stem}-{n}" for p, n in UNKNOWN])
def test_an_unknown_norm_name_lists_the_valid_names(path, node):
    cfg = load_config(path, f"MODEL.{node}.NORM", "SwitchNorm")
    message = (
        rf"MODEL\.{node}\.NORM is 'SwitchNorm', which is not a norm\. "
        r"Valid names: SN, SyncSN, SSN, SyncSSN, BN"
    )
    with pytest.raises(InputError, match=message):
        check_sn_builders(cfg)
    with pytest.raises(InputError, match=message):
        build_model(cfg)
