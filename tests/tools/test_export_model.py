"""tools/deploy/export_model.py: the smoke model (random SN statistics and logits, saved to a
weights file) exported by each supported method gives eager's boxes, scores and masks on images of
the shapes dataset; the files run in a process without sn_detection; a SyncSN model exports as
SN; a method that cannot work stops with a one-line error naming the one to use."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from sn_detection.checkpoint import SNCheckpointer  # noqa: E402
from sn_detection.export import (  # noqa: E402
    ExportError,
    backbone_input,
    check_method,
    deployable,
    script,
)
from sn_detection.layers import SyncSwitchNorm2d  # noqa: E402
from sn_detection.testing import (  # noqa: E402
    CONFIGS,
    REPO,
    load_config,
    load_script,
    randomize_sn_state,
)

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"
SYNC_SMOKE = CONFIGS / "quick_schedules/mask_rcnn_syncsn_smoke.yaml"
TOOL = REPO / "tools/deploy/export_model.py"
tool = load_script("tools/deploy/export_model.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The smoke model's weights with random SN statistics and logits (not the trivial init)."""
    torch.manual_seed(0)
    model = randomize_sn_state(build_model(load_config(SMOKE)))
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def eager(weights):
    model = build_model(load_config(SMOKE, "MODEL.WEIGHTS", weights))
    SNCheckpointer(model).load(weights)
    return deployable(model)


@pytest.fixture(scope="module")
def images():
    """Three validation images of the shapes dataset, as the tool reads a --sample-image."""
    cfg = load_config(SMOKE)
    files = [d["file_name"] for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:3]]
    return [tool.sample_image(cfg, f) for f in files]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, weights):
    """export(method, fmt, config) runs the tool once per argument set (module-wide) and returns
    the written file."""
    done = {}

    def export(method, fmt="torchscript", config=SMOKE):
        key = (method, fmt, str(config))
        if key not in done:
            out = tmp_path_factory.mktemp(f"{method}_{fmt}")
            args = ["--config-file", str(config), "--export-method", method, "--format", fmt]
            done[key] = tool.main(args + ["--output", str(out), "MODEL.WEIGHTS", weights])
        return done[key]

    return export


def _eager_fields(model, image):
    with torch.no_grad():
        inst = model.inference([{"image": image}], do_postprocess=False)[0]
    assert len(inst) > 0
    return {
        "pred_boxes": inst.pred_boxes.tensor,
        "scores": inst.scores,
        "pred_classes": inst.pred_classes,
        "pred_masks": inst.pred_masks,
    }


def _assert_same_detections(got, want):
    """Exported and eager differ only by float rounding (the portable SN statistics)."""
    close = dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(torch.as_tensor(got["pred_boxes"]), want["pred_boxes"], **close)
    torch.testing.assert_close(torch.as_tensor(got["scores"]), want["scores"], rtol=1e-4, atol=1e-4)
    assert torch.equal(torch.as_tensor(got["pred_classes"]), want["pred_classes"])
    torch.testing.assert_close(
        torch.as_tensor(got["pred_masks"]), want["pred_masks"], rtol=1e-4, atol=1e-4
    )


# the flattened outputs of a traced R-CNN: Instances fields in sorted order, then the image size
TRACED_FIELDS = ("pred_boxes", "pred_classes", "pred_masks", "scores", "image_size")


@pytest.mark.parametrize("method", ["tracing", "scripting"])
def test_torchscript_export_gives_eager_detections(exported, eager, images, method):
    model = torch.jit.load(exported(method))
    for image in images:
        with torch.no_grad():
            if method == "tracing":
                got = dict(zip(TRACED_FIELDS, model(image)))
            else:
                got = model(({"image": image},))[0]
        _assert_same_detections(got, _eager_fields(eager, image))


def test_onnx_export_runs_in_onnxruntime_with_eager_detections(exported, eager, images):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(exported("tracing", "onnx"))
    assert [o.name for o in session.get_outputs()] == list(TRACED_FIELDS)
    for image in images:  # other sizes than the example: height and width are dynamic
        got = dict(zip(TRACED_FIELDS, session.run(None, {"image": image.numpy()})))
        _assert_same_detections(got, _eager_fields(eager, image))


