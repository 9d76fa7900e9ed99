"""The Triton kernels (``triton_kernels``) against the plain PyTorch kernels and the reference,
run on CPU tensors by the Triton interpreter.

Triton chooses between compiling and interpreting a kernel when it is decorated, that is when
``sn_detection.layers.triton_kernels`` is imported, and ``import sn_detection`` (conftest) has
already done that in this process, without TRITON_INTERPRET. So the checks run in one child
process started with TRITON_INTERPRET=1, which nothing else sees: the child runs this file as a
script, which runs every ``check_*`` function and writes a JSON report; ``test_under_interpreter``
passes for a check that passed and shows the child's traceback otherwise. Shapes are small, and
the launch sizes of ``SMALL`` make them take the multi-plane, multi-chunk and grid-stride paths.
"""

import contextlib
import copy
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

import pytest
import torch

import sn_detection
from sn_detection.layers import kernels as kernel_choice
from sn_detection.layers import select_kernels, triton_kernels
from sn_detection.layers.kernel_contract import PLAIN_KERNELS, stats_dtype
from sn_detection.layers.triton_kernels import (
    DEFAULT_CONFIG,
    LaunchConfig,
    make_triton_kernels,
    reduction_plan,
)
from sn_detection.testing import forward_backward, gradcheck_layer, random_sn, reference_step

triton = pytest.importorskip("triton", reason="triton is not installed")

# tiles of 32 elements (2 planes of <= 16 per tile), chunks of >= 64, partial sums added 16 at a
# time, at most 25 programs on the second grid axis (the elementwise passes then loop)
SMALL = LaunchConfig(
    reduce_tile=32, apply_tile=32, target_programs=64, min_chunk=64, combine_tile=16, max_grid_y=25
)
CONFIGS = {"default": DEFAULT_CONFIG, "small": SMALL}
# (N, C, H, W): H*W = 1; N*C odd with several planes per tile; H*W not a multiple of the tile;
# chunks of several tiles; more chunks than a combine tile; an empty batch. Few planes each: the
# interpreter's time grows with the programs launched, and one plane per tile takes every path
SHAPES = [(3, 5, 1, 1), (1, 5, 3, 3), (1, 3, 13, 11), (1, 3, 20, 30), (1, 2, 40, 40), (0, 3, 4, 4)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _tol(dtype):
    """Tolerance of values computed in the statistics dtype (float32, or float64)."""
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def _out_tol(dtype):
    """Tolerance of outputs in x's dtype: one rounding of a half/bfloat16 result may differ."""
    return _tol(dtype) if dtype in (torch.float32, torch.float64) else {}


def _coefficients(shape, dtype, count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape[:2], generator=g).to(dtype) for _ in range(count)]


@contextlib.contextmanager
def _case(**what):
    """Name the failing case in the traceback of a check that loops over cases."""
    try:
        yield
    except Exception as e:
        e.add_note(f"case: {what}")
        raise


def _all_cases():
    for config_name, config in CONFIGS.items():
        kernels = make_triton_kernels(("cpu",), config)
        for shape in SHAPES:
            for dtype in DTYPES:
                yield kernels, shape, dtype, dict(config=config_name, shape=shape, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Checks run in the child process (TRITON_INTERPRET=1)
# ---------------------------------------------------------------------------------------------


def check_supports_only_contiguous_float_4d_tensors_on_its_devices():
    kernels = make_triton_kernels(("cpu",))
    for dtype in DTYPES:
        assert kernels.supports(torch.zeros(2, 3, 4, 4, dtype=dtype))
    assert not kernels.supports(torch.zeros(2, 3, 4, 4, dtype=torch.int32))
    assert not kernels.supports(torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last))
    assert not kernels.supports(torch.zeros(2, 3, 4, 5).transpose(2, 3))
    assert not kernels.supports(torch.zeros(2, 3, 4))
    assert not make_triton_kernels(("cuda",)).supports(torch.zeros(2, 3, 4, 4))


def check_moments_match_plain():
    for kernels, shape, dtype, case in _all_cases():
        with _case(**case):
            x = (torch.randn(shape) * 2 + 3).to(dtype)
            mean, var = kernels.moments(x)
            want_mean, want_var = PLAIN_KERNELS.moments(x)
            assert mean.shape == var.shape == shape[:2]
            assert mean.dtype == var.dtype == want_mean.dtype
            torch.testing.assert_close(mean, want_mean, **_tol(dtype))
            torch.testing.assert_close(var, want_var, **_tol(dtype))


