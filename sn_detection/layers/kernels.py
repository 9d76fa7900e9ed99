"""Which code computes SN's full-size passes: the registry of fast kernels per device type (the
C++/OpenMP CPU kernels of ``cpu_kernels.py``, the Triton CUDA kernels of ``triton_kernels.py``,
loaded on the first :func:`select_kernels`), the switches, the self-check and the status. This
module is the only place that chooses; the contract and the plain kernels, the oracle of the fast
ones, are in ``kernel_contract.py``. A fast implementation is checked against the plain kernels
the first time it is chosen for a device and dtype; a failure warns once and the plain kernels
serve that device and dtype for the rest of the process.

Switches, read once when this module is imported and changeable in code:

- ``SN_DETECTION_FAST_KERNELS``: "1" (default) or "0" to force the plain kernels everywhere;
  :func:`set_fast_kernels` (as timm's ``set_fast_norm``), or :func:`fast_kernels` for a block.
- ``SN_DETECTION_COMPILE_MIXER``: "auto" (default: compile the (N, C) mixer with
  ``torch.compile`` on CUDA), "1" (on every device) or "0" (never); :func:`set_compile_mixer`.
"""

import contextlib
import logging
import os
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from .kernel_contract import PLAIN_KERNELS, SNKernels, stats_dtype

logger = logging.getLogger(__name__)

FAST_KERNELS_ENV = "SN_DETECTION_FAST_KERNELS"
COMPILE_ENV = "SN_DETECTION_COMPILE_MIXER"
COMPILE_MODES = ("auto", "0", "1")


def _read_env(name: str, default: str, allowed: Tuple[str, ...]) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, allowed))}")
    return value


class _KernelChoice:
    """The state of the choice: the registry, the switches and the self-check results."""

    def __init__(self):
        self.fast: Dict[str, List[SNKernels]] = {}  # device type -> kernels, first choice first
        self.use_fast = _read_env(FAST_KERNELS_ENV, "1", ("0", "1")) == "1"
        self.compile_mode = _read_env(COMPILE_ENV, "auto", COMPILE_MODES)
        self.backends_loaded = False
        # (kernels name, device, dtype) -> whether the kernels passed the self-check there
        self.checked: Dict[Tuple[str, str, torch.dtype], bool] = {}


_CHOICE = _KernelChoice()


def register_kernels(device_type: str, kernels: SNKernels) -> None:
    """Make ``kernels`` the first choice for inputs on ``device_type`` that they support."""
    _CHOICE.fast.setdefault(device_type, []).insert(0, kernels)


def unregister_kernels(device_type: str, kernels: SNKernels) -> None:
    """Undo ``register_kernels(device_type, kernels)``, and forget its self-check results."""
    _CHOICE.fast[device_type].remove(kernels)
    for key in [k for k in _CHOICE.checked if k[0] == kernels.name]:
        del _CHOICE.checked[key]


def set_fast_kernels(enabled: bool) -> None:
    """Use the registered fast kernels (True, the default) or the plain ones everywhere."""
    _CHOICE.use_fast = bool(enabled)


def fast_kernels_enabled() -> bool:
    """Whether fast kernels may be chosen (``SN_DETECTION_FAST_KERNELS``, ``set_fast_kernels``)."""
    return _CHOICE.use_fast


@contextlib.contextmanager
def fast_kernels(enabled: bool) -> Iterator[None]:
    """``set_fast_kernels(enabled)`` for the duration of a block (tests and benchmarks)."""
    before = _CHOICE.use_fast
    set_fast_kernels(enabled)
    try:
        yield
    finally:
        set_fast_kernels(before)


