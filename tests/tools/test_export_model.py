"""tools/deploy/export_model.py: the smoke model (random SN statistics and logits, saved to a
weights file) exported by each supported method gives eager's boxes, scores and masks on images of
the shapes dataset; the files run in a process without sn_detection; a SyncSN model exports as
SN; bad input (method, weights, output folder, sample image) stops with one line and exit status
2 before anything is written; a failed write leaves the earlier file."""

import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from sn_detection.checkpoint import SNCheckpointer
from sn_detection.export import (
    FOLDED,
    SOFT,
    ExportError,
    backbone_input,
    check_method,
    deployable,
    harden,
    load_weights,
    sample_image,
    script,
)
from sn_detection.layers import SyncSwitchNorm2d
from sn_detection.testing import (
    CONFIGS,
    RunsCode,
    assert_same_detections,
    detection_fields,
    load_config,
    load_script,
    randomize_sn_state,
    run_with_file_size_limit,
)
from sn_detection.utils.cli import run_tool

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"
SYNC_SMOKE = CONFIGS / "quick_schedules/mask_rcnn_syncsn_smoke.yaml"
TOOL = "tools/deploy/export_model.py"
FILES = {"tracing": "model.ts", "scripting": "model.ts", "torch_export": "model.pt2"}


def export_model(*argv) -> int:
    """The tool run in this process; its exit status."""
    return run_tool(load_script(TOOL).main, [str(a) for a in argv])


@pytest.fixture(scope="module", autouse=True)
def _sample_images_generated():
    """The smoke config's test split on disk before the tool runs here: generating it logs through
    the tool's logger, whose handler may still hold an earlier test's captured (closed) stream."""
    DatasetCatalog.get("sn_shapes_val_10")


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
    return deployable(model).model


@pytest.fixture(scope="module")
def images():
    """Three validation images of the shapes dataset, as the tool reads a --sample-image (the
    example input, 128x128), the second and third cut to other shapes: the exported models take
    any height and width."""
    cfg = load_config(SMOKE)
    files = [d["file_name"] for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:3]]
    first, second, third = [sample_image(cfg, f) for f in files]
    return [first, second[:, :, :96], third[:, :112, :]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, weights):
    """export(method, fmt, config) runs the tool once per argument set (module-wide) and returns
    the written file."""
    done = {}

    def export(method, fmt="torchscript", config=SMOKE, *flags):
        key = (method, fmt, str(config), flags)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{method}_{fmt}")
            args = ["--config-file", config, "--export-method", method, "--format", fmt, *flags]
            assert export_model(*args, "--output", out, "MODEL.WEIGHTS", weights) == 0
            done[key] = str(out / ("model.onnx" if fmt == "onnx" else FILES[method]))
        return done[key]

    return export


def _eager_fields(model, image):
    with torch.no_grad():
        return detection_fields(model.inference([{"image": image}], do_postprocess=False)[0])


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
        assert_same_detections(got, _eager_fields(eager, image))


def test_onnx_export_runs_in_onnxruntime_with_eager_detections(exported, eager, images):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(exported("tracing", "onnx"))
    assert [o.name for o in session.get_outputs()] == list(TRACED_FIELDS)
    for image in images:  # other sizes than the example: height and width are dynamic
        got = dict(zip(TRACED_FIELDS, session.run(None, {"image": image.numpy()})))
        assert_same_detections(got, _eager_fields(eager, image))


def test_torch_export_program_gives_eager_backbone_features(exported, eager, images):
    program = torch.export.load(exported("torch_export")).module()
    batch = torch.cat([backbone_input(eager, image) for image in (images[0], images[2])])
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
        [sys.executable, "-c", script_text],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(tmp_path),
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
        assert_same_detections(got, _eager_fields(eager, image))


@pytest.fixture(scope="module")
def hardened(weights):
    """The smoke model with the test weights, hardened (eager, eval mode) and its report."""
    model = build_model(load_config(SMOKE, "MODEL.WEIGHTS", weights))
    SNCheckpointer(model).load(weights)
    report = harden(model)
    return model.eval(), report


def test_hardened_traced_export_gives_the_eager_hardened_detections(exported, hardened, images):
    traced = torch.jit.load(exported("tracing", "torchscript", SMOKE, "--harden"))
    assert "var_weight" not in str(traced.code)  # no SN layer is left: each is its single norm
    for image in images[:2]:
        with torch.no_grad():
            got = dict(zip(TRACED_FIELDS, traced(image)))
        assert_same_detections(got, _eager_fields(hardened[0], image))


def test_harden_flag_reports_dropped_shares_and_what_each_layer_became(
    tmp_path, weights, hardened, caplog
):
    args = ["--config-file", SMOKE, "--output", tmp_path, "--harden", "MODEL.WEIGHTS", weights]
    tool_logger = logging.getLogger("sn_detection")  # detectron2's setup_logger stops propagation
    tool_logger.addHandler(caplog.handler)
    try:
        assert export_model(*args) == 0
    finally:
        tool_logger.removeHandler(caplog.handler)
    out = caplog.text
    report = hardened[1]
    assert f"dropped share: {report.total:.4f} in all" in out
    for name, layer in report.layers.items():
        dropped = rf"mean {layer.mean} \(dropped {layer.dropped_mean:.4f}\)"
        assert re.search(rf"^{re.escape(name)} +{dropped}", out, re.M), name
        assert len(re.findall(rf"^{re.escape(name)} ", out, re.M)) == 2, name  # and became
    assert FOLDED in out and SOFT not in out


