"""The visualizer (sn_detection.analysis.report, tools/visualize_sn.py): the figures, tables and
JSON of the learned SN shares, from our checkpoints and from the released ImageNet layout, a
comparison of two, the training curves of a metrics.json, and errors that write nothing."""

import csv
import json
import math
import pickle
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image
from torch import nn

from sn_detection.analysis import AnalysisError, model_shares, share_scalars
from sn_detection.analysis.plots import COLORS
from sn_detection.analysis.report import share_report, write_files
from sn_detection.analysis.shares import STATS
from sn_detection.checkpoint import CheckpointError, convert_official, read_checkpoint
from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, named_switch_norms
from sn_detection.layers.switch_norm import BRANCHES
from sn_detection.testing import (
    CONFIGS,
    REPO,
    OfficialResNet,
    OfficialSN,
    load_config,
    load_script,
    save_official,
    sparse_sn_model,
)
from sn_detection.utils.cli import run_tool

TOOL = REPO / "tools/visualize_sn.py"
SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"
FILES = {"sn_shares.png", "sn_shares.csv", "sn_shares.md", "sn_shares.json"}
# (name, layer type, using_bn) of a tiny detector, registered out of network order on purpose
DETECTOR = [
    ("roi_heads.mask_head.mask_fcn1.norm", SwitchNorm2d, True),
    ("backbone.bottom_up.stem.conv1.norm", FrozenSwitchNorm2d, True),
    ("backbone.bottom_up.res2.0.conv1.norm", FrozenSwitchNorm2d, True),
    ("backbone.bottom_up.res3.0.conv1.norm", SwitchNorm2d, True),
    ("backbone.bottom_up.res3.0.conv2.norm", SwitchNorm2d, True),
    ("backbone.fpn_lateral3.norm", SwitchNorm2d, True),
    ("roi_heads.box_head.conv1.norm", SwitchNorm2d, False),
]
NETWORK_ORDER = [DETECTOR[i][0] for i in (1, 2, 3, 4, 5, 6, 0)]


def visualize(out, *weights, metrics=None):
    """What tools/visualize_sn.py does: compose every file, then write them into ``out``."""
    files = share_report([str(w) for w in weights], metrics and str(metrics))
    return write_files(str(out), files)


def softmax(logits):
    """The shares of the logits (computed here, independently of the library), BN 0 if absent."""
    exps = [math.exp(x) for x in logits]
    shares = [e / sum(exps) for e in exps]
    return dict(zip(BRANCHES, shares + [0.0] * (3 - len(shares))))


def random_logits(layers, seed):
    """{name: (mean logits, var logits)} for each (name, number of branches)."""
    g = torch.Generator().manual_seed(seed)
    return {n: [torch.randn(k, generator=g).tolist() for _ in "mv"] for n, k in layers}


def tiny_detector(logits):
    """A module tree holding the SN layers of DETECTOR, named as in a detector, with the given
    (mean, var) logits."""
    root = nn.Module()
    for name, layer_type, using_bn in DETECTOR:
        *path, leaf = name.split(".")
        parent = root
        for component in path:
            if not hasattr(parent, component):
                parent.add_module(component, nn.Module())
            parent = getattr(parent, component)
        layer = layer_type(4, using_bn=using_bn)
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor(logits[name][0]))
            layer.var_weight.copy_(torch.tensor(logits[name][1]))
        parent.add_module(leaf, layer)
    return root


@pytest.fixture
def detector_logits():
    return random_logits([(n, 3 if bn else 2) for n, _, bn in DETECTOR], seed=0)


@pytest.fixture
def detector_checkpoint(tmp_path, detector_logits):
    path = tmp_path / "model_final.pth"
    torch.save({"model": tiny_detector(detector_logits).state_dict(), "iteration": 99}, path)
    return str(path)


def read_png(path):
    """The decoded image and the set of its colours."""
    with Image.open(path) as image:
        image.load()
        rgb = image.convert("RGB")
    return image, {color for _, color in rgb.getcolors(maxcolors=1 << 20)}


