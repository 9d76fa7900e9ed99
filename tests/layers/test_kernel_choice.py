"""kernels.py: one switch for the fast kernels, the self-check that guards them, the status."""

import dataclasses
import importlib.util
import warnings

import pytest
import torch

from sn_detection.layers import SwitchNorm2d, kernels
from sn_detection.layers.kernels import PLAIN_KERNELS, SNKernels


def _wrong_apply(x, scale, shift):
    return PLAIN_KERNELS.apply(x, scale, shift) + 1e-2  # plausible numbers, slightly wrong


def _failing_moments(x):
    raise RuntimeError("PTX compilation failed")


@pytest.fixture
def registered():
    """Register kernels for "cpu" float64 inputs for the duration of a test."""
    added = []

    def register(**passes):
        fake = dataclasses.replace(
            PLAIN_KERNELS,
            name=f"broken-{len(added)}-{'-'.join(passes)}",
            supports=lambda x: x.dtype == torch.float64,
            **passes,
        )
        kernels.register_kernels("cpu", fake)
        added.append(fake)
        return fake

    yield register
    for fake in added:
        kernels.unregister_kernels("cpu", fake)


@pytest.mark.parametrize("passes", [{"apply": _wrong_apply}, {"moments": _failing_moments}])
def test_kernels_that_fail_their_check_warn_once_and_fall_back(registered, passes):
    fake = registered(**passes)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    warning = f"{fake.name} kernels failed their check.*{kernels.FAST_KERNELS_ENV}=0"
    with pytest.warns(UserWarning, match=warning):
        chosen = kernels.select_kernels(x)
    assert chosen is not fake
    # the layer gives the plain kernels' numbers, and the check does not run again
    layer = SwitchNorm2d(3).double()
    with kernels.fast_kernels(False):
        want = layer(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(layer(x), want)
        assert kernels.select_kernels(x) is chosen


def test_kernels_that_pass_their_check_are_chosen(registered):
    good = registered()  # the plain passes under another name
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert kernels.select_kernels(x) is good
    assert kernels.select_kernels(x.float()) is not good  # not supported: next choice
    with kernels.fast_kernels(False):
        assert kernels.select_kernels(x) is PLAIN_KERNELS


def test_self_check_compares_every_pass():
    for name in ("moments", "apply", "backward_reduce", "backward_apply"):
        plain = getattr(PLAIN_KERNELS, name)

        def off(*args, plain=plain):
            out = plain(*args)
            return tuple(t * 1.01 for t in out) if isinstance(out, tuple) else out * 1.01

        broken = dataclasses.replace(PLAIN_KERNELS, name="off", **{name: off})
        problem = kernels.self_check(broken, torch.device("cpu"), torch.float32)
        assert problem is not None and problem.startswith(name), problem
    assert kernels.self_check(PLAIN_KERNELS, torch.device("cpu"), torch.bfloat16) is None


def _import_kernels_afresh():
    """A new copy of the kernels module, imported now (the switches are read on import)."""
    spec = importlib.util.spec_from_file_location(kernels.__name__, kernels.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_environment_switches_are_read_once_at_import(monkeypatch):
    monkeypatch.setenv(kernels.FAST_KERNELS_ENV, "0")
    monkeypatch.setenv(kernels.COMPILE_ENV, "1")
    fresh = _import_kernels_afresh()
    monkeypatch.setenv(kernels.FAST_KERNELS_ENV, "1")
    monkeypatch.setenv(kernels.COMPILE_ENV, "0")
    assert fresh.kernels_status("cpu") == "plain" and fresh.compile_mixer_mode() == "1"


def test_a_wrong_environment_switch_fails_the_import_naming_its_value(monkeypatch):
    monkeypatch.setenv(kernels.FAST_KERNELS_ENV, "maybe")
    with pytest.raises(ValueError, match="SN_DETECTION_FAST_KERNELS='maybe'"):
        _import_kernels_afresh()


def test_every_kernel_contract_field_is_documented():
    for field in dataclasses.fields(SNKernels):
        assert field.name in SNKernels.__doc__
