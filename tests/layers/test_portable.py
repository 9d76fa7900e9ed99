"""The portable apply (``portable.apply_inference``): one pass over the input in every graph the
tracers and TorchScript record, right for any batch size (0 included), and a broadcast multiply
and add in ONNX, which runs in onnxruntime for any batch size."""

import io

import pytest
import torch
from torch import Tensor
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from sn_detection.layers.portable import apply_inference


def _want(x, scale, shift):
    return x * scale[:, :, None, None] + shift[:, :, None, None]


def _args(n, dtype=torch.float32, rows=None):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, 4, 5, generator=gen, dtype=dtype)
    rows = n if rows is None else rows
    scale = torch.randn(rows, 3, generator=gen, dtype=dtype)
    return x, scale, torch.randn(rows, 3, generator=gen, dtype=dtype)


class _FullSizeOps(TorchDispatchMode):
    """Records the ATen ops, views aside, that read or write a tensor of ``numel`` elements."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in pytree.tree_leaves((args, kwargs, out)) if isinstance(t, Tensor)]
        if any(t.numel() == self.numel for t in tensors) and not func.is_view:
            self.ops.append(func.name())
        return out


def test_apply_makes_one_pass_over_the_input():
    x, scale, shift = _args(2)
    with _FullSizeOps(x.numel()) as recorded:
        apply_inference(x, scale, shift)
    assert recorded.ops == ["aten::native_batch_norm"]


def test_traced_apply_is_one_batch_norm_over_the_planes():
    graph = str(torch.jit.trace(apply_inference, _args(2)).inlined_graph)
    assert graph.count("aten::native_batch_norm") == 1
    assert "aten::add" not in graph  # the shift is the affine bias


@pytest.mark.parametrize("n", [3, 1, 0])
def test_traced_apply_is_right_for_other_batch_sizes_including_none(n):
    traced = torch.jit.trace(apply_inference, _args(2))
    x, scale, shift = _args(n)
    torch.testing.assert_close(traced(x, scale, shift), _want(x, scale, shift))


@pytest.mark.parametrize("n", [2, 0])
def test_scripted_apply_is_right_including_for_no_sample(n):
    scripted = torch.jit.script(apply_inference)
    x, scale, shift = _args(n)
    torch.testing.assert_close(scripted(x, scale, shift), _want(x, scale, shift))


def test_one_row_of_scales_applies_to_every_sample_also_when_traced_with_one():
    traced = torch.jit.trace(apply_inference, _args(1, rows=1))
    x, scale, shift = _args(4, rows=1)
    torch.testing.assert_close(traced(x, scale, shift), _want(x, scale, shift))


def test_half_precision_input_is_applied_in_float32_and_returned_in_its_dtype():
    x, scale, shift = _args(2)
    got = apply_inference(x.bfloat16(), scale, shift)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, _want(x.bfloat16().float(), scale, shift).bfloat16())


@pytest.mark.parametrize("n", [3, 0])
def test_onnx_export_runs_in_onnxruntime_for_other_batch_sizes_including_none(n):
    ort = pytest.importorskip("onnxruntime")

    class Apply(torch.nn.Module):
        def forward(self, x, scale, shift):
            return apply_inference(x, scale, shift)

    buffer = io.BytesIO()
    dynamic = {"x": {0: "n", 2: "h", 3: "w"}, "scale": {0: "n"}, "shift": {0: "n"}}
    names = list(dynamic)
    torch.onnx.export(
        Apply(), _args(2), buffer, dynamo=False, input_names=names, dynamic_axes=dynamic
    )
    session = ort.InferenceSession(buffer.getvalue())
    x, scale, shift = _args(n)
    (got,) = session.run(None, dict(zip(names, (t.numpy() for t in (x, scale, shift)))))
    torch.testing.assert_close(torch.from_numpy(got), _want(x, scale, shift))