def figure_size(path, layers):
    """(whether the width is the figure's 0.13 inch per layer plus 1.5, height) at 100 dpi."""
    width, height = read_png(path)[0].size
    return abs(width - (150 + 13 * layers)) <= 1, height


def hex_rgb(color):
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def assert_bars_drawn(path, size):
    image, colors = read_png(path)
    assert image.format == "PNG" and image.size == size
    assert {hex_rgb(c) for c in COLORS.values()} <= colors  # IN, LN and BN bars are there


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_shares(found, expected):
    for stat in ("mean", "var"):
        for branch in BRANCHES:
            assert found[stat][branch] == pytest.approx(expected[stat][branch], abs=1e-6)


def expected_shares(logits):
    return {"mean": softmax(logits[0]), "var": softmax(logits[1])}


def test_detector_checkpoint_gives_figure_and_tables_equal_to_softmax_of_logits(
    tmp_path, detector_checkpoint, detector_logits
):
    out = tmp_path / "out"
    visualize(out, detector_checkpoint)
    assert {p.name for p in out.iterdir()} == FILES
    assert_bars_drawn(out / "sn_shares.png", (600, 300))

    run = json.loads((out / "sn_shares.json").read_text())["runs"][0]
    assert (run["kind"], run["iteration"]) == ("detectron2 checkpoint", 99)
    assert [layer["name"] for layer in run["layers"]] == NETWORK_ORDER  # frozen ones included
    for layer in run["layers"]:
        assert_shares(layer, expected_shares(detector_logits[layer["name"]]))
    assert list(run["parts"]) == ["stem", "res2", "res3", "fpn", "box_head", "mask_head"]
    res3 = [expected_shares(detector_logits[n]) for n in NETWORK_ORDER[2:4]]
    part_mean = {s: {b: (res3[0][s][b] + res3[1][s][b]) / 2 for b in BRANCHES} for s in res3[0]}
    assert_shares(run["parts"]["res3"], part_mean)

    rows = read_csv(out / "sn_shares.csv")
    assert [(r["part"], r["layer"]) for r in rows] == [
        ("stem", "stem.conv1.norm"),
        ("res2", "res2.0.conv1.norm"),
        ("res3", "res3.0.conv1.norm"),
        ("res3", "res3.0.conv2.norm"),
        ("fpn", "fpn_lateral3.norm"),
        ("box_head", "box_head.conv1.norm"),
        ("mask_head", "mask_head.mask_fcn1.norm"),
    ]
    for row, name in zip(rows, NETWORK_ORDER):
        shares = expected_shares(detector_logits[name])
        for stat in ("mean", "var"):
            for b in BRANCHES:
                value = float(row[f"model_final.pth:{stat}_{b}"])
                assert value == pytest.approx(shares[stat][b], abs=1e-6)

    table = (out / "sn_shares.md").read_text()
    assert "iteration 99" in table
    cells = [f"{100 * part_mean[s][b]:.1f}" for s in ("mean", "var") for b in BRANCHES]
    assert f"| res3 | 2 | {' | '.join(cells)} |" in table


def save_official_resnet(path, version, using_bn, seed):
    """A tiny ResNet-50 + SN saved as the released ImageNet checkpoints are; returns
    {official layer name: (mean logits, var logits)}."""
    torch.manual_seed(seed)
    model = OfficialResNet(version, using_bn=using_bn, stem=2, planes=1)
    save_official(model, path)
    return {
        name: (m.mean_weight.tolist(), m.var_weight.tolist())
        for name, m in model.named_modules()
        if isinstance(m, OfficialSN)
    }


