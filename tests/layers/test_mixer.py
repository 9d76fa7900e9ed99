"""The (N, C)-sized mixer: hand-derived backward against autograd of a plain rendering."""

import os
import subprocess
import sys

import pytest
import torch

from sn_detection.layers import kernels, mixer
from sn_detection.layers.kernels import COMPILE_ENV
from sn_detection.layers.mixer import mix_backward, mix_forward

EPS = 1e-5


def plain_mix(m, v, weight, bias, p, q, bn):
    """SN's mixture with mix weights p, q as a direct transcription of the formulas,
    differentiated by autograd. ``bn``: None, "batch" (this batch's statistics) or (mean,
    variance) given."""
    mean_ln = m.mean(1, keepdim=True)
    var_ln = v.mean(1, keepdim=True) + ((m - mean_ln) ** 2).mean(1, keepdim=True)
    mu = p[0] * m + p[1] * mean_ln
    var = q[0] * v + q[1] * var_ln
    if bn == "batch":
        mean_bn = m.mean(0)
        bn = (mean_bn, v.mean(0) + ((m - mean_bn) ** 2).mean(0))
    if bn is not None:
        mu = mu + p[2] * bn[0]
        var = var + q[2] * bn[1]
    scale = weight / torch.sqrt(var + EPS)
    return scale, bias - mu * scale


def official_mix(m, v, weight, bias, p, q):
    """The official code's formulas (batch statistics), E[v + m^2] - mean^2, for float64 checks."""
    s = v + m * m
    mean_ln, mean_bn = m.mean(1, keepdim=True), m.mean(0)
    var_ln, var_bn = s.mean(1, keepdim=True) - mean_ln**2, s.mean(0) - mean_bn**2
    mu = p[0] * m + p[1] * mean_ln + p[2] * mean_bn
    var = q[0] * v + q[1] * var_ln + q[2] * var_bn
    scale = weight / torch.sqrt(var + EPS)
    return scale, bias - mu * scale


