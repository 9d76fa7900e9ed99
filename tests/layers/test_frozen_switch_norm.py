"""FrozenSwitchNorm2d and the converter."""

import torch
from torch import nn

from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d
from sn_detection.layers.switch_norm import BRANCHES
from sn_detection.testing import random_sn


def _trained_sn(channels, using_bn=True):
    m = random_sn(channels, using_bn, torch.float32, seed=channels)
    for _ in range(3):
        m(torch.randn(4, channels, 5, 5) * 2 + 1)
    return m


def test_converter_replaces_nested_sn_and_keeps_other_modules():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), _trained_sn(4), nn.Sequential(nn.Conv2d(4, 5, 1), _trained_sn(5, False))
    )
    conv = model[0]
    converted = FrozenSwitchNorm2d.convert_frozen_switchnorm(model)
    assert converted is model and model[0] is conv
    assert isinstance(model[1], FrozenSwitchNorm2d) and model[1].using_bn
    assert isinstance(model[2][1], FrozenSwitchNorm2d) and not model[2][1].using_bn
    assert not any(isinstance(m, SwitchNorm2d) for m in model.modules())


def test_frozen_equals_sn_in_eval_mode_even_in_train_mode():
    sn = _trained_sn(6).eval()
    frozen = FrozenSwitchNorm2d.convert_frozen_switchnorm(_copy(sn)).train()
    x = torch.randn(3, 6, 7, 7)
    torch.testing.assert_close(frozen(x), sn(x))


def test_frozen_has_no_parameters_passes_input_gradient_and_keeps_stats():
    frozen = FrozenSwitchNorm2d.convert_frozen_switchnorm(_trained_sn(4)).train()
    assert list(frozen.parameters()) == []
    stats = frozen.running_mean.clone()
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    frozen(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(frozen.running_mean, stats)


def test_frozen_state_dict_matches_sn_state_dict():
    sn = _trained_sn(4)
    frozen = FrozenSwitchNorm2d(4)
    frozen.load_state_dict(sn.state_dict())  # strict: SN's batch count is accepted and ignored
    sn_state = sn.state_dict()
    assert set(sn_state) - set(frozen.state_dict()) == {"num_batches"}
    for k, v in frozen.state_dict().items():
        assert torch.equal(sn_state[k], v)


def test_frozen_layer_reports_the_shares_it_was_frozen_with():
    sn = _trained_sn(4)
    frozen = FrozenSwitchNorm2d.convert_frozen_switchnorm(_copy(sn))
    assert frozen.shares() == sn.shares()
    assert set(frozen.shares()["var"]) == set(BRANCHES)


def _copy(m):
    import copy

    return copy.deepcopy(m)