@pytest.mark.parametrize("version,using_bn", [("v1", True), ("v2", False)])
def test_official_imagenet_checkpoint_gives_every_layer_under_our_names(
    tmp_path, version, using_bn
):
    path = tmp_path / "resnet50sn.pth"
    logits = save_official_resnet(path, version, using_bn, seed=1)
    out = tmp_path / "out"
    visualize(out, path)
    run = json.loads((out / "sn_shares.json").read_text())["runs"][0]
    assert run["kind"] == "ImageNet SN checkpoint (official layout)"
    assert run["iteration"] is None
    assert list(run["parts"]) == ["stem", "res2", "res3", "res4", "res5"]
    layers = {layer["name"]: layer for layer in run["layers"]}
    assert len(layers) == len(logits) == (53 if version == "v1" else 50)
    assert_shares(layers["stem.conv1.norm"], expected_shares(logits["sn1"]))
    last_of_res4 = "res4.5.conv3.norm" if version == "v1" else "res4.5.norm3"
    assert_shares(layers[last_of_res4], expected_shares(logits["layer3.5.sn3"]))
    if version == "v1":
        shortcut = logits["layer2.0.downsample.1"]
        assert_shares(layers["res3.0.shortcut.norm"], expected_shares(shortcut))
    else:
        assert_shares(layers["norm_out"], expected_shares(logits["sn_out"]))
        assert layers["norm_out"]["part"] == "res5"
    found = sorted(tuple(layer["mean"].values()) for layer in run["layers"])
    expected = sorted(tuple(softmax(m).values()) for m, _ in logits.values())
    assert sum(found, ()) == pytest.approx(sum(expected, ()), abs=1e-6)
    assert all(layer["using_bn"] is using_bn for layer in run["layers"])
    assert figure_size(out / "sn_shares.png", len(layers)) == (True, 300)


def test_official_ssn_checkpoint_gives_each_layers_choice_and_fixed_flags(tmp_path, capsys):
    """tools/visualize_sn.py on a released ResNet-50 v1 + SSN file (official layout)."""
    torch.manual_seed(4)
    model = OfficialResNet("v1", stem=2, planes=1, sparse=True, radius=0.5)
    path = tmp_path / "resnet50v1_ssn.pth"
    save_official(model, path)
    tool = load_script("tools/visualize_sn.py").main
    assert run_tool(tool, [str(path), "--output", str(tmp_path / "out")]) == 0
    run = json.loads((tmp_path / "out/sn_shares.json").read_text())["runs"][0]
    assert run["kind"] == "ImageNet SSN checkpoint (official layout)"
    modules = dict(model.named_modules())
    official = {
        dst[: -len(".mean_weight")]: modules[src[: -len(".mean_weight")]]
        for src, dst, _, _ in convert_official(read_checkpoint(str(path))).mapping
        if dst.endswith(".mean_weight")
    }
    assert [layer["name"] for layer in run["layers"]] == list(official)
    counts = {}  # of res5: mean IN/LN/BN, var IN/LN/BN, mean fixed, var fixed
    for layer in run["layers"]:
        want = official[layer["name"]]
        for stat, weights, fixed in zip(
            STATS, want.mix_weights(), (want.mean_fixed, want.var_fixed)
        ):
            expected = dict(zip(BRANCHES, weights.tolist()))
            assert layer[stat] == pytest.approx(expected, abs=1e-6)
            alone = [b for b in BRANCHES if expected[b] >= 1 - 1e-6]
            assert layer[f"{stat}_choice"] == (alone[0] if alone else None)
            assert layer[f"{stat}_fixed"] is bool(fixed)
            if layer["part"] == "res5":
                for b in BRANCHES:
                    counts[(stat, b)] = counts.get((stat, b), 0) + (alone == [b])
                counts[stat] = counts.get(stat, 0) + bool(fixed)
    row = [counts[(s, b)] for s in STATS for b in BRANCHES] + [counts[s] for s in STATS]
    assert f"| res5 | 10 | {' | '.join(map(str, row))} |" in capsys.readouterr().out


def layer_logits(state):
    """{layer: (mean logits, var logits)} of a state dict."""
    layers = [k[: -len(".mean_weight")] for k in state if k.endswith(".mean_weight")]
    return {
        n: (state[f"{n}.mean_weight"].tolist(), state[f"{n}.var_weight"].tolist()) for n in layers
    }