def check_moments_of_single_element_planes_are_exact():
    for name, config in CONFIGS.items():
        with _case(config=name):
            x = torch.randn(3, 5, 1, 1)
            mean, var = make_triton_kernels(("cpu",), config).moments(x)
            assert torch.equal(mean, x[:, :, 0, 0]) and torch.equal(var, torch.zeros(3, 5))


def check_moments_accurate_for_mean_much_larger_than_spread():
    # planes of an FPN level, few enough that the default launch splits each into chunks
    x = (1000 + torch.randn(1, 2, 200, 304, dtype=torch.float64)).float()
    assert reduction_plan(2, 200 * 304).n_chunks > 1
    mean, var = make_triton_kernels(("cpu",)).moments(x)
    planes = x.double().flatten(2)  # the float32 values, in float64
    torch.testing.assert_close(var.double(), planes.var(-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(mean.double(), planes.mean(-1), rtol=1e-7, atol=0)


def check_apply_matches_plain():
    for kernels, shape, dtype, case in _all_cases():
        with _case(**case):
            x = torch.randn(shape).to(dtype)
            scale, shift = _coefficients(shape, stats_dtype(dtype), 2)
            y = kernels.apply(x, scale, shift)
            assert y.dtype == dtype and y.shape == shape
            torch.testing.assert_close(y, PLAIN_KERNELS.apply(x, scale, shift), **_out_tol(dtype))


def check_backward_reduce_matches_plain():
    for kernels, shape, dtype, case in _all_cases():
        with _case(**case):
            x = (torch.randn(shape) + 3).to(dtype)
            dy = torch.randn(shape).to(dtype)
            got = kernels.backward_reduce(dy, x)
            want = PLAIN_KERNELS.backward_reduce(dy, x)
            hw = max(shape[2] * shape[3], 1)
            tol = _tol(dtype)  # sums of hw terms: absolute tolerance grows with hw
            for g, w in zip(got, want):
                assert g.dtype == w.dtype and g.shape == shape[:2]
                torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=tol["atol"] * hw)


def check_backward_apply_matches_plain():
    for kernels, shape, dtype, case in _all_cases():
        with _case(**case):
            x, dy = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
            a, b, c = _coefficients(shape, stats_dtype(dtype), 3)
            dx = kernels.backward_apply(dy, x, a, b, c)
            assert dx.dtype == dtype and dx.shape == shape
            want = PLAIN_KERNELS.backward_apply(dy, x, a, b, c)
            torch.testing.assert_close(dx, want, **_out_tol(dtype))


def check_backward_passes_take_float32_and_non_contiguous_dy():
    kernels = make_triton_kernels(("cpu",), SMALL)
    x = torch.randn(2, 3, 13, 11).to(torch.bfloat16)
    a, b, c = _coefficients(x.shape, torch.float32, 3)
    for layout in ("contiguous", "transposed"):
        with _case(dy=layout):
            dy = torch.randn(2, 3, 13, 11)  # float32 dy for a bfloat16 x
            if layout == "transposed":
                dy = torch.randn(2, 3, 11, 13).transpose(2, 3)
            got = kernels.backward_reduce(dy, x)
            want = PLAIN_KERNELS.backward_reduce(dy, x)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * 143)
            dx = kernels.backward_apply(dy, x, a, b, c)
            assert dx.dtype == torch.bfloat16
            torch.testing.assert_close(dx, PLAIN_KERNELS.backward_apply(dy, x, a, b, c))


@contextlib.contextmanager
def _registered_for_cpu(kernels):
    """SN layers use ``kernels`` for CPU tensors inside the block (in this child process only)."""
    kernel_choice.register_kernels("cpu", kernels)
    try:
        yield
    finally:
        kernel_choice.unregister_kernels("cpu", kernels)


def check_layer_forward_backward_matches_plain_and_reference():
    kernels = make_triton_kernels(("cpu",), SMALL)
    x = torch.randn(2, 3, 12, 13) * 3 + 1  # planes of 156: three chunks each
    assert reduction_plan(6, 156, SMALL).n_chunks > 1
    dy = torch.randn_like(x)
    with _registered_for_cpu(kernels):
        assert select_kernels(x) is kernels
        for training in (True, False):
            for using_bn in (True, False):
                with _case(training=training, using_bn=using_bn):
                    m = random_sn(3, using_bn, torch.float32).train(training)
                    fast = forward_backward(copy.deepcopy(m), x, dy, fast=True)
                    plain = forward_backward(copy.deepcopy(m), x, dy, fast=False)
                    ref = reference_step(copy.deepcopy(m), x, dy, training)
                    for got, want_plain, want_ref in zip(fast, plain, ref):
                        torch.testing.assert_close(got, want_plain, rtol=1e-4, atol=1e-4)
                        torch.testing.assert_close(got, want_ref, rtol=1e-4, atol=1e-4)


