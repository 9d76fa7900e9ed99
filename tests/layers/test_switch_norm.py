"""SwitchNorm2d against the plain official-semantics reference, and its edge cases."""

import copy

import pytest
import torch
from torch import nn

from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, kernels, nonfinite_batches
from sn_detection.testing import gradcheck_layer, random_sn, switch_norm_reference


def _reference(m, x, training):
    params = [
        p.detach().clone().requires_grad_() for p in (m.weight, m.bias, m.mean_weight, m.var_weight)
    ]
    rm = m.running_mean.clone() if m.using_bn else None
    rv = m.running_var.clone() if m.using_bn else None
    y = switch_norm_reference(x, *params, rm, rv, training=training, momentum=m.momentum, eps=m.eps)
    return y, params, rm, rv


@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference_forward_backward_and_running_stats(using_bn, training):
    m = random_sn(using_bn=using_bn).train(training)
    x = (torch.randn(3, 6, 5, 4, dtype=torch.float64) * 3 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y_ref, params_ref, rm, rv = _reference(m, x_ref, training)
    y = m(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    dy = torch.randn_like(y)
    params = [m.weight, m.bias, m.mean_weight, m.var_weight]
    grads = torch.autograd.grad(y, [x, *params], dy)
    grads_ref = torch.autograd.grad(y_ref, [x_ref, *params_ref], dy)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)
    if using_bn:
        torch.testing.assert_close(m.running_mean, rm)
        torch.testing.assert_close(m.running_var, rv)


def test_float32_matches_float64_reference():
    m = random_sn(channels=32, dtype=torch.float32)
    x = torch.randn(2, 32, 17, 13) * 2 + 5
    y_ref, *_ = _reference(copy.deepcopy(m).double(), x.double(), True)
    torch.testing.assert_close(m(x).double(), y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(using_bn, training):
    m = random_sn(channels=4, using_bn=using_bn).train(training)
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)

    assert gradcheck_layer(m, x)


def test_running_stats_start_at_zero_and_follow_pytorch_momentum():
    m = SwitchNorm2d(3, momentum=0.25)
    assert torch.equal(m.running_mean, torch.zeros(3))
    assert torch.equal(m.running_var, torch.zeros(3))
    x = torch.randn(4, 3, 5, 5)
    m(x)
    per_sample_mean = x.mean(dim=(2, 3))
    per_sample_var = x.var(dim=(2, 3))  # unbiased, official semantics
    batch_mean = per_sample_mean.mean(0)
    batch_var = (per_sample_var + per_sample_mean**2).mean(0) - batch_mean**2
    torch.testing.assert_close(m.running_mean, 0.25 * batch_mean)
    torch.testing.assert_close(m.running_var, 0.25 * batch_var)


def test_batch_average_mode_averages_all_batches_since_reset():
    m = SwitchNorm2d(3, using_moving_average=False)
    batches = [torch.randn(2, 3, 4, 4) * (i + 1) + i for i in range(3)]
    means = []
    for x in batches:
        m(x)
        means.append(x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(m.running_mean, torch.stack(means).mean(0))
    m.reset_running_stats()
    m(batches[0])
    torch.testing.assert_close(m.running_mean, means[0])


def test_eval_output_is_independent_of_eval_batch_size():
    m = random_sn(channels=8, dtype=torch.float32).eval()
    x = torch.randn(5, 8, 6, 6)
    together = m(x)
    alone = torch.cat([m(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 4, 1, 1), (1, 4, 3, 3), (1, 4, 1, 1), (3, 4, 1, 7)])
def test_degenerate_shapes_stay_finite(shape):
    m = SwitchNorm2d(4)
    x = torch.randn(*shape, requires_grad=True)
    y = m(x)
    y.pow(2).sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for p in m.parameters():
        assert torch.isfinite(p.grad).all()
    assert torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()


def test_single_spatial_element_has_zero_instance_variance():
    # with H*W = 1 the IN variance is 0 (NaN in the official code); with IN weight only, y = bias
    m = SwitchNorm2d(2, using_bn=False)
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([50.0, -50.0]))
        m.var_weight.copy_(torch.tensor([50.0, -50.0]))
        m.bias.copy_(torch.tensor([0.5, -0.5]))
    y = m(torch.randn(3, 2, 1, 1))
    # y = x * scale + shift with scale = 1 / sqrt(eps): float32 rounding of x * scale remains
    expected = torch.tensor([0.5, -0.5]).view(1, 2, 1, 1).expand(3, 2, 1, 1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)


def test_empty_batch_gives_empty_output_keeps_autograd_and_running_stats():
    m = random_sn(channels=4, dtype=torch.float32)
    before = (m.running_mean.clone(), m.running_var.clone())
    x = torch.zeros(0, 4, 5, 5, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in m.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])