def test_two_checkpoints_give_per_layer_and_per_part_differences(tmp_path):
    """ImageNet initialisation against a detector fine-tuned from it, with an FPN of its own."""
    imagenet = tmp_path / "imagenet" / "model.pth"
    imagenet.parent.mkdir()
    save_official_resnet(imagenet, "v1", True, seed=2)
    state = convert_official(read_checkpoint(str(imagenet))).state  # our names, the same logits
    before = layer_logits(state)
    g = torch.Generator().manual_seed(3)
    state = {
        f"backbone.bottom_up.{k}": v + torch.randn(3, generator=g) if k.endswith("_weight") else v
        for k, v in state.items()
    }
    state["backbone.fpn_lateral2.norm.mean_weight"] = torch.tensor([0.0, 1.0, 2.0])
    state["backbone.fpn_lateral2.norm.var_weight"] = torch.tensor([2.0, 1.0, 0.0])
    after = layer_logits(state)
    finetuned = tmp_path / "detector" / "model.pth"
    finetuned.parent.mkdir()
    torch.save({"model": state, "iteration": 100}, finetuned)

    out = tmp_path / "out"
    visualize(out, imagenet, finetuned)
    rows = read_csv(out / "sn_shares.csv")
    assert len(rows) == 53 + 1 and rows[-1]["layer"] == "fpn_lateral2.norm"  # only in the second
    assert rows[-1]["imagenet/model.pth:mean_IN"] == rows[-1]["delta:mean_IN"] == ""
    res2 = []
    for row in rows[:-1]:
        a = expected_shares(before[row["layer"]])
        b = expected_shares(after["backbone.bottom_up." + row["layer"]])
        delta = {s: {x: b[s][x] - a[s][x] for x in BRANCHES} for s in ("mean", "var")}
        found = {s: {x: float(row[f"delta:{s}_{x}"]) for x in BRANCHES} for s in delta}
        assert_shares(found, delta)
        if row["part"] == "res2":
            res2.append(delta)
    difference = json.loads((out / "sn_shares.json").read_text())["difference"]
    assert list(difference) == ["stem", "res2", "res3", "res4", "res5"]  # parts of both runs
    mean_delta = {
        s: {x: sum(d[s][x] for d in res2) / len(res2) for x in BRANCHES} for s in ("mean", "var")
    }
    assert_shares(difference["res2"], mean_delta)
    assert figure_size(out / "sn_shares.png", 54) == (True, 540)  # two panels


def write_metrics(path, parts=("stem", "res2")):
    """A metrics.json as detectron2 writes it: a line per period, and an evaluation line."""
    lines = []
    for i, iteration in enumerate((19, 39, 59)):
        record = {"iteration": iteration, "total_loss": 1.0 / (i + 1), "lr": 0.02}
        for part in parts:
            for stat in ("mean", "var"):
                shares = softmax([0.1 * i, 0.0, -0.1 * i])
                record.update({f"sn/{part}/{stat}_{b}": shares[b] for b in BRANCHES})
        lines.append(json.dumps(record))
    lines.append(json.dumps({"iteration": 59, "bbox/AP": 1.5}))
    path.write_text("\n".join(lines) + "\n\n")
    return str(path)


