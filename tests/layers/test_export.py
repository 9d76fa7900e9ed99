"""SN under tracers, exporters, scripting and torch.compile: the portable path, never a silently
wrong graph."""

import pytest
import torch
from detectron2.export.torchscript_patch import freeze_training_mode
from torch import nn

from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d, kernels
from sn_detection.layers.mixer import mix_forward
from sn_detection.layers.portable import (
    apply_inference,
    mix_scale_shift,
    moments_inference,
    switch_norm_inference,
)
from sn_detection.layers.switch_norm_function import BatchReduction, switch_norm
from sn_detection.testing import random_sn, randomize_sn_state

LAYERS = (SwitchNorm2d, FrozenSwitchNorm2d, SyncSwitchNorm2d)


def _small_model(cls=SwitchNorm2d, using_bn=True, seed=0):
    """conv -> SN -> ReLU -> conv -> SN with random SN parameters and statistics, in eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        cls(8, using_bn=using_bn),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        cls(8, using_bn=using_bn),
    )
    return randomize_sn_state(model, affine=True).eval()


INPUTS = (torch.randn(2, 3, 10, 12), torch.randn(3, 3, 17, 9), torch.randn(1, 3, 5, 7))


def _exporters():
    dims = ({0: torch.export.Dim("n"), 2: torch.export.Dim("h"), 3: torch.export.Dim("w")},)
    return {
        "jit.trace": lambda m, x: torch.jit.trace(m, x),
        "jit.script": lambda m, x: torch.jit.script(m),
        "export": lambda m, x: torch.export.export(m, (x,), dynamic_shapes=dims).module(),
        "export strict": lambda m, x: torch.export.export(
            m, (x,), dynamic_shapes=dims, strict=True
        ).module(),
    }


# -- the portable formulas against the eager layer -----------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 4, 1, 1), (1, 3, 1, 6)])
def test_portable_moments_equal_plain_kernels_in_float64(shape):
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    mean, var = moments_inference(x)
    want_mean, want_var = kernels.PLAIN_KERNELS.moments(x)
    torch.testing.assert_close(mean, want_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, want_var, rtol=1e-10, atol=1e-12)


def test_portable_moments_in_float32_are_accurate_for_conv_like_features():
    # a mean 10 times the spread (module docstring: relative variance error about 1e-5)
    x = torch.randn(4, 16, 50, 60) + 10.0
    mean, var = moments_inference(x)
    want_mean, want_var = kernels.PLAIN_KERNELS.moments(x.double())
    torch.testing.assert_close(mean.double(), want_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), want_var, rtol=1e-4, atol=0)
    assert mean.dtype == var.dtype == torch.float32


def test_portable_moments_of_bfloat16_are_float32():
    x = torch.randn(2, 3, 8, 8).bfloat16()
    mean, var = moments_inference(x)
    assert mean.dtype == var.dtype == torch.float32
    want_mean, want_var = kernels.PLAIN_KERNELS.moments(x)
    torch.testing.assert_close(mean, want_mean)
    torch.testing.assert_close(var, want_var)


@pytest.mark.parametrize("using_bn", [True, False])
def test_portable_mixer_equals_mix_forward(using_bn):
    torch.manual_seed(0)
    m, v = torch.randn(3, 6, dtype=torch.float64), torch.rand(3, 6, dtype=torch.float64)
    weight, bias = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    k = 3 if using_bn else 2
    weights = torch.rand(k, dtype=torch.float64), torch.rand(k, dtype=torch.float64)
    bn = (torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64))
    bn = bn if using_bn else (None, None)
    got = mix_scale_shift(m, v, weight, bias, *weights, *bn, 1e-5)
    want = mix_forward(m, v, weight, bias, *weights, *bn, 1e-5)[:2]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_portable_apply_is_x_times_scale_plus_shift():
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    scale, shift = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    want = x * scale[:, :, None, None] + shift[:, :, None, None]
    torch.testing.assert_close(apply_inference(x, scale, shift), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("using_bn", [True, False])
def test_portable_inference_equals_the_eager_layer_in_eval_mode(using_bn):
    m = random_sn(6, using_bn=using_bn).eval()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64) * 2 + 1
    stats = (m.running_mean, m.running_var) if using_bn else (None, None)
    got = switch_norm_inference(x, m.weight, m.bias, *m.mix_weights(), *stats, m.eps)
    torch.testing.assert_close(got, m(x), rtol=1e-10, atol=1e-10)


def test_portable_inference_gradcheck_in_float64():
    m = random_sn(4).eval()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in (m.weight, m.bias, *m.mix_weights())]

    def fn(x, *params):
        return switch_norm_inference(x, *params, m.running_mean, m.running_var, m.eps)

    assert torch.autograd.gradcheck(fn, (x, *params))


# -- eval mode: no cross-image leakage ----------------------------------------------------------


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("fast", [True, False])
def test_eval_output_of_one_image_is_exactly_its_output_in_a_larger_batch(cls, fast):
    model = _small_model(cls)[1]  # an SN layer
    batch = torch.randn(5, 8, 13, 11)
    with torch.no_grad(), kernels.fast_kernels(fast):
        together = model(batch)
        for i in range(batch.shape[0]):
            assert torch.equal(model(batch[i : i + 1]), together[i : i + 1])


def test_traced_eval_output_of_one_image_is_exactly_its_output_in_a_larger_batch():
    model = _small_model()[1]  # one layer: a convolution itself differs in the last bit by batch
    batch = torch.randn(4, 8, 9, 10)
    with torch.no_grad():
        traced = torch.jit.trace(model, batch[:2])
        together = traced(batch)
        for i in range(batch.shape[0]):
            assert torch.equal(traced(batch[i : i + 1]), together[i : i + 1])


# -- tracers and exporters -----------------------------------------------------------------------


@pytest.mark.parametrize("method", list(_exporters()))
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("using_bn", [True, False])
def test_exported_model_matches_eager_for_other_input_shapes(method, cls, using_bn):
    model = _small_model(cls, using_bn)
    exported = _exporters()[method](model, INPUTS[0])  # default (fast) kernels in eager
    with torch.no_grad():
        for x in INPUTS:
            torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-5)


def test_trace_with_the_cpu_kernels_records_no_opaque_op():
    model = _small_model()
    assert kernels.kernels_status() != "plain" or pytest.skip("C++ kernels not built")
    graph = str(torch.jit.trace(model, INPUTS[0]).inlined_graph)
    assert "aten::empty_like" not in graph  # what a traced C++ kernel records
    assert "aten::linalg_vector_norm" in graph
    assert "sn_detection::" not in graph  # no custom op: loads without sn_detection


def test_trace_with_gradients_enabled_matches_eager():
    model = _small_model()
    traced = torch.jit.trace(model, INPUTS[0])  # parameters require grad
    x = INPUTS[1].clone().requires_grad_()
    traced(x).square().sum().backward()
    x_eager = INPUTS[1].clone().requires_grad_()
    model(x_eager).square().sum().backward()
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-4, atol=1e-4)


def test_training_mode_trace_uses_the_batch_and_updates_running_statistics():
    model = _small_model().train()
    reference = _small_model().train()
    x = INPUTS[0]
    traced = torch.jit.trace(model, x, check_trace=False)  # one forward: one update
    reference(x)
    torch.testing.assert_close(traced(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)


class _OpaqueReduction(BatchReduction):
    """A BN-branch reduction no tracer can follow (as SyncSN's with a process group)."""

    traceable = False


def test_an_untraceable_batch_reduction_raises_under_trace():
    m = random_sn(4, dtype=torch.float32).requires_grad_(False)  # no parameters as constants

    def fn(x):
        p, q = m.mix_weights()
        return switch_norm(x, m.weight, m.bias, p, q, eps=1e-5, bn=_OpaqueReduction())[0]

    with pytest.raises(RuntimeError, match="eval mode"):
        torch.jit.trace(fn, torch.randn(2, 4, 3, 3))


def test_scripted_layer_refuses_training_mode():
    scripted = torch.jit.script(_small_model().train())
    with pytest.raises(torch.jit.Error, match="eval mode only"):
        scripted(INPUTS[0])


def test_scripted_frozen_layer_runs_in_training_mode():
    model = _small_model(FrozenSwitchNorm2d)
    scripted = torch.jit.script(model).train()
    with torch.no_grad():
        torch.testing.assert_close(scripted(INPUTS[0]), model(INPUTS[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [SwitchNorm2d, FrozenSwitchNorm2d])
def test_layers_script_under_detectron2s_scripting_patches(cls):
    # scripting_with_instances gives each module class a new __annotations__ (only "training")
    model = _small_model(cls)
    with freeze_training_mode(model):
        scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(INPUTS[0]), model(INPUTS[0]), rtol=1e-5, atol=1e-5)


def test_empty_input_under_trace_and_script():
    model = _small_model()[1]
    empty = torch.randn(0, 8, 4, 4)
    assert torch.jit.script(model)(empty).shape == empty.shape
    traced = torch.jit.trace(model, torch.randn(1, 8, 4, 4))
    assert traced(empty).shape == empty.shape  # no RoI: the traced heads still run


# -- torch.compile -------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_compile_makes_no_graph_break_at_sn_layers(training):
    import torch._dynamo

    torch._dynamo.reset()
    model = _small_model().train(training)
    explanation = torch._dynamo.explain(model)(INPUTS[0])
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compile_fullgraph_matches_eager():
    import torch._dynamo

    torch._dynamo.reset()
    model = _small_model()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for x in INPUTS[:2]:
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


# -- SyncSN exports as SN ------------------------------------------------------------------------


def test_revert_sync_switchnorm_keeps_settings_parameters_and_statistics():
    model = _small_model(SyncSwitchNorm2d)
    model[1].weight.requires_grad_(False)
    with torch.no_grad():
        want = model(INPUTS[0])
    reverted = SyncSwitchNorm2d.revert_sync_switchnorm(model)
    layers = [m for m in reverted.modules() if isinstance(m, SwitchNorm2d)]
    assert len(layers) == 2 and not any(isinstance(m, SyncSwitchNorm2d) for m in layers)
    assert not reverted[1].weight.requires_grad and not reverted[1].training
    with torch.no_grad():
        assert torch.equal(reverted(INPUTS[0]), want)
    single = SyncSwitchNorm2d.revert_sync_switchnorm(SyncSwitchNorm2d(4, momentum=0.2))
    assert type(single) is SwitchNorm2d and single.momentum == 0.2