def _inputs(n, c, source, seed=0):
    """Leaf tensors (m, v, weight, bias, p, q[, mean_bn, var_bn]), p and q positive weights."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    branches = 2 if source == "none" else 3
    ts = [
        torch.randn(n, c, **f64),
        torch.rand(n, c, **f64) + 0.1,
        torch.randn(c, **f64),
        torch.randn(c, **f64),
        torch.rand(branches, **f64) + 0.1,
        torch.rand(branches, **f64) + 0.1,
    ]
    if source == "given":
        ts += [torch.randn(c, **f64), torch.rand(c, **f64) + 0.1]
    return [t.requires_grad_() for t in ts]


def _ours(inputs, source, grad_scale, grad_shift):
    """Our forward and backward, with the batch statistics (source "batch") through
    batch_summary / split_summary / batch_statistics_backward as the layer runs them."""
    m, v, weight, bias, p, q, *bn = inputs
    mean_bn, var_bn = bn if bn else (None, None)
    with torch.no_grad():
        if source == "batch":
            mean_bn, var_bn, count = mixer.split_summary(mixer.batch_summary(m, v))
        scale, shift, saved = mix_forward(m, v, weight, bias, p, q, mean_bn, var_bn, EPS)
        grads = list(mix_backward(grad_scale, grad_shift, saved))
        if source == "batch":
            more_m, more_v = mixer.batch_statistics_backward(
                torch.cat(grads[6:]), m, mean_bn, count
            )
            grads = [grads[0] + more_m, grads[1] + more_v, *grads[2:6], None, None]
    return scale, shift, grads


@pytest.mark.parametrize("source", ["none", "batch", "given"])
@pytest.mark.parametrize("degenerate", [False, True])
def test_forward_and_hand_derived_backward_match_autograd_of_the_formulas(source, degenerate):
    n, c = 3, 5
    inputs = _inputs(n, c, source)
    if degenerate:
        # every sample and channel identical: LN and BN variances are exactly 0
        with torch.no_grad():
            inputs[0].fill_(1.7)
            inputs[1].zero_()
    g = torch.Generator().manual_seed(3)
    gs, gt = (torch.randn(n, c, generator=g, dtype=torch.float64) for _ in range(2))
    scale, shift, grads = _ours(inputs, source, gs, gt)

    bn = source if source != "given" else inputs[6:]
    ref_scale, ref_shift = plain_mix(*inputs[:6], bn=None if source == "none" else bn)
    ref_grads = torch.autograd.grad((ref_scale, ref_shift), inputs, (gs, gt))
    torch.testing.assert_close(scale, ref_scale.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shift, ref_shift.detach(), rtol=1e-12, atol=1e-12)
    if source != "given":
        assert grads[6] is None and grads[7] is None
    largest = max(float(r.abs().max()) for r in ref_grads)  # ~1e7 where variances are 0
    for ours, ref in zip(grads, ref_grads):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13 * largest + 1e-12)


def test_forward_equals_the_official_formulas_in_float64():
    inputs = [t.detach() for t in _inputs(4, 6, "batch")]
    zeros = torch.zeros(4, 6, dtype=torch.float64)
    scale, shift, _ = _ours(inputs, "batch", zeros, zeros)
    ref_scale, ref_shift = official_mix(*inputs)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shift, ref_shift, rtol=1e-12, atol=1e-12)


def test_given_negative_variance_counts_as_zero():
    m, v, *params = (t.detach() for t in _inputs(4, 3, "none"))
    params[2:] = [torch.randn(3, dtype=torch.float64) for _ in range(2)]  # three branches
    f64 = dict(dtype=torch.float64)
    mean_bn = torch.zeros(3, **f64)
    _, _, saved = mix_forward(m, v, *params, mean_bn, torch.tensor([1.0, -2.0, 3.0], **f64), EPS)
    assert torch.equal(saved[8], torch.tensor([1.0, 0.0, 3.0], **f64))


def test_summaries_of_parts_combine_into_the_summary_of_the_whole():
    """Chan's combination is exact for any split, empty parts included, and without the
    E[x^2] - E[x]^2 cancellation: a mean of 1e4 over a spread of 1 keeps its variance in float32."""
    g = torch.Generator().manual_seed(0)
    m = 1e4 + torch.randn(7, 5, generator=g, dtype=torch.float64)
    v = torch.rand(7, 5, generator=g, dtype=torch.float64)
    whole = mixer.batch_summary(m, v)
    parts = torch.stack([mixer.batch_summary(m[a:b], v[a:b]) for a, b in ((0, 2), (2, 2), (2, 7))])
    torch.testing.assert_close(mixer.combine_summaries(parts), whole, rtol=1e-12, atol=1e-9)
    mean, var, count = mixer.split_summary(whole)
    torch.testing.assert_close(mean, m.mean(0))
    torch.testing.assert_close(var, v.mean(0) + m.var(0, correction=0))
    assert count.item() == 7
    parts32 = torch.stack(
        [mixer.batch_summary(m[a:b].float(), v[a:b].float()) for a, b in ((0, 3), (3, 7))]
    )
    _, var32, _ = mixer.split_summary(mixer.combine_summaries(parts32))
    torch.testing.assert_close(var32.double(), var, rtol=1e-3, atol=1e-3)


def test_set_compile_mixer_validates_the_mode():
    with pytest.raises(ValueError, match="'auto', '0', '1'"):
        kernels.set_compile_mixer("yes")


@pytest.fixture
def compile_mixer():
    """Run the block with the mixer compiled on every device (mode "1"), then restore."""
    before = kernels.compile_mixer_mode()
    kernels.set_compile_mixer("1")
    yield
    kernels.set_compile_mixer(before)


def test_compilation_failure_warns_once_then_runs_eagerly(monkeypatch, compile_mixer):
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(kwargs)
            raise RuntimeError("no C compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    doubled = mixer._Compiled(lambda t, k: t * k)
    x = torch.ones(2)
    with pytest.warns(UserWarning, match="no C compiler.*runs it eagerly"):
        assert torch.equal(doubled(x, 2), 2 * x)
    assert doubled.failed and calls == [{"dynamic": True, "fullgraph": True}]
    assert torch.equal(doubled(x, 3), 3 * x)  # eager from now on: no second attempt
    assert len(calls) == 1


def test_out_of_memory_in_the_compiled_mixer_is_raised_not_a_fallback(monkeypatch, compile_mixer):
    def oom_compile(fn, **kwargs):
        def compiled(*args):
            raise torch.OutOfMemoryError("CUDA out of memory")

        return compiled

    monkeypatch.setattr(torch, "compile", oom_compile)
    wrapped = mixer._Compiled(lambda t: t)
    with pytest.raises(torch.OutOfMemoryError):
        wrapped(torch.ones(1))
    assert not wrapped.failed


def test_compiled_result_that_differs_from_eager_warns_and_falls_back(monkeypatch, compile_mixer):
    """A miscompiled mixer (wrong numbers, no error) is caught by the first call's check."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: lambda t: fn(t) + 1e-3)
    wrapped = mixer._Compiled(lambda t: t * 2)
    x = torch.ones(3)
    with pytest.warns(UserWarning, match="differs from the eager function.*runs it eagerly"):
        assert torch.equal(wrapped(x), 2 * x)
    assert wrapped.failed


