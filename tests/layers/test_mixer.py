"""The (N, C)-sized mixer: hand-derived backward against autograd of a plain rendering."""

import os
import subprocess
import sys

import pytest
import torch

from sn_detection.layers import mixer
from sn_detection.layers.mixer import COMPILE_ENV, compile_mode, mix_backward, mix_forward

EPS = 1e-5


def plain_mix(m, v, weight, bias, mean_logits, var_logits, bn):
    """SN's mixture as a direct transcription of the formulas, differentiated by autograd.
    ``bn``: None, "local" (this batch) or (mean, variance before clamping)."""
    s = v + m * m
    mean_ln = m.mean(1, keepdim=True)
    var_ln = (s.mean(1, keepdim=True) - mean_ln**2).clamp(min=0)
    p, q = torch.softmax(mean_logits, 0), torch.softmax(var_logits, 0)
    mu = p[0] * m + p[1] * mean_ln
    var = q[0] * v + q[1] * var_ln
    if bn == "local":
        mean_bn = m.mean(0)
        bn = (mean_bn, s.mean(0) - mean_bn**2)
    if bn is not None:
        mu = mu + p[2] * bn[0]
        var = var + q[2] * bn[1].clamp(min=0)
    scale = weight / torch.sqrt(var + EPS)
    return scale, bias - mu * scale


def _inputs(n, c, source, seed=0):
    """Leaf tensors (m, v, weight, bias, mean_logits, var_logits[, mean_bn, var_bn])."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    branches = 2 if source == "none" else 3
    ts = [
        torch.randn(n, c, **f64),
        torch.rand(n, c, **f64) + 0.1,
        torch.randn(c, **f64),
        torch.randn(c, **f64),
        torch.randn(branches, **f64),
        torch.randn(branches, **f64),
    ]
    if source == "given":
        # some given variances below 0 (they are clamped, as SyncSN's cancelled sums are)
        ts += [torch.randn(c, **f64), torch.rand(c, **f64) - 0.3]
    return [t.requires_grad_() for t in ts]


def _ours(inputs, source, grad_scale, grad_shift):
    m, v, weight, bias, mean_logits, var_logits, *bn = inputs
    mean_bn, var_bn = bn if bn else (None, None)
    with torch.no_grad():
        scale, shift, _, _, saved = mix_forward(
            m, v, weight, bias, mean_logits, var_logits, mean_bn, var_bn, EPS, source == "local"
        )
        grads = mix_backward(grad_scale, grad_shift, saved, source == "local")
    return scale, shift, grads


@pytest.mark.parametrize("source", ["none", "local", "given"])
@pytest.mark.parametrize("clamped", [False, True])
def test_forward_and_hand_derived_backward_match_autograd_of_the_formulas(source, clamped):
    n, c = 3, 5
    inputs = _inputs(n, c, source)
    if clamped:
        # every sample and channel identical: LN and BN variances cancel to about 0 and clamp
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
    largest = max(float(r.abs().max()) for r in ref_grads)  # ~1e7 where variances clamp to 0
    for ours, ref in zip(grads, ref_grads):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13 * largest + 1e-12)


def test_batch_statistics_returned_are_those_used():
    m, v, *params = (t.detach() for t in _inputs(4, 3, "local"))
    _, _, mean_bn, var_bn, _ = mix_forward(m, v, *params, None, None, EPS, True)
    torch.testing.assert_close(mean_bn, m.mean(0))
    torch.testing.assert_close(var_bn, (v + m * m).mean(0) - m.mean(0) ** 2)
    f64 = dict(dtype=torch.float64)
    given = (torch.zeros(3, **f64), torch.tensor([1.0, -2.0, 3.0], **f64))
    _, _, mean_bn, var_bn, _ = mix_forward(m, v, *params, *given, EPS, False)
    assert torch.equal(var_bn, torch.tensor([1.0, 0.0, 3.0], **f64))  # clamped at 0


def test_compile_mode_reads_the_environment(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert compile_mode() == "auto"
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert compile_mode() == "0"
    monkeypatch.setenv(COMPILE_ENV, "yes")
    with pytest.raises(ValueError, match="'auto', '0', '1'"):
        compile_mode()


def test_compilation_failure_warns_once_then_runs_eagerly(monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(kwargs)
            raise RuntimeError("no C compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv(COMPILE_ENV, "1")
    doubled = mixer._Compiled(lambda t, k: t * k)
    x = torch.ones(2)
    with pytest.warns(UserWarning, match="no C compiler.*runs it eagerly"):
        assert torch.equal(doubled(x, 2), 2 * x)
    assert doubled.failed and calls == [{"dynamic": True, "fullgraph": True}]
    assert torch.equal(doubled(x, 3), 3 * x)  # eager from now on: no second attempt
    assert len(calls) == 1


def test_out_of_memory_in_the_compiled_mixer_is_raised_not_a_fallback(monkeypatch):
    def oom_compile(fn, **kwargs):
        def compiled(*args):
            raise torch.OutOfMemoryError("CUDA out of memory")

        return compiled

    monkeypatch.setattr(torch, "compile", oom_compile)
    monkeypatch.setenv(COMPILE_ENV, "1")
    wrapped = mixer._Compiled(lambda t: t)
    with pytest.raises(torch.OutOfMemoryError):
        wrapped(torch.ones(1))
    assert not wrapped.failed


def test_auto_mode_runs_eagerly_on_cpu(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: pytest.fail("compiled on CPU"))
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert torch.equal(mixer._Compiled(lambda t: t + 1)(torch.zeros(1)), torch.ones(1))


_COMPILED_CHECK = """
import os
import warnings
import torch
from sn_detection.layers import SwitchNorm2d
from sn_detection.layers import mixer

warnings.simplefilter("error")  # a fallback to eager would warn: make it fail instead
torch.manual_seed(0)
for using_bn in (True, False):
    for channels in (8, 16):  # parameters of other sizes: no recompilation per channel count
        layer = SwitchNorm2d(channels, using_bn=using_bn).double()
        with torch.no_grad():
            layer.mean_weight.copy_(torch.randn(layer.mean_weight.shape))
            layer.var_weight.copy_(torch.randn(layer.var_weight.shape))
        for training in (True, False):  # batch statistics; running statistics
            layer.train(training)
            for n in (2, 3, 5):  # nor per batch size
                x = torch.randn(n, channels, 4, 5, dtype=torch.float64, requires_grad=True)
                g = torch.randn_like(x)
                outs = []
                for mode in ("1", "0"):  # compiled, eager
                    os.environ[mixer.COMPILE_ENV] = mode
                    y = layer(x)
                    outs.append((y, *torch.autograd.grad(y, (x, *layer.parameters()), g)))
                for a, b in zip(*outs):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
for compiled in (mixer.compiled_mix_forward, mixer.compiled_mix_backward):
    assert compiled.compiled is not None and not compiled.failed
# one graph per function and BN source (batch, running, none), whatever N and C
from torch._dynamo.utils import counters
assert counters["stats"]["unique_graphs"] == 6, dict(counters["stats"])
print("compiled mixer ok")
"""


def test_compiled_mixer_matches_eager():
    """SN_DETECTION_COMPILE_MIXER=1 compiles the mixer on CPU too (inductor's C++ backend), which
    checks that the functions compiled on CUDA are compile-clean and give the eager numbers. Run in
    a subprocess so that compilation state does not leak into other tests."""
    env = dict(os.environ, **{COMPILE_ENV: "1"})
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILED_CHECK], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compiled mixer ok" in proc.stdout