def test_caffe2_tracing_stops_with_a_one_line_error_naming_the_method_to_use(tmp_path, capsys):
    args = ["--config-file", SMOKE, "--export-method", "caffe2_tracing", "--output", tmp_path]
    assert export_model(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: caffe2_tracing") and err.count("\n") == 1
    assert "use --export-method tracing" in err
    assert not any(tmp_path.iterdir())  # stopped before building anything


@pytest.mark.parametrize(
    "method, fmt, advice",
    [
        ("scripting", "onnx", "--export-method tracing --format onnx"),
        ("torch_export", "onnx", "--export-method tracing --format onnx"),
    ],
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


# -- bad input: one line, exit status 2, nothing written -----------------------------------------


def _bad_input(tmp_path, case, weights):
    """(arguments, words of the message) for each kind of bad input."""
    out = tmp_path / "export"
    image = None
    if case == "no weights":
        weights, message = "", "MODEL.WEIGHTS is not set"
    elif case == "missing weights":
        weights, message = tmp_path / "model_final.pth", "does not exist"
    elif case == "directory weights":
        weights, message = tmp_path, "is a directory"
    elif case == "truncated weights":
        data = open(weights, "rb").read()
        weights = tmp_path / "cut.pth"
        weights.write_bytes(data[: len(data) // 2])
        message = "truncated or not a PyTorch/detectron2 checkpoint"
    elif case == "malicious weights":
        weights = tmp_path / "evil.pth"
        torch.save({"model": {"w": RunsCode(tmp_path / "code_ran")}}, weights)
        message = "Refusing to read checkpoint"
    elif case == "output is a file":
        out.write_text("")
        message = "is a file: give a folder"
    elif case == "missing sample image":
        image, message = tmp_path / "no.jpg", "no such file"
    else:
        image = tmp_path / "not_an_image.jpg"
        image.write_text("not an image")
        message = "is not an image that PIL can read"
    args = ["--config-file", SMOKE, "--output", out, "MODEL.WEIGHTS", weights]
    return (args if image is None else ["--sample-image", image, *args]), message


@pytest.mark.parametrize(
    "case",
    [
        "no weights",
        "missing weights",
        "directory weights",
        "truncated weights",
        "malicious weights",
        "output is a file",
        "missing sample image",
        "non-image sample image",
    ],
)
def test_bad_input_stops_with_one_line_and_exit_status_2(tmp_path, weights, capsys, case):
    args, message = _bad_input(tmp_path, case, weights)
    capsys.readouterr()
    assert export_model(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    export_dir = tmp_path / "export"
    assert not export_dir.is_dir() or not any(export_dir.iterdir())
    assert not (tmp_path / "code_ran").exists()


def test_an_output_folder_that_is_not_writable_is_refused(tmp_path, weights, capsys, monkeypatch):
    # os.access, as the check asks it: tests run as root, whom no permission bit stops
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    args = ["--config-file", SMOKE, "--output", tmp_path / "out", "MODEL.WEIGHTS", weights]
    assert export_model(*args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path} is not writable" in err


def _other_weights(tmp_path):
    """Weights of the smoke model with a narrower box head: they fill all but that head."""
    cfg = load_config(SMOKE, "MODEL.ROI_BOX_HEAD.FC_DIM", "16")
    path = tmp_path / "narrow_head.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def test_weights_of_another_model_are_refused_naming_what_they_leave_unloaded(tmp_path, capsys):
    args = ["--config-file", SMOKE, "--output", tmp_path / "out"]
    assert export_model(*args, "MODEL.WEIGHTS", _other_weights(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-partial-weights" in err
    assert "roi_heads.box_head.fc1.{bias,weight}" in err
    assert not (tmp_path / "out").exists()


def test_allow_partial_weights_loads_what_fits(tmp_path):
    path = _other_weights(tmp_path)
    model = build_model(load_config(SMOKE))
    load_weights(model, str(path), allow_partial=True)
    key = "roi_heads.box_predictor.bbox_pred.bias"  # of the same shape in both models
    assert torch.equal(model.state_dict()[key], torch.load(path)["model"][key])


def test_a_failed_write_leaves_the_earlier_export_and_says_so_in_one_line(tmp_path, weights):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.ts").write_bytes(b"earlier export")
    args = ["--config-file", str(SMOKE), "--output", str(out), "MODEL.WEIGHTS", weights]
    proc = run_with_file_size_limit(TOOL, args, limit=1 << 16)  # the model is larger
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "terminate" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: writing {out / 'model.ts'} failed (File too large)")
    assert (out / "model.ts").read_bytes() == b"earlier export"
    assert os.listdir(out) == ["model.ts"]  # no temporary file or folder left
