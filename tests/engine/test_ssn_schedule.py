"""SSNSchedule: the radius follows iter / max_iter before each step, and fixed logits are held
after it."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sn_detection.engine import SSNSchedule
from sn_detection.layers import SparseSwitchNorm2d
from sn_detection.utils.cli import InputError


def _hooked(max_iter=8):
    model = nn.Sequential(SparseSwitchNorm2d(4), SparseSwitchNorm2d(4))
    hook = SSNSchedule(model, max_iter)
    hook.trainer = SimpleNamespace(iter=0)
    return model, hook


@pytest.mark.parametrize("iteration, radius", [(0, 0.0), (2, 0.25), (7, 0.875)])
def test_radius_is_iter_over_max_iter_before_each_step(iteration, radius):
    model, hook = _hooked()
    hook.trainer.iter = iteration  # a resumed run starts at any iteration
    hook.before_step()
    assert [layer.radius.tolist() for layer in model] == [[radius], [radius]]


def test_after_step_holds_the_logits_of_fixed_layers():
    model, hook = _hooked()
    layer = model[0]
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([2.0, 0.0, 0.0]))  # sparsemax: one-hot
    layer(torch.randn(2, 4, 3, 3))
    with torch.no_grad():
        layer.mean_weight.add_(0.3)  # what weight decay or momentum would do
    hook.after_step()
    assert layer.mean_weight.tolist() == [1.0, 0.0, 0.0]


def test_max_iter_must_be_positive():
    with pytest.raises(InputError, match="max_iter must be positive"):
        SSNSchedule(nn.Sequential(), 0)
