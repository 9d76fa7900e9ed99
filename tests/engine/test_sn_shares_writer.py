"""The learned SN shares in detectron2's EventStorage: when they are written and what they are
(tests/tools/test_train_net.py checks what a training run logs)."""

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch import nn

from sn_detection.engine import SNSharesWriter
from sn_detection.engine import hooks as sn_hooks
from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d


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
    original = sn_hooks.layer_shares
    monkeypatch.setattr(sn_hooks, "layer_shares", lambda *a: calls.append(1) or original(*a))
    hook = SNSharesWriter(_model(), period=20)
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
    hook = SNSharesWriter(model)
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


def test_the_fixed_fraction_of_sparse_sn_layers_is_written():
    from sn_detection.analysis import layer_shares, share_scalars
    from sn_detection.layers import named_switch_norms
    from sn_detection.testing import sparse_sn_model

    model = sparse_sn_model()
    hook = SNSharesWriter(model, period=1)
    with EventStorage() as storage:
        hook.trainer = _Trainer(storage, max_iter=1)
        hook.after_step()
    written = {k: v for k, (v, _) in storage.latest().items() if k.endswith("/fixed")}
    expected = {
        k: v
        for k, v in share_scalars(layer_shares(named_switch_norms(model))).items()
        if k.endswith("/fixed")
    }
    assert written and written == pytest.approx(expected)
    assert any(0 < v for v in written.values())
