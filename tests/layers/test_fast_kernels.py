"""The C++ CPU kernels (``sn_detection._C``) against the plain PyTorch kernels and the reference."""

import copy

import pytest
import torch

from sn_detection.layers import kernels, select_kernels
from sn_detection.layers.cpu_kernels import CPU_KERNELS
from sn_detection.layers.kernel_contract import PLAIN_KERNELS
from sn_detection.testing import forward_backward, gradcheck_layer, random_sn, reference_step

pytest.importorskip("sn_detection._C", reason="the C++ kernels are not built (run `make setup`)")

DTYPES = [torch.float32, torch.float64]
# (N, C, H, W): odd sizes (vector tails), H*W = 1, an empty batch, small and multi-chunk planes
SHAPES = [(2, 3, 5, 7), (3, 4, 1, 1), (0, 3, 4, 4), (8, 16, 14, 14), (1, 2, 97, 89)]


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


def _planes(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape[:2], generator=g, dtype=dtype) for _ in range(3)]


def test_registered_for_cpu_float_contiguous_only():
    assert select_kernels(torch.zeros(2, 3, 4, 4)) is CPU_KERNELS
    assert select_kernels(torch.zeros(2, 3, 4, 4, dtype=torch.float64)) is CPU_KERNELS
    with kernels.fast_kernels(False):
        assert select_kernels(torch.zeros(2, 3, 4, 4)) is PLAIN_KERNELS
    assert select_kernels(torch.zeros(2, 3, 4, 4, dtype=torch.bfloat16)) is PLAIN_KERNELS
    channels_last = torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last)
    assert select_kernels(channels_last) is PLAIN_KERNELS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_moments_match_float64(shape, dtype):
    x = torch.randn(shape, dtype=dtype) * 2 + 3
    mean, var = CPU_KERNELS.moments(x)
    planes = x.double().flatten(2)
    mean_ref = planes.mean(-1)
    var_ref = (
        planes.var(-1) if planes.shape[0] and planes.shape[2] > 1 else torch.zeros_like(mean_ref)
    )
    assert mean.dtype == var.dtype == dtype and mean.shape == shape[:2]
    torch.testing.assert_close(mean.double(), mean_ref, **_tol(dtype))
    torch.testing.assert_close(var.double(), var_ref, **_tol(dtype))


def test_moments_of_single_element_planes_have_zero_variance():
    x = torch.randn(3, 4, 1, 1)
    mean, var = CPU_KERNELS.moments(x)
    assert torch.equal(mean, x[:, :, 0, 0]) and torch.equal(var, torch.zeros(3, 4))


def test_moments_accurate_for_mean_much_larger_than_spread():
    x64 = 1000 + torch.randn(2, 3, 50, 60, dtype=torch.float64)
    x = x64.float()
    mean, var = CPU_KERNELS.moments(x)
    var_true = x.double().flatten(2).var(-1)  # of the float32 values, computed in float64
    torch.testing.assert_close(var.double(), var_true, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), x.double().flatten(2).mean(-1), rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_apply_matches_plain(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    scale, shift, _ = _planes(shape, dtype)
    y = CPU_KERNELS.apply(x, scale, shift)
    assert y.dtype == dtype and y.shape == shape
    torch.testing.assert_close(y, PLAIN_KERNELS.apply(x, scale, shift), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_reduce_matches_float64(shape, dtype):
    x = torch.randn(shape, dtype=dtype) + 10
    dy = torch.randn(shape, dtype=dtype)
    sum_dy_x, sum_dy = CPU_KERNELS.backward_reduce(dy, x)
    ref_dy_x, ref_dy = PLAIN_KERNELS.backward_reduce(dy.double(), x.double())
    hw = max(shape[2] * shape[3], 1)
    tol = _tol(dtype)
    # float32 sums of hw terms: tolerance relative to the size of the terms
    torch.testing.assert_close(sum_dy_x.double(), ref_dy_x, rtol=tol["rtol"], atol=tol["atol"] * hw)
    torch.testing.assert_close(sum_dy.double(), ref_dy, rtol=tol["rtol"], atol=tol["atol"] * hw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_apply_matches_plain(shape, dtype):
    x, dy = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    a, b, c = _planes(shape, dtype)
    dx = CPU_KERNELS.backward_apply(dy, x, a, b, c)
    assert dx.dtype == dtype and dx.shape == shape
    torch.testing.assert_close(dx, PLAIN_KERNELS.backward_apply(dy, x, a, b, c), **_tol(dtype))


def test_backward_kernels_accept_non_contiguous_dy():
    x = torch.randn(2, 3, 6, 5)
    dy = torch.randn(2, 3, 5, 6).transpose(2, 3)  # same shape as x, not contiguous
    assert not dy.is_contiguous()
    a, b, c = _planes(x.shape, x.dtype)
    for got, want in zip(CPU_KERNELS.backward_reduce(dy, x), PLAIN_KERNELS.backward_reduce(dy, x)):
        torch.testing.assert_close(got, want)
    got = CPU_KERNELS.backward_apply(dy, x, a, b, c)
    torch.testing.assert_close(got, PLAIN_KERNELS.backward_apply(dy, x, a, b, c))


def test_moments_identical_whatever_the_thread_count():
    x = torch.randn(64, 32, 20, 20)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(CPU_KERNELS.moments(x))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):  # each plane is summed by one thread: identical results
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_layer_fast_equals_plain_and_reference(training, using_bn, dtype):
    m = random_sn(8, using_bn, dtype).train(training)
    x = torch.randn(3, 8, 9, 7, dtype=dtype) * 3 + 1
    dy = torch.randn_like(x)
    fast = forward_backward(copy.deepcopy(m), x, dy, fast=True)
    plain = forward_backward(copy.deepcopy(m), x, dy, fast=False)
    ref = reference_step(copy.deepcopy(m), x, dy, training)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, want_plain, want_ref in zip(fast, plain, ref):
        torch.testing.assert_close(got, want_plain, **tol)
        torch.testing.assert_close(got, want_ref, **tol)


def test_layer_with_large_mean_offset_is_as_accurate_as_plain_kernels():
    # the fast kernels must not add error of their own where a mean is far above the spread
    m = random_sn(4, True, torch.float32)
    x = 1000 + torch.randn(2, 4, 16, 16)
    dy = torch.randn_like(x)
    fast = forward_backward(copy.deepcopy(m), x, dy, fast=True)
    plain = forward_backward(copy.deepcopy(m), x, dy, fast=False)
    ref = forward_backward(copy.deepcopy(m).double(), x.double(), dy.double(), fast=False)
    for got, want_plain, want in zip(fast, plain, ref):
        err_fast = (got.double() - want).abs().max()
        err_plain = (want_plain.double() - want).abs().max()
        assert err_fast <= 2 * err_plain + 1e-5 * want.abs().max()


def test_layer_on_default_kernels_stays_finite_for_empty_and_single_pixel_inputs():
    m = random_sn(4, True, torch.float32)
    for shape in ((0, 4, 5, 5), (2, 4, 1, 1)):
        x = torch.randn(shape, requires_grad=True)
        y = m(x)
        y.sum().backward()
        assert y.shape == shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_through_fast_kernels(training, using_bn):
    m = random_sn(3, using_bn, torch.float64).train(training)
    assert select_kernels(torch.zeros(1, 3, 2, 2, dtype=torch.float64)) is CPU_KERNELS
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert gradcheck_layer(m, x, eps=1e-6, atol=1e-6)