def test_metrics_json_gives_the_training_figure_only(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.json")
    out = tmp_path / "out"
    visualize(out, metrics=metrics)
    assert [p.name for p in out.iterdir()] == ["sn_training.png"]
    assert_bars_drawn(out / "sn_training.png", (600, 270))  # one panel per part


@pytest.fixture
def ssn_checkpoint(tmp_path):
    """A detectron2 checkpoint of ``sparse_sn_model``: res3 has both layers' means fixed (IN and
    LN) and one variance (BN); the FPN layer nothing."""
    path = tmp_path / "ssn.pth"
    torch.save({"model": sparse_sn_model().state_dict(), "iteration": 99}, path)
    return path


def test_ssn_checkpoint_csv_gives_each_layers_choices_and_fixed_flags(tmp_path, ssn_checkpoint):
    visualize(tmp_path / "out", ssn_checkpoint)
    with open(tmp_path / "out/sn_shares.csv") as f:
        rows = list(csv.DictReader(f))
    got = [[r[f"ssn.pth:{c}"] for c in ("mean_choice", "var_choice", "fixed")] for r in rows]
    assert got == [["IN", "BN", "mean+var"], ["LN", "", "mean"], ["", "", "none"]]
    assert float(rows[0]["ssn.pth:mean_IN"]) == 1.0 and float(rows[0]["ssn.pth:mean_LN"]) == 0.0


def test_ssn_checkpoint_markdown_counts_the_layers_that_chose_each_statistic(
    tmp_path, ssn_checkpoint
):
    visualize(tmp_path / "out", ssn_checkpoint)
    markdown = (tmp_path / "out/sn_shares.md").read_text()
    assert "| mean fixed | var fixed |" in markdown and "from iteration" not in markdown
    assert "| res3 | 2 | 1 | 1 | 0 | 0 | 0 | 1 | 2 | 1 |" in markdown
    assert "| fpn | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in markdown


def test_ssn_checkpoint_json_gives_each_layers_choice_and_the_part_counts(tmp_path, ssn_checkpoint):
    visualize(tmp_path / "out", ssn_checkpoint)
    (run,) = json.loads((tmp_path / "out/sn_shares.json").read_text())["runs"]
    first = run["layers"][0]
    assert (first["mean_choice"], first["var_choice"], first["mean_fixed"]) == ("IN", "BN", True)
    assert run["parts"]["res3"]["ssn"]["var_choice"] == {"IN": 0, "LN": 0, "BN": 1}
    assert "fixed_at" not in run


def test_ssn_metrics_give_the_iteration_from_which_each_part_was_all_fixed(
    tmp_path, ssn_checkpoint
):
    scalars = share_scalars(model_shares(sparse_sn_model()))
    records = [
        {"iteration": 19, **scalars, "sn/res3/fixed": 0.5},
        {"iteration": 39, **scalars, "sn/res3/fixed": 1.0},
    ]
    metrics = tmp_path / "metrics.json"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    visualize(tmp_path / "out", ssn_checkpoint, metrics=metrics)
    markdown = (tmp_path / "out/sn_shares.md").read_text()
    assert "| var fixed | all fixed from iteration |" in markdown
    assert "| res3 | 2 | 1 | 1 | 0 | 0 | 0 | 1 | 2 | 1 | 39 |" in markdown
    assert "| fpn | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | not yet |" in markdown
    run = json.loads((tmp_path / "out/sn_shares.json").read_text())["runs"][0]
    assert run["fixed_at"] == {"res3": 39, "fpn": None}


class RunsCode:
    """Unpickling this object creates ``marker`` (a file that runs code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    "case", ["no SN layer", "not a checkpoint", "runs code", "metrics without SN", "one bad of two"]
)
def test_bad_input_is_an_input_error_and_writes_nothing(tmp_path, detector_checkpoint, case):
    bad = tmp_path / "bad.pth"
    marker = tmp_path / "code_ran"
    args = [str(bad)]
    if case == "no SN layer":
        torch.save({"model": nn.Conv2d(3, 4, 1).state_dict(), "iteration": 1}, bad)
        message = "has no SN layer"
    elif case == "not a checkpoint":
        bad.write_text("iteration,loss\n1,0.5\n")
        message = "Cannot read checkpoint"
    elif case == "runs code":
        with open(bad, "wb") as f:
            pickle.dump({"model": {"w": RunsCode(marker)}}, f)
        message = "Refusing to read checkpoint"
    elif case == "metrics without SN":
        bad.write_text(json.dumps({"iteration": 19, "total_loss": 1.0}) + "\n")
        args = [detector_checkpoint, "--metrics", str(bad)]
        message = "has no SN shares"
    else:
        bad.write_text("not a checkpoint")
        args = [detector_checkpoint, str(bad)]
        message = "Cannot read checkpoint"
    out = tmp_path / "out"
    metrics = args[2] if "--metrics" in args else None
    with pytest.raises((AnalysisError, CheckpointError), match=message):  # exit status 2
        visualize(out, *args[:1] if metrics else args, metrics=metrics)
    assert not out.exists() and not marker.exists()


def test_tool_runs_on_a_detector_with_frozen_sn_stages(tmp_path):
    """The smoke model with FREEZE_AT 2, saved by detectron2's checkpointer, through the tool as
    a user runs it: the frozen stem and res2 are in the figure and tables."""
    torch.manual_seed(0)
    model = build_model(load_config(SMOKE, "MODEL.BACKBONE.FREEZE_AT", "2"))
    layers = list(named_switch_norms(model))
    frozen = {n for n, m in layers if isinstance(m, FrozenSwitchNorm2d)}
    assert frozen and all(".stem." in n or ".res2." in n for n in frozen)
    with torch.no_grad():
        for _, m in layers:
            m.mean_weight.normal_()
            m.var_weight.normal_()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final", iteration=5)
    out = tmp_path / "figures"
    proc = subprocess.run(
        [sys.executable, str(TOOL), str(tmp_path / "model_final.pth"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| stem | 1 |" in proc.stdout and f"wrote {out / 'sn_shares.png'}" in proc.stdout
    run = json.loads((out / "sn_shares.json").read_text())["runs"][0]
    assert run["iteration"] == 5
    assert list(run["parts"])[:2] == ["stem", "res2"]
    assert {"fpn", "box_head", "mask_head"} <= set(run["parts"])
    found = {layer["name"]: layer for layer in run["layers"]}
    assert set(found) == {n for n, _ in layers}
    for name, m in layers:
        assert_shares(found[name], expected_shares((m.mean_weight.tolist(), m.var_weight.tolist())))
    assert figure_size(out / "sn_shares.png", len(layers)) == (True, 300)


def test_two_checkpoints_without_a_common_sn_layer_are_refused_saying_why(tmp_path):
    torch.save(
        {
            "model": tiny_detector(
                random_logits([(n, 3 if bn else 2) for n, _, bn in DETECTOR], seed=4)
            ).state_dict()
        },
        tmp_path / "a.pth",
    )
    other = {
        "head.extra.norm.mean_weight": torch.zeros(3),
        "head.extra.norm.var_weight": torch.zeros(3),
    }
    torch.save({"model": other}, tmp_path / "b.pth")
    with pytest.raises(AnalysisError, match="no SN layer in common.*different models"):
        visualize(tmp_path / "out", tmp_path / "a.pth", tmp_path / "b.pth")
    assert not (tmp_path / "out").exists()


def test_a_write_that_fails_leaves_no_file_written(tmp_path, detector_checkpoint):
    out = tmp_path / "out"
    (out / "sn_shares.csv").mkdir(parents=True)  # the second file cannot be written
    with pytest.raises(IsADirectoryError):  # an OSError: exit status 1
        visualize(out, detector_checkpoint)
    assert [p.name for p in out.iterdir()] == ["sn_shares.csv"]


def test_a_write_that_fails_keeps_the_files_of_the_previous_run(tmp_path, detector_checkpoint):
    out = tmp_path / "out"
    visualize(out, detector_checkpoint)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "sn_training.png").mkdir()
    with pytest.raises(IsADirectoryError):
        visualize(out, detector_checkpoint, metrics=write_metrics(tmp_path / "metrics.json"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"iteration": null, "sn/stem/mean_IN": 0.3}', "line 1: iteration is null, not a whole"),
        ('{"iteration": "abc", "sn/stem/mean_IN": 0.3}', 'line 1: iteration is "abc"'),
        (
            '{"iteration": 19, "sn/stem/mean_IN": "0.3"}',
            'sn/stem/mean_IN of iteration 19 is "0.3", not a number',
        ),
        ("[1, 2", "line 1 is not JSON"),
    ],
)
def test_a_metrics_json_that_cannot_be_read_is_refused_naming_the_file(tmp_path, line, message):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(line + "\n")
    with pytest.raises(AnalysisError, match=message) as error:
        visualize(tmp_path / "out", metrics=metrics)
    assert str(metrics) in str(error.value)


def test_a_binary_metrics_file_is_refused_naming_the_file(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(AnalysisError, match=f"{metrics} is not text"):
        visualize(tmp_path / "out", metrics=metrics)


def test_logits_stored_as_strings_are_refused_naming_the_file_and_key(tmp_path):
    path = tmp_path / "strings.pth"
    state = {"backbone.res2.0.norm.mean_weight": "0 1 2", "backbone.res2.0.norm.var_weight": "x"}
    torch.save({"model": state}, path)
    with pytest.raises(AnalysisError, match=f"{path}: backbone.res2.0.norm.mean_weight is a str"):
        visualize(tmp_path / "out", path)
