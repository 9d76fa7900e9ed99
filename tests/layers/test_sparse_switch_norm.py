"""Sparse SN: the layer against a plain reference, its fixing of one-hot weights on the device,
checkpoints, the frozen and scripted forms, and SyncSSN across processes."""

import io
import math
import warnings

import pytest
import torch
import torch.distributed as dist

from sn_detection.layers import (
    FrozenSwitchNorm2d,
    SparseSwitchNorm2d,
    SwitchNorm2d,
    SyncSparseSwitchNorm2d,
    SyncSwitchNorm2d,
    hold_fixed_logits,
    set_ssn_radius,
)
from sn_detection.testing import (
    gradcheck_layer,
    run_distributed,
    sparsestmax_reference,
    switch_norm_reference,
)

C = 4


def _ssn(radius=0.3, seed=0, cls=SparseSwitchNorm2d, using_bn=True):
    """An SSN layer (float64, momentum 0.1) with random parameters and running statistics."""
    torch.manual_seed(seed)
    m = cls(C, momentum=0.1, using_bn=using_bn).double()
    with torch.no_grad():
        for p in (m.weight, m.bias, m.mean_weight, m.var_weight):
            p.normal_()
        if using_bn:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    set_ssn_radius(m, radius)
    return m


def _x(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, 5, 6, generator=g, dtype=torch.float64) * 2 + 1


def _reference_logits(m, radius):
    """Logits whose softmax is the paper's sparsestmax weights (log 0 = -inf: share 0)."""
    return [
        torch.tensor(sparsestmax_reference(logits.tolist(), radius), dtype=torch.float64).log()
        for logits in (m.mean_weight.detach(), m.var_weight.detach())
    ]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("radius", [0.0, 0.3, 0.7, 1.0])
def test_output_equals_sn_reference_with_the_papers_sparsestmax_weights(training, radius):
    m = _ssn(radius).train(training)
    x = _x()
    stats = [m.running_mean.clone(), m.running_var.clone()]
    want = switch_norm_reference(
        x,
        m.weight,
        m.bias,
        *_reference_logits(m, radius),
        *stats,
        training=training,
        momentum=m.momentum,
        eps=m.eps,
    )
    torch.testing.assert_close(m(x), want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m.running_mean, stats[0], rtol=1e-12, atol=1e-12)


def test_gradcheck_in_float64_away_from_kinks():
    m = _ssn(radius=0.2, seed=3)
    with torch.no_grad():  # sparsemax inside the simplex, pushed onto the circle of radius 0.2
        m.mean_weight.copy_(torch.tensor([0.1, 0.0, -0.05]))
        m.var_weight.copy_(torch.tensor([-0.08, 0.02, 0.1]))
    x = _x(2).requires_grad_()
    assert gradcheck_layer(m, x)
    assert not m.mean_fixed.item() and not m.var_fixed.item()


def test_shares_are_the_sparsestmax_weights():
    m = _ssn(radius=0.5)
    want = sparsestmax_reference(m.mean_weight.tolist(), 0.5)
    assert list(m.shares()["mean"].values()) == pytest.approx(want, abs=1e-6)  # float32


def test_training_forward_fixes_a_one_hot_vector_and_cuts_its_logits_gradient():
    m = _ssn(radius=1.0)  # every vector one-hot
    m(_x()).square().sum().backward()
    assert m.mean_fixed.tolist() == [1] and m.var_fixed.tolist() == [1]
    assert torch.equal(m.mean_weight.grad, torch.zeros(3))
    assert torch.equal(m.var_weight.grad, torch.zeros(3))


def test_a_fixed_vector_keeps_its_choice_when_logits_and_radius_change():
    m = _ssn(radius=1.0)
    m(_x())
    choice = m.mix_weights()
    with torch.no_grad():
        m.mean_weight.copy_(-m.mean_weight)
        m.var_weight.copy_(-m.var_weight)
    set_ssn_radius(m, 0.0)
    for got, want in zip(m.mix_weights(), choice):
        assert torch.equal(got, want) and sorted(got.tolist()) == [0.0, 0.0, 1.0]


def test_eval_forward_does_not_fix():
    m = _ssn(radius=1.0).eval()
    m(_x())
    assert m.mean_fixed.tolist() == [0] and m.var_fixed.tolist() == [0]