def set_compile_mixer(mode: str) -> None:
    """Compile SN's (N, C) mixer with torch.compile: "auto" (on CUDA), "1" (always), "0"."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: expected one of {COMPILE_MODES}")
    _CHOICE.compile_mode = mode


def compile_mixer_mode() -> str:
    """The current mode of :func:`set_compile_mixer` ("auto", "1" or "0")."""
    return _CHOICE.compile_mode


def compiles_mixer_on(device: torch.device) -> bool:
    """Whether the mixer is compiled for tensors on ``device``."""
    mode = _CHOICE.compile_mode
    return mode == "1" or (mode == "auto" and device.type == "cuda")


def _load_backends() -> None:
    """Register the fast kernels that are available here (once)."""
    if _CHOICE.backends_loaded:
        return
    _CHOICE.backends_loaded = True
    from . import cpu_kernels, triton_kernels

    for device_type, kernels in (
        ("cpu", cpu_kernels.CPU_KERNELS),
        ("cuda", triton_kernels.default_kernels()),
    ):
        if kernels is not None and kernels not in _CHOICE.fast.get(device_type, ()):
            _CHOICE.fast.setdefault(device_type, []).append(kernels)


def _tolerance(dtype: torch.dtype) -> Dict[str, float]:
    if dtype == torch.float64:
        return {"rtol": 1e-9, "atol": 1e-9}
    if dtype == torch.float32:
        return {"rtol": 1e-4, "atol": 1e-4}
    return {"rtol": 3e-2, "atol": 3e-2}  # half and bfloat16 outputs


def self_check(kernels: SNKernels, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Compare every pass of ``kernels`` with the plain kernels on small inputs of ``device`` and
    ``dtype`` (which ``kernels`` must support); None if they agree, else what went wrong."""
    generator = torch.Generator().manual_seed(0)
    sdtype = stats_dtype(dtype)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        # a plane of many elements, planes of a few, and single-element planes (var = 0)
        for shape in ((2, 3, 9, 13), (4, 5, 2, 3), (3, 2, 1, 1)):
            x, dy = (
                (torch.randn(shape, generator=generator) * 2 + 3).to(device, dtype)
                for _ in range(2)
            )
            a, b, c = (
                torch.randn(shape[:2], generator=generator).to(device, sdtype) for _ in range(3)
            )
            if not kernels.supports(x):
                continue
            passes = {
                "moments": lambda k: k.moments(x),
                "apply": lambda k: k.apply(x, a, b),
                "backward_reduce": lambda k: k.backward_reduce(dy, x),
                "backward_apply": lambda k: k.backward_apply(dy, x, a, b, c),
            }
            for name, run in passes.items():
                try:
                    got = run(kernels)
                except Exception as e:  # any failure means: do not use them
                    return f"{name} failed on shape {shape}: {type(e).__name__}: {e}"
                want = run(PLAIN_KERNELS)
                got = got if isinstance(got, tuple) else (got,)
                want = want if isinstance(want, tuple) else (want,)
                for g, w in zip(got, want):
                    tol = _tolerance(g.dtype)
                    if g.shape != w.shape or not torch.allclose(
                        g.float().cpu(), w.float().cpu(), **tol
                    ):
                        err = None
                        if g.shape == w.shape:
                            err = (g.double() - w.double()).abs().max().item()
                        return (
                            f"{name} differs from the plain kernels on shape {shape} "
                            f"(max abs error {err}, shapes {tuple(g.shape)} vs {tuple(w.shape)})"
                        )
    return None


def _passes_self_check(kernels: SNKernels, x: Tensor) -> bool:
    key = (kernels.name, str(x.device), x.dtype)
    ok = _CHOICE.checked.get(key)
    if ok is None:
        problem = self_check(kernels, x.device, x.dtype)
        ok = problem is None
        _CHOICE.checked[key] = ok
        if not ok:
            warnings.warn(
                f"SN's {kernels.name} kernels failed their check on {x.device} {x.dtype}: "
                f"{problem}. SN uses the plain PyTorch kernels there for the rest of this "
                f"process (set {FAST_KERNELS_ENV}=0 to skip the fast kernels and this check)."
            )
    return ok


def select_kernels(x: Tensor) -> SNKernels:
    """The kernels SN uses for ``x``: the first registered fast kernels that support it and passed
    their self-check on its device and dtype, else the plain kernels."""
    if _CHOICE.use_fast:
        _load_backends()
        for kernels in _CHOICE.fast.get(x.device.type, ()):
            if kernels.supports(x) and _passes_self_check(kernels, x):
                return kernels
    return PLAIN_KERNELS


def kernels_status(device="cpu", dtype: Optional[torch.dtype] = None) -> str:
    """The name of the kernels a contiguous tensor on ``device`` of ``dtype`` (default float32)
    gets now (this runs the self-check if it has not run there yet)."""
    x = torch.zeros(1, 1, 1, 1, device=device, dtype=dtype or torch.float32)
    return select_kernels(x).name