def check_layer_with_bfloat16_input_matches_plain():
    # what a convolution under bf16 autocast feeds SN on a GPU: bf16 x and dy, float32 parameters
    kernels = make_triton_kernels(("cpu",), SMALL)
    x = (torch.randn(2, 3, 12, 13) * 3 + 1).to(torch.bfloat16)
    dy = torch.randn_like(x)
    with _registered_for_cpu(kernels):
        for training in (True, False):
            with _case(training=training):
                m = random_sn(3, True, torch.float32).train(training)
                fast = forward_backward(copy.deepcopy(m), x, dy, fast=True)
                plain = forward_backward(copy.deepcopy(m), x, dy, fast=False)
                assert fast[0].dtype == fast[1].dtype == torch.bfloat16
                for got, want in zip(fast, plain):
                    # the same float32 statistics; outputs differ by at most a bf16 rounding
                    torch.testing.assert_close(got, want, rtol=1.6e-2, atol=1e-2)


def check_gradcheck_through_triton_kernels():
    # the default launch (one program per pass at this size): the interpreter is slow, and
    # gradcheck runs the layer hundreds of times
    kernels = make_triton_kernels(("cpu",))
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    with _registered_for_cpu(kernels):
        assert select_kernels(x) is kernels
        for using_bn in (True, False):
            with _case(using_bn=using_bn):
                m = random_sn(2, using_bn, torch.float64)
                assert gradcheck_layer(m, x, eps=1e-6, atol=1e-6)


CHECKS = sorted(name for name in dict(globals()) if name.startswith("check_"))


def _run_checks(report_path):
    """Run every check (in this process) and write {name: {"error": traceback or None, ...}}."""
    report = {}
    for name in CHECKS:
        start = time.perf_counter()
        try:
            globals()[name]()
            error = None
        except Exception:
            error = traceback.format_exc()
        report[name] = {"error": error, "seconds": round(time.perf_counter() - start, 2)}
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)