def test_auto_mode_runs_eagerly_on_cpu(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: pytest.fail("compiled on CPU"))
    before = kernels.compile_mixer_mode()
    kernels.set_compile_mixer("auto")
    try:
        assert torch.equal(mixer._Compiled(lambda t: t + 1)(torch.zeros(1)), torch.ones(1))
    finally:
        kernels.set_compile_mixer(before)


_COMPILED_CHECK = """
import warnings
import torch
from torch._dynamo.utils import counters
from sn_detection.layers import kernels, mixer
from sn_detection.testing import random_sn

warnings.simplefilter("error")  # a fallback to eager would warn: make it fail instead
torch.manual_seed(0)


def run(channel_counts, batch_sizes):
    for using_bn in (True, False):
        for channels in channel_counts:
            layer = random_sn(channels, using_bn, torch.float64, seed=channels)
            for training in (True, False):  # batch statistics; running statistics
                layer.train(training)
                for n in batch_sizes:
                    x = torch.randn(n, channels, 4, 5, dtype=torch.float64, requires_grad=True)
                    g = torch.randn_like(x)
                    outs = []
                    for mode in ("1", "0"):  # compiled, eager
                        kernels.set_compile_mixer(mode)
                        y = layer(x)
                        outs.append((y, *torch.autograd.grad(y, (x, *layer.parameters()), g)))
                    for a, b in zip(*outs):
                        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


run((8, 16), (2, 3, 5))
compiled_functions = (
    mixer.compiled_mix_forward, mixer.compiled_mix_backward,
    mixer.compiled_batch_summary, mixer.compiled_batch_statistics_backward,
)
for compiled in compiled_functions:
    assert compiled.compiled is not None and not compiled.failed
graphs = counters["stats"]["unique_graphs"]
# other channel counts and batch sizes reuse the graphs: no recompilation per shape
run((24, 40), (4, 7))
assert counters["stats"]["unique_graphs"] == graphs, (graphs, dict(counters["stats"]))
print("compiled mixer ok", graphs)
"""


def test_compiled_mixer_matches_eager():
    """SN_DETECTION_COMPILE_MIXER=1 compiles the mixer on CPU too (inductor's C++ backend), which
    checks that the functions compiled on CUDA are compile-clean and give the eager numbers. Run in
    a subprocess so that compilation state does not leak into other tests."""
    env = dict(os.environ, **{COMPILE_ENV: "1"})
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILED_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled mixer ok" in proc.stdout
