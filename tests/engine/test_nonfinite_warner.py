"""NonFiniteBatchWarner: an SN layer that skipped batches with non-finite statistics is reported
once, with its name and count, from one read of the whole model's counters per check."""

import logging

import torch
from detectron2.utils.events import EventStorage
from torch import nn

from sn_detection.engine import NonFiniteBatchWarner
from sn_detection.engine import hooks as sn_hooks
from sn_detection.layers import SwitchNorm2d

NAN = torch.full((2, 3, 4, 4), float("nan"))


class _Trainer:
    def __init__(self, max_iter):
        self.max_iter, self.iter = max_iter, 0


def _model():
    model = nn.Module()
    model.first, model.second = SwitchNorm2d(3), SwitchNorm2d(3)
    return model.train()


def _steps(hook, model, batches, start=0):
    """Runs ``batches`` (one per iteration: the inputs of first and second) through the hook."""
    for it, (x, y) in enumerate(batches, start):
        model.first(x)
        model.second(y)
        hook.trainer.iter = it
        hook.after_step()


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_layer_is_reported_once_with_its_name_and_count(caplog):
    model, fine = _model(), torch.randn(2, 3, 4, 4)
    hook = NonFiniteBatchWarner(model, period=2)
    hook.trainer = _Trainer(max_iter=8)
    with EventStorage(), caplog.at_level(logging.WARNING, logger="sn_detection"):
        _steps(hook, model, [(NAN, fine), (NAN, fine), (NAN, fine), (fine, fine)])
    assert _warnings(caplog) == [
        "SN layer first: 2 training batch(es) with non-finite statistics by iteration 2; they did "
        "not update its running statistics (look for NaN/inf in the inputs or a diverging loss)"
    ]


def test_each_layer_is_reported_when_its_count_first_becomes_non_zero(caplog):
    model, fine = _model(), torch.randn(2, 3, 4, 4)
    hook = NonFiniteBatchWarner(model, period=1)
    hook.trainer = _Trainer(max_iter=3)
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        _steps(hook, model, [(NAN, fine), (fine, NAN), (NAN, NAN)])
    warnings = _warnings(caplog)
    assert [w.split(":")[0] for w in warnings] == ["SN layer first", "SN layer second"]
    assert "by iteration 2" in warnings[1]


def test_counters_are_read_once_per_check_for_the_whole_model(monkeypatch):
    reads = []
    original = sn_hooks.nonfinite_batches
    monkeypatch.setattr(sn_hooks, "nonfinite_batches", lambda m: reads.append(1) or original(m))
    model, fine = _model(), torch.randn(2, 3, 4, 4)
    hook = NonFiniteBatchWarner(model, period=20)
    hook.trainer = _Trainer(max_iter=45)
    _steps(hook, model, [(fine, fine)] * 45)
    assert len(reads) == 3  # iterations 20, 40 and the last