def test_constant_input_gives_finite_output_and_zero_variance():
    # the official E[x^2] - E[x]^2 cancels to (possibly negative) rounding noise here
    m = SwitchNorm2d(3)
    x = torch.full((2, 3, 4, 4), 1234.567)
    y = m(x)
    assert torch.isfinite(y).all()
    assert torch.equal(m.running_var, torch.zeros(3))


@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 4, 0, 5), (3, 4, 5, 0)])
def test_input_without_elements_gives_empty_output_and_leaves_running_stats(shape):
    """N = 0 (no RoI) and H*W = 0 alike: one such batch must not poison the running statistics."""
    m = random_sn(channels=4, dtype=torch.float32)
    before = (m.running_mean.clone(), m.running_var.clone(), m.num_batches.clone())
    x = torch.zeros(shape, requires_grad=True)
    for fast in (True, False):
        with kernels.fast_kernels(fast):
            y = m(x)
            assert y.shape == shape
            y.sum().backward()
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])
    assert torch.equal(m.num_batches, before[2])
    m.eval()
    assert m(torch.zeros(shape)).shape == shape


@pytest.mark.parametrize("offset", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("fast", [True, False])
def test_float32_error_against_float64_is_of_group_norms_order(offset, fast):
    """A mean far above the spread (offset times it) must cost SN in float32 no more than it
    costs GroupNorm, in training and in eval mode (the official E[x^2] - E[x]^2 loses every digit
    at 1e4). momentum=1 makes the running statistics those of the batch, so that eval mode
    normalises the same data to outputs of the same size."""
    torch.manual_seed(0)
    x = offset + torch.randn(2, 4, 8, 8, dtype=torch.float64)
    sn64, sn32 = SwitchNorm2d(4, momentum=1.0).double(), SwitchNorm2d(4, momentum=1.0)
    with torch.no_grad():
        for m in (sn64, sn32):
            m.mean_weight.copy_(torch.tensor([0.3, -0.2, 0.5]))
            m.var_weight.copy_(torch.tensor([-0.1, 0.4, 0.2]))
    gn64, gn32 = nn.GroupNorm(2, 4).double(), nn.GroupNorm(2, 4)
    gn_error = (gn64(x) - gn32(x.float()).double()).abs().max().item()
    with kernels.fast_kernels(fast):
        for training in (True, False):
            sn64.train(training), sn32.train(training)
            error = (sn64(x) - sn32(x.float()).double()).abs().max().item()
            assert error <= 5 * gn_error + 1e-6, (training, error, gn_error)
    torch.testing.assert_close(sn32.running_var.double(), sn64.running_var, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_double_backward_is_refused_with_a_clear_error(fast, layout):
    m = random_sn(channels=3)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    with kernels.fast_kernels(fast):
        (dx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="does not support double backward"):
            dx.square().sum().backward()
        # without create_graph the first backward is as usual
        (plain_dx,) = torch.autograd.grad(m(x).square().sum(), x)
    torch.testing.assert_close(dx.detach(), plain_dx)


def test_batch_average_count_is_saved_and_continues_after_a_reload():
    """With using_moving_average=False a reload (or --resume) continues the average."""
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 4, 4) * (i + 1) + i for i in range(5)]
    whole = SwitchNorm2d(3, using_moving_average=False)
    for x in batches:
        whole(x)
    first = SwitchNorm2d(3, using_moving_average=False)
    for x in batches[:3]:
        first(x)
    resumed = SwitchNorm2d(3, using_moving_average=False)
    resumed.load_state_dict(first.state_dict())
    for x in batches[3:]:
        resumed(x)
    assert resumed.num_batches.item() == 5
    torch.testing.assert_close(resumed.running_mean, whole.running_mean)
    torch.testing.assert_close(resumed.running_var, whole.running_var)


def test_loads_version_2_state_dicts_without_a_batch_count():
    m = SwitchNorm2d(3)
    sd = m.state_dict()
    del sd["num_batches"]
    sd._metadata[""]["version"] = 2
    m.load_state_dict(sd)  # strict: no missing key


def test_autocast_keeps_float32_statistics_and_input_dtype():
    m = random_sn(channels=8, dtype=torch.float32)
    x = (torch.randn(2, 8, 6, 6) * 4 + 100).bfloat16()
    expected = copy.deepcopy(m)(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    assert m.running_mean.dtype == torch.float32
    # only the bf16 rounding of the output, no loss in the statistics
    torch.testing.assert_close(y.float(), expected, rtol=0.02, atol=0.05)


def test_state_dict_keys_and_shapes():
    sd = SwitchNorm2d(5).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "weight": (5,),
        "bias": (5,),
        "mean_weight": (3,),
        "var_weight": (3,),
        "running_mean": (5,),
        "running_var": (5,),
        "num_batches": (),
    }
    sd = SwitchNorm2d(5, using_bn=False).state_dict()
    assert set(sd) == {"weight", "bias", "mean_weight", "var_weight"}
    assert sd["mean_weight"].shape == (2,)