# ---------------------------------------------------------------------------------------------
# Tests (this process)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interpreter_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton") / "report.json"
    # the child imports the same sn_detection as this process
    root = str(pathlib.Path(sn_detection.__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=pythonpath)
    child = subprocess.run(
        [sys.executable, __file__, str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    if child.returncode != 0 or not path.exists():
        pytest.fail(
            f"the interpreter run failed (exit {child.returncode}):\n"
            f"{child.stdout[-4000:]}\n{child.stderr[-4000:]}"
        )
    return json.loads(path.read_text())


@pytest.mark.parametrize("check", [name[len("check_") :] for name in CHECKS])
def test_under_interpreter(check, interpreter_report):
    result = interpreter_report["check_" + check]
    if result["error"]:
        pytest.fail(result["error"], pytrace=False)


def test_registered_for_cuda_only_when_a_gpu_is_present():
    if torch.cuda.is_available() and not triton_kernels._interpreted():
        x = torch.zeros(1, 1, 2, 2, device="cuda")
        assert select_kernels(x) is triton_kernels.default_kernels()
        assert select_kernels(x.to(memory_format=torch.channels_last)) is PLAIN_KERNELS
    else:
        assert triton_kernels.default_kernels() is None
    assert not select_kernels(torch.zeros(1, 1, 2, 2)).name.startswith("triton")


@pytest.mark.skipif(
    not torch.cuda.is_available() or triton_kernels.default_kernels() is None,
    reason="needs a GPU (the compiled kernels)",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(2, 64, 100, 152), (512, 16, 14, 14), (3, 5, 1, 1)])
def test_cuda_kernels_match_plain(shape, dtype):
    # few large planes (split into chunks), many small ones (several per tile), single elements
    kernels = triton_kernels.default_kernels()
    x = (torch.randn(shape, device="cuda") * 2 + 3).to(dtype)
    dy = torch.randn(shape, device="cuda")  # float32 dy, whatever x's dtype
    a, b, c = (t.cuda() for t in _coefficients(shape, stats_dtype(dtype), 3))
    tol, hw = _tol(dtype), shape[2] * shape[3]
    for got, want in zip(kernels.moments(x), PLAIN_KERNELS.moments(x)):
        torch.testing.assert_close(got, want, **tol)
    got = kernels.apply(x, a, b)
    torch.testing.assert_close(got, PLAIN_KERNELS.apply(x, a, b), **_out_tol(dtype))
    for got, want in zip(kernels.backward_reduce(dy, x), PLAIN_KERNELS.backward_reduce(dy, x)):
        torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * hw)
    got = kernels.backward_apply(dy, x, a, b, c)
    torch.testing.assert_close(got, PLAIN_KERNELS.backward_apply(dy, x, a, b, c), **_out_tol(dtype))


def test_cpu_kernels_need_the_interpreter():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        make_triton_kernels(("cpu",))


def test_launch_splits_few_large_planes_and_packs_many_small_ones():
    # FPN level: 128 planes of 400*608, one plane per tile, several chunks per plane
    plan = reduction_plan(2 * 64, 400 * 608)
    assert plan.rows == 1 and plan.n_chunks > 1 and plan.chunk * plan.n_chunks >= 400 * 608
    assert 128 * plan.n_chunks >= 1000  # enough programs for 132 SMs
    # RoI head: 262144 planes of 14*14, several planes per tile, one chunk
    plan = reduction_plan(1024 * 256, 14 * 14)
    assert plan.rows > 1 and plan.n_chunks == 1 and plan.block >= 14 * 14


def test_small_config_shapes_take_every_path():
    plans = {s: reduction_plan(s[0] * s[1], s[2] * s[3], SMALL) for s in SHAPES if s[0]}
    # several planes per tile, with the last tile partly empty (N*C odd)
    assert plans[(1, 5, 3, 3)].rows > 1 and 5 % plans[(1, 5, 3, 3)].rows
    # chunks of several tiles, H*W not a multiple of the tile
    assert plans[(1, 3, 20, 30)].chunk > plans[(1, 3, 20, 30)].block > 1
    assert 600 % plans[(1, 3, 20, 30)].chunk
    assert plans[(1, 3, 20, 30)].n_chunks > 1
    # more chunks than the combine kernel adds in one step
    assert plans[(1, 2, 40, 40)].n_chunks > SMALL.combine_tile
    # the elementwise passes loop over the column blocks beyond max_grid_y
    assert 40 * 40 > SMALL.apply_tile * SMALL.max_grid_y


def _compile_for_h100(kernel, types, constants):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {
        name: "constexpr" if name in constants else types.get(name, "i32")
        for name in kernel.arg_names
    }
    source = ASTSource(kernel, signature, constants)
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def test_kernels_compile_for_h100():
    # the interpreter runs the kernels as Python: this catches what only the compiler rejects
    if "nvidia" not in triton.backends.backends or triton_kernels._interpreted():
        pytest.skip("needs triton's CUDA backend and compiled (not interpreted) kernels")
    tile = dict(ROWS=8, BLOCK=256)
    for x, acc in (("fp32", "fp32"), ("bf16", "fp32"), ("fp64", "fp64")):
        stats = {"out1_ptr": "*" + acc, "out2_ptr": "*" + acc}
        for moments, finish, dy in ((True, True, x), (True, False, x), (False, False, "fp32")):
            types = {"a_ptr": "*" + dy, "b_ptr": "*" + x, **stats}
            constants = dict(MOMENTS=moments, FINISH=finish, VEC=4, **tile)
            _compile_for_h100(triton_kernels._plane_sums_kernel, types, constants)
        types = {"p1_ptr": "*" + acc, "p2_ptr": "*" + acc, "x_ptr": "*" + x, **stats}
        _compile_for_h100(triton_kernels._combine_kernel, types, dict(MOMENTS=True, **tile))
        coef = {name: "*" + acc for name in ("a_ptr", "b_ptr", "c_ptr")}
        types = {"x_ptr": "*" + x, "dy_ptr": "*fp32", "out_ptr": "*" + x, **coef}
        _compile_for_h100(triton_kernels._affine_kernel, types, dict(BACKWARD=True, VEC=2, **tile))
    # H*W = 1: Triton passes an int argument equal to 1 as a constant
    types = {"a_ptr": "*fp32", "b_ptr": "*fp32", "out1_ptr": "*fp32", "out2_ptr": "*fp32"}
    constants = dict(MOMENTS=True, FINISH=True, VEC=1, hw=1, dof=1, **tile)
    _compile_for_h100(triton_kernels._plane_sums_kernel, types, constants)


if __name__ == "__main__":  # the child process of ``interpreter_report``
    _run_checks(sys.argv[1])