def test_training_step_takes_no_host_value(monkeypatch):
    m = _ssn(radius=0.9)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = _x()

    def refuse(*args):
        raise AssertionError("a host value was read in an SSN training step")

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for step in range(2):
        set_ssn_radius(m, 0.9 + 0.1 * step)
        m(x).square().sum().backward()
        opt.step()
        hold_fixed_logits(m)
    monkeypatch.undo()
    assert m.mean_fixed.item() == 1


def _train(m, radii, seed=0):
    """SGD with momentum and weight decay on a fixed random objective, the radius per step."""
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    x = _x(4)
    target = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for radius in radii:
        set_ssn_radius(m, radius)
        opt.zero_grad()
        (m(x) * target).sum().backward()
        opt.step()
        hold_fixed_logits(m)


def test_radius_rising_to_one_ends_fixed_one_hot_in_mean_and_variance():
    m = _ssn(radius=0.0)
    _train(m, [i / 8 for i in range(9)])
    assert m.mean_fixed.tolist() == [1] and m.var_fixed.tolist() == [1]
    for kind in ("mean", "var"):
        assert sorted(m.shares()[kind].values()) == [0.0, 0.0, 1.0]


def test_hold_fixed_logits_keeps_fixed_logits_through_momentum_and_weight_decay():
    m = _ssn(radius=0.0)
    _train(m, [i / 8 for i in range(9)])
    logits = [m.mean_weight.detach().clone(), m.var_weight.detach().clone()]
    assert sorted(logits[0].tolist()) == [0.0, 0.0, 1.0]
    _train(m, [1.0] * 3, seed=1)
    assert torch.equal(m.mean_weight, logits[0]) and torch.equal(m.var_weight, logits[1])


