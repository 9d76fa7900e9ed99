"""The demo Mask R-CNN with SN (random weights), traced and scripted with the default kernels, gives
eager's boxes, scores and masks; a traced file loads in a process without sn_detection."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")
from detectron2.config import get_cfg  # noqa: E402
from detectron2.export import TracingAdapter  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from sn_detection import add_sn_config  # noqa: E402
from sn_detection.layers import SwitchNorm2d, kernels  # noqa: E402
from sn_detection.testing import CONFIGS, randomize_sn_state  # noqa: E402


def _demo_model():
    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.merge_from_file(str(CONFIGS / "quick_schedules/mask_rcnn_sn_demo.yaml"))
    torch.manual_seed(0)
    return randomize_sn_state(build_model(cfg).eval())


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in ((160, 160), (128, 160), (160, 96))]


def _inference(model, inputs):
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def _assert_same_detections(got, want):
    assert len(got) == len(want) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.pred_classes, want.pred_classes)
    torch.testing.assert_close(got.pred_masks, want.pred_masks, rtol=1e-4, atol=1e-4)


def test_traced_demo_model_gives_eager_detections_on_other_images(tmp_path):
    assert kernels.kernels_status() in ("cpu-openmp", "plain")
    model = _demo_model()
    images = _images()
    adapter = TracingAdapter(model, [{"image": images[0]}], _inference)
    traced = torch.jit.trace(adapter, (images[0],), check_trace=False)
    with torch.no_grad():
        for image in images:  # the default (fast) kernels in eager
            want = model.inference([{"image": image}], do_postprocess=False)[0]
            got = adapter.outputs_schema(traced(image))[0]["instances"]
            _assert_same_detections(got, want)

    # the file runs in a process that never imports sn_detection
    path = tmp_path / "model.ts"
    traced.save(str(path))
    torch.save(images[1], tmp_path / "image.pt")
    expected = traced(images[1])
    torch.save(list(expected), tmp_path / "expected.pt")
    script = (
        "import sys, torch, torchvision  # torchvision: RoIAlign and NMS, as any detectron2 export\n"
        f"m = torch.jit.load({str(path)!r})\n"
        f"image = torch.load({str(tmp_path / 'image.pt')!r})\n"
        f"want = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "got = m(image)\n"
        "assert 'sn_detection' not in sys.modules and 'detectron2' not in sys.modules\n"
        "for g, w in zip(got, want): torch.testing.assert_close(g, w)\n"
        "print('ok', len(got[0]))\n"
    )
    env = dict(os.environ, PYTHONPATH="")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
        cwd=str(tmp_path),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


def test_demo_backbone_and_heads_compile_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    model = _demo_model()
    explanation = torch._dynamo.explain(model.backbone)(torch.randn(1, 3, 160, 160))
    sn_layers = sum(isinstance(m, SwitchNorm2d) for m in model.backbone.modules())
    assert sn_layers > 20
    assert explanation.graph_break_count == 0, explanation.break_reasons
    box_head = model.roi_heads.box_head
    assert torch._dynamo.explain(box_head)(torch.randn(5, 64, 7, 7)).graph_break_count == 0