def test_torch_export_program_gives_eager_backbone_features(exported, eager, images):
    program = torch.export.load(exported("torch_export")).module()
    batch = torch.cat([backbone_input(eager, image) for image in images[:2]])
    for x in (batch, batch[1:]):  # batch size is dynamic
        with torch.no_grad():
            got = program(x)
            want = eager.backbone((x - eager.pixel_mean) / eager.pixel_std)
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)


def test_exported_files_run_without_sn_detection_or_detectron2(exported, eager, images, tmp_path):
    files = {
        "traced": exported("tracing"),
        "scripted": exported("scripting"),
        "onnx": exported("tracing", "onnx"),
        "program": exported("torch_export"),
    }
    image = images[1]
    x = backbone_input(eager, image)
    with torch.no_grad():
        features = eager.backbone((x - eager.pixel_mean) / eager.pixel_std)
    want = {"image": image, "x": x, "fields": _eager_fields(eager, image), "features": features}
    torch.save(want, tmp_path / "want.pt")
    script_text = f"""
import sys, torch, torchvision  # torchvision: RoIAlign and NMS, as any detectron2 export
import onnxruntime
files = {files!r}
want = torch.load({str(tmp_path / "want.pt")!r})
image, fields = want["image"], want["fields"]
names = ("pred_boxes", "pred_classes", "pred_masks", "scores")
def check(got):
    for name, g in got.items():
        torch.testing.assert_close(torch.as_tensor(g), fields[name], rtol=1e-4, atol=1e-3)
with torch.no_grad():
    check(dict(zip(names, torch.jit.load(files["traced"])(image))))
    check(torch.jit.load(files["scripted"])(({{"image": image}},))[0])
    got = torch.export.load(files["program"]).module()(want["x"])
    for name, w in want["features"].items():
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-4)
session = onnxruntime.InferenceSession(files["onnx"])
check(dict(zip(names, session.run(None, {{"image": image.numpy()}}))))
assert not any(m.split(".")[0] in ("sn_detection", "detectron2") for m in sys.modules)
print("ok")
"""
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, "-c", script_text], capture_output=True, text=True, timeout=300,
        env=env, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_syncsn_model_exports_as_sn_with_the_same_detections(exported, eager, images):
    sync_model = build_model(load_config(SYNC_SMOKE))
    assert any(isinstance(m, SyncSwitchNorm2d) for m in sync_model.modules())
    traced = torch.jit.load(exported("tracing", config=SYNC_SMOKE))  # the SN model's weights
    assert "all_reduce" not in traced.inlined_graph.str() + str(traced.code)
    for image in images[:2]:
        with torch.no_grad():
            got = dict(zip(TRACED_FIELDS, traced(image)))
        _assert_same_detections(got, _eager_fields(eager, image))


def test_caffe2_tracing_stops_with_a_one_line_error_naming_the_method_to_use(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--config-file", str(SMOKE), "--export-method",
         "caffe2_tracing", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("export_model.py: error: caffe2_tracing")
    assert "use --export-method tracing" in lines[0]
    assert not any(tmp_path.iterdir())  # stopped before building anything


@pytest.mark.parametrize(
    "method, fmt, advice",
    [("scripting", "onnx", "--export-method tracing --format onnx"),
     ("torch_export", "onnx", "--export-method tracing --format onnx")],
)
def test_method_and_format_that_cannot_work_are_refused_naming_what_to_use(method, fmt, advice):
    with pytest.raises(ExportError, match=advice) as info:
        check_method(method, fmt)
    assert "\n" not in str(info.value)


def test_a_model_torchscript_cannot_script_is_refused_with_a_pointer_to_tracing():
    class Unscriptable(torch.nn.Module):
        def forward(self, inputs):
            return [dict(**i) for i in inputs]  # ** unpacking: not TorchScript

    with pytest.raises(ExportError, match="use --export-method tracing$") as info:
        script(Unscriptable())
    assert "\n" not in str(info.value)