def test_without_hold_weight_decay_moves_fixed_logits():
    """The counterpart of the test above: the optimizer does change them."""
    m = _ssn(radius=1.0)
    m(_x())  # fixes
    hold_fixed_logits(m)
    before = m.mean_weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.2, weight_decay=0.1)
    m(_x()).sum().backward()
    opt.step()
    assert not torch.equal(m.mean_weight, before)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_set_ssn_radius_refuses_values_outside_zero_one(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_ssn_radius(_ssn(), bad)


def test_set_ssn_radius_refuses_a_tensor():
    with pytest.raises(TypeError, match="Python number"):
        set_ssn_radius(_ssn(), torch.tensor(0.5))


def test_set_ssn_radius_counts_layers_and_leaves_sn_alone():
    model = torch.nn.Sequential(_ssn(), SwitchNorm2d(C), _ssn(cls=SyncSparseSwitchNorm2d))
    assert set_ssn_radius(model, 0.25) == 2
    assert model[0].radius.tolist() == [0.25] and model[2].radius.tolist() == [0.25]


def _round_trip(m, into):
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    buffer.seek(0)
    into.load_state_dict(torch.load(buffer))
    return into


def test_state_dict_round_trip_restores_radius_fixed_flags_and_choice():
    m = _ssn(radius=0.0)
    _train(m, [i / 8 for i in range(9)])
    set_ssn_radius(m, 0.625)
    loaded = _round_trip(m, SparseSwitchNorm2d(C).double())
    assert loaded.radius.tolist() == [0.625]
    assert loaded.mean_fixed.tolist() == [1] and loaded.var_fixed.tolist() == [1]
    for got, want in zip(loaded.mix_weights(), m.mix_weights()):
        assert torch.equal(got, want)


def test_state_dict_has_the_official_ssn_buffers():
    sd = SparseSwitchNorm2d(C).state_dict()
    assert sd["radius"].shape == (1,) and sd["radius"].dtype == torch.float32
    assert sd["mean_fixed"].dtype == torch.long and sd["var_fixed"].shape == (1,)
    assert "choice" not in sd


def test_sn_checkpoint_loads_into_ssn_with_a_warning_and_not_fixed():
    sn = SwitchNorm2d(C)
    ssn = SparseSwitchNorm2d(C)
    set_ssn_radius(ssn, 0.4)
    with pytest.warns(UserWarning, match="no radius, mean_fixed, var_fixed"):
        ssn.load_state_dict(sn.state_dict())
    assert ssn.radius.tolist() == [pytest.approx(0.4)] and ssn.mean_fixed.tolist() == [0]


def test_an_sn_state_into_many_ssn_layers_warns_once():
    ssn = torch.nn.Sequential(*(SparseSwitchNorm2d(C) for _ in range(3)))
    sn = torch.nn.Sequential(*(SwitchNorm2d(C) for _ in range(3)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: each text once per place
        ssn.load_state_dict(sn.state_dict())
    assert [str(w.message).count("mean_fixed") for w in caught] == [1]


@pytest.mark.parametrize("radius", [1.0, 0.3])
def test_frozen_conversion_keeps_the_weights_exactly(radius):
    m = _ssn(radius)
    m(_x())  # radius 1: fixes, one-hot
    want = m.eval()(_x(2, seed=5))
    frozen = FrozenSwitchNorm2d.convert_frozen_switchnorm(m)
    assert type(frozen) is FrozenSwitchNorm2d
    for got, ours in zip(frozen.mix_weights(), m.mix_weights()):
        torch.testing.assert_close(got, ours, rtol=1e-15, atol=0.0)
    torch.testing.assert_close(frozen(_x(2, seed=5)), want, rtol=1e-12, atol=1e-12)


def test_frozen_one_hot_layer_has_exactly_one_hot_shares_and_scripts():
    m = _ssn(radius=1.0).float()
    m(_x().float())
    frozen = FrozenSwitchNorm2d.convert_frozen_switchnorm(m)
    for kind in ("mean", "var"):
        assert sorted(frozen.shares()[kind].values()) == [0.0, 0.0, 1.0]
    x = _x(2).float()
    scripted = torch.jit.script(frozen)
    torch.testing.assert_close(scripted(x), frozen(x), rtol=1e-4, atol=1e-4)


def test_scripted_ssn_layer_equals_eager_in_eval_mode():
    m = _ssn(radius=0.4).eval()
    scripted = torch.jit.script(m)
    x = _x(2)
    torch.testing.assert_close(scripted(x), m(x), rtol=1e-9, atol=1e-9)


def test_revert_sync_gives_an_ssn_layer_with_the_same_state():
    sync = _ssn(radius=1.0, cls=SyncSparseSwitchNorm2d)
    sync(_x())
    plain = SyncSwitchNorm2d.revert_sync_switchnorm(sync)
    assert type(plain) is SparseSwitchNorm2d
    assert plain.mean_fixed.tolist() == [1] and plain.radius.tolist() == [1.0]
    x = _x(2)
    torch.testing.assert_close(plain.eval()(x), sync.eval()(x), rtol=0, atol=0)


def _sync_worker(rank, world_size):
    m = _ssn(radius=0.6, cls=SyncSparseSwitchNorm2d)
    x = _x(4).chunk(world_size)[rank].clone().requires_grad_()
    y = m(x)
    y.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in m.named_parameters()}
    for g in grads.values():
        dist.all_reduce(g)
    return {"y": y.detach(), "dx": x.grad, "grads": grads, "buffers": dict(m.named_buffers())}


def test_sync_ssn_on_two_processes_equals_ssn_on_the_whole_batch():
    ranks = run_distributed(_sync_worker, 2, timeout=120)
    m = _ssn(radius=0.6)
    x = _x(4).requires_grad_()
    y = m(x)
    y.square().sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), x.grad)
    for name, p in m.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name], p.grad)
    for name, b in m.named_buffers():
        torch.testing.assert_close(ranks[1]["buffers"][name], b)


def _trained_ssn_state():
    m = _ssn(radius=0.0)
    _train(m, [i / 8 for i in range(9)])
    return m.eval(), m.state_dict()


def test_frozen_layer_loads_an_ssn_state_as_its_one_hot_weights_silently(recwarn):
    m, state = _trained_ssn_state()
    frozen = FrozenSwitchNorm2d(C).double()
    frozen.load_state_dict(state)
    assert not [w for w in recwarn if "sparse SN" in str(w.message)]
    for kind in ("mean", "var"):
        assert sorted(frozen.shares()[kind].values()) == [0.0, 0.0, 1.0]
    torch.testing.assert_close(frozen(_x(2)), m(_x(2)), rtol=1e-12, atol=1e-12)


def test_sn_layer_loads_an_ssn_state_with_a_warning_keeping_the_choice():
    m, state = _trained_ssn_state()
    sn = SwitchNorm2d(C).double().eval()
    with pytest.warns(UserWarning, match="radius and fixed flags are dropped"):
        sn.load_state_dict(state)
    torch.testing.assert_close(sn(_x(2)), m(_x(2)), rtol=1e-12, atol=1e-12)