def test_loads_official_tensor_layout():
    src = random_sn(channels=4, dtype=torch.float32)
    official = {
        "weight": src.weight.detach().view(1, 4, 1, 1),
        "bias": src.bias.detach().view(1, 4, 1, 1),
        "running_mean": src.running_mean.view(1, 4, 1),
        "running_var": src.running_var.view(1, 4, 1),
        "mean_weight": src.mean_weight.detach(),
        "var_weight": src.var_weight.detach(),
    }
    dst = SwitchNorm2d(4)
    dst.load_state_dict(official)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v)


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="4-D"):
        SwitchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="built for 3 channels but the input has 5"):
        SwitchNorm2d(3)(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="momentum"):
        SwitchNorm2d(3, momentum=0.997 + 1)
    for eps in (0.0, -1e-5):
        with pytest.raises(ValueError, match="eps must be positive"):
            SwitchNorm2d(3, eps=eps)
    with pytest.raises(ValueError, match="eps must be positive"):
        FrozenSwitchNorm2d(3, eps=0.0)
    with pytest.raises(TypeError, match="floating-point input, got torch.int64"):
        SwitchNorm2d(3)(torch.ones(2, 3, 4, 4, dtype=torch.long))


def test_shares_and_repr():
    m = SwitchNorm2d(3)
    assert m.shares()["mean"] == pytest.approx({"IN": 1 / 3, "LN": 1 / 3, "BN": 1 / 3})
    assert "using_bn=True" in repr(m) and "momentum=0.01" in repr(m)


def test_importance_is_a_deprecated_alias_of_shares():
    m = random_sn(channels=3)
    with pytest.warns(DeprecationWarning, match="shares"):
        assert m.importance() == m.shares()


def _nan_batch(channels=3):
    x = torch.randn(2, channels, 4, 4)
    x[1, 0, 2, 3] = float("nan")
    return x


@pytest.mark.parametrize("moving_average", [True, False])
def test_nonfinite_batch_leaves_running_stats_unchanged(moving_average):
    m = SwitchNorm2d(3, momentum=0.5, using_moving_average=moving_average)
    m(torch.randn(2, 3, 4, 4) + 1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for bad in (_nan_batch(), torch.full((2, 3, 4, 4), float("inf"))):
        m(bad)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.isfinite(m.running_mean).all() and torch.isfinite(m.running_var).all()


@pytest.mark.parametrize("moving_average", [True, False])
def test_finite_batches_after_a_nonfinite_one_update_as_if_it_never_came(moving_average):
    batches = [torch.randn(2, 3, 4, 4) * (i + 1) + i for i in range(2)]
    skipped, clean = (SwitchNorm2d(3, using_moving_average=moving_average) for _ in range(2))
    skipped(batches[0]), skipped(_nan_batch()), skipped(batches[1])
    clean(batches[0]), clean(batches[1])
    for k, v in clean.state_dict().items():
        torch.testing.assert_close(skipped.state_dict()[k], v, rtol=0, atol=0)


def test_nonfinite_batches_counts_skipped_batches_per_layer():
    model = nn.Sequential(SwitchNorm2d(3), nn.Sequential(SwitchNorm2d(3)), FrozenSwitchNorm2d(3))
    assert nonfinite_batches(model) == {}
    model(_nan_batch())
    model[0](torch.randn(2, 3, 4, 4))
    model[0](_nan_batch())
    model.eval()(_nan_batch())  # eval mode uses the running statistics: nothing to skip
    assert nonfinite_batches(model) == {"0": 2, "1.0": 1}
    model[0].reset_running_stats()
    assert nonfinite_batches(model) == {"1.0": 1}


def test_skipping_a_nonfinite_batch_takes_no_host_value(monkeypatch):
    m = SwitchNorm2d(3, momentum=0.5)

    def refuse(*args):
        raise AssertionError("a host value was read in SN's forward")

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    m(_nan_batch())
    monkeypatch.undo()
    assert m.nonfinite_updates.item() == 1 and torch.equal(m.running_mean, torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_step_on_cuda_never_waits_for_the_gpu(dtype):
    """A host-device synchronisation in every SN layer would stall the whole model's pipeline."""
    layer = SwitchNorm2d(64).cuda()
    x = torch.randn(2, 64, 40, 60, device="cuda", dtype=dtype, requires_grad=True)
    for step in range(2):  # the first step compiles (which may synchronise); the second must not
        if step == 1:
            torch.cuda.set_sync_debug_mode("error")
        try:
            layer(x).float().square().sum().backward()
            layer.eval()(x.detach())
            layer.train()
        finally:
            torch.cuda.set_sync_debug_mode("default")
