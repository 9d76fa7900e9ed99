"""The demo Mask R-CNN with SN (random SN statistics and logits) compiles without graph breaks.
Exports of the same architecture are tested in tests/tools/test_export_model.py."""

import torch._dynamo
from detectron2.modeling import build_model

from sn_detection.layers import SwitchNorm2d
from sn_detection.testing import CONFIGS, load_config, randomize_sn_state


def test_demo_backbone_and_heads_compile_without_graph_breaks():
    torch._dynamo.reset()
    cfg = load_config(CONFIGS / "quick_schedules/mask_rcnn_sn_demo.yaml")
    torch.manual_seed(0)
    model = randomize_sn_state(build_model(cfg).eval())
    explanation = torch._dynamo.explain(model.backbone)(torch.randn(1, 3, 160, 160))
    sn_layers = sum(isinstance(m, SwitchNorm2d) for m in model.backbone.modules())
    assert sn_layers > 20
    assert explanation.graph_break_count == 0, explanation.break_reasons
    box_head = model.roi_heads.box_head
    assert torch._dynamo.explain(box_head)(torch.randn(5, 64, 7, 7)).graph_break_count == 0
