"""The learned SN shares in detectron2's EventStorage: when they are written, what they are, and
what tools/train_net.py logs (metrics.json, console) with the precise pass enabled."""

import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from sn_detection.engine import SNImportanceWriter
from sn_detection.engine import hooks as sn_hooks
from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d
from sn_detection.testing import CONFIGS, REPO

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"


class _Trainer:
    def __init__(self, storage, max_iter):
        self.storage, self.max_iter, self.iter = storage, max_iter, 0


def _model():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.stem = nn.Sequential(FrozenSwitchNorm2d(4))
    model.backbone.res2 = nn.Sequential(SwitchNorm2d(4), SwitchNorm2d(4, using_bn=False))
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("mean_weight", "var_weight")):
                t.normal_()
    return model


def test_shares_are_written_at_the_writers_period_and_last_iteration_only(monkeypatch):
    calls = []
    original = sn_hooks.importances_from_logits
    monkeypatch.setattr(
        sn_hooks, "importances_from_logits", lambda *a: calls.append(1) or original(*a)
    )
    hook = SNImportanceWriter(_model(), period=20)
    with EventStorage() as storage:
        hook.trainer = _Trainer(storage, max_iter=45)
        for it in range(45):
            storage.iter = hook.trainer.iter = it
            hook.after_step()
    written = [it for _, it in storage.history("sn/res2/mean_BN").values()]
    assert written == [19, 39, 44]
    assert len(calls) == 3  # the logits are read on those iterations only


def test_written_shares_are_the_part_means_of_the_softmax_of_the_logits():
    model = _model()
    hook = SNImportanceWriter(model)
    with EventStorage() as storage:
        hook.trainer = _Trainer(storage, max_iter=1)
        hook.after_step()
    latest = {k: v for k, (v, _) in storage.latest().items()}
    frozen = model.backbone.stem[0]
    sn, no_bn = model.backbone.res2
    for stat in ("mean", "var"):
        stem = torch.softmax(getattr(frozen, f"{stat}_weight"), 0).tolist()
        a = torch.softmax(getattr(sn, f"{stat}_weight").detach(), 0).tolist()
        b = torch.softmax(getattr(no_bn, f"{stat}_weight").detach(), 0).tolist() + [0.0]
        for i, branch in enumerate(("IN", "LN", "BN")):
            assert latest[f"sn/stem/{stat}_{branch}"] == pytest.approx(stem[i], abs=1e-6)
            assert latest[f"sn/res2/{stat}_{branch}"] == pytest.approx((a[i] + b[i]) / 2, abs=1e-6)
        whole = (stem[2] + a[2] + b[2]) / 3
        assert latest[f"[metric]sn/BN_{stat}"] == pytest.approx(whole, abs=1e-6)


def _part(name):
    """The part of a layer of the smoke model, written out here independently of the library."""
    for pattern, part in (
        (r"\.(stem)\.", None), (r"\.(res\d)\.", None), (r"backbone\.fpn_", "fpn"),
        (r"roi_heads\.box_head\.", "box_head"), (r"roi_heads\.mask_head\.", "mask_head"),
    ):  # fmt: skip
        m = re.search(pattern, name)
        if m:
            return part or m.group(1)
    raise AssertionError(f"unexpected SN layer {name}")


def test_train_net_logs_the_shares_and_runs_the_precise_pass_before_saving(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "tools/train_net.py"), "--config-file", str(SMOKE),
            "MODEL.BACKBONE.FREEZE_AT", "2",  # stem and res2 frozen: they must be logged too
            "TEST.PRECISE_BN.ENABLED", "True", "TEST.PRECISE_BN.NUM_ITER", "2",
            "OUTPUT_DIR", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, DETECTRON2_DATASETS=str(REPO / "datasets")),
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Running precise SN/BN statistics for 2 iterations" in log
    assert re.search(r"iter: 5 .*\[metric\]sn/BN_mean: 0\.\d+", log)  # the console writer

    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last = [r for r in records if "sn/res3/mean_BN" in r][-1]
    assert last["iteration"] == 5  # the last training iteration (MAX_ITER 6)

    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    shares = defaultdict(list)
    for key in state:
        if key.endswith(".mean_weight"):
            layer = key[: -len(".mean_weight")]
            for stat in ("mean", "var"):
                shares[(_part(layer), stat)].append(torch.softmax(state[f"{layer}.{stat}_weight"], 0))
            if f"{layer}.num_batches" in state:  # trainable: recomputed by the precise pass
                assert int(state[f"{layer}.num_batches"]) == 2, layer
    parts = {part for part, _ in shares}
    assert parts == {"stem", "res2", "res3", "res4", "res5", "fpn", "box_head", "mask_head"}
    for (part, stat), values in shares.items():
        expected = torch.stack(values).mean(0).tolist()
        for i, branch in enumerate(("IN", "LN", "BN")):
            logged = last[f"sn/{part}/{stat}_{branch}"]
            assert logged == pytest.approx(expected[i], abs=1e-6), (part, stat, branch)
