"""Reading checkpoint files without running code, whatever their format.

Unpickling can call any function a file names. ``torch.save`` files (recognised by their first
bytes) are read with ``torch.load(weights_only=True)``, other files as plain pickles by
:class:`WeightsUnpickler`; both admit only the globals of :data:`SAFE_GLOBALS` (containers,
numbers, strings, numpy arrays, dtypes and scalars). Any other global is refused with a
one-line :class:`CheckpointError` naming the file and the global.
"""

import _codecs
import collections
import pickle
import re
from typing import IO, Any, Dict

import numpy as np
import torch

from .errors import CheckpointError, first_line


def _safe_globals() -> Dict[str, Any]:
    """Qualified name -> object, for every global a weights file may name."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    allowed: Dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "_codecs.encode": _codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
    }
    for module in ("numpy._core", "numpy.core"):  # written by numpy 2 / numpy 1
        allowed[f"{module}.multiarray._reconstruct"] = core.multiarray._reconstruct
        allowed[f"{module}.multiarray.scalar"] = core.multiarray.scalar
        allowed[f"{module}.numeric._frombuffer"] = core.numeric._frombuffer  # pickle protocol 5
    # dtype classes (numpy.dtypes.Float32DType, ...): torch's reader checks them when it BUILDs
    for code in "?bBhHiIlLqQefdgFDGSUV":
        cls = type(np.dtype(code))
        allowed[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return allowed


SAFE_GLOBALS = _safe_globals()


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class WeightsUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals of :data:`SAFE_GLOBALS` (by their
    exact qualified name) and raises for any other, before it can be called."""

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified not in SAFE_GLOBALS:
            raise _Refused(qualified)
        return SAFE_GLOBALS[qualified]


def load_pickle(f: IO[bytes]) -> Any:
    """``pickle.load(f, encoding="latin1")`` (as detectron2 reads model-zoo files, Python 2 ones
    included) through :class:`WeightsUnpickler`."""
    return WeightsUnpickler(f, encoding="latin1").load()


def refused(path: str, name: str) -> CheckpointError:
    """The one-line error for a file that names a global a weights file never contains."""
    return CheckpointError(
        f"Refusing to read checkpoint {path}: it names the Python global {name}, which weights "
        "files never contain (loading it could run code). Use weights from a trusted source, "
        "saved as tensors or numpy arrays."
    )


def unreadable(path: str, error: BaseException) -> CheckpointError:
    """The one-line error for a file that is not a readable checkpoint."""
    reason = f"{type(error).__name__}: {first_line(error)}"
    text = str(error)
    if "Weights only load failed" in text:  # torch.load(weights_only=True) refused the file
        # torch names the refused global as "GLOBAL module.name" (wording varies by version)
        name = re.search(r"GLOBAL ([\w.]+)", text)
        if name:
            return refused(path, name.group(1).rstrip("."))
        detail = text.split("WeightsUnpickler error:", 1)[-1].split("\n\n\n", 1)[-1]
        reason = "weights-only unpickling refused it: " + first_line(detail)
    return CheckpointError(
        f"Cannot read checkpoint {path}: it is truncated or not a PyTorch/detectron2 checkpoint "
        f"({reason}). Download or convert it again."
    )


# torch.save output starts with a zip header, or (before PyTorch 1.6) with a pickled magic number
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19")


def is_torch_file(path: str) -> bool:
    """Whether ``path`` was written by ``torch.save`` (judged by its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return head.startswith(_TORCH_MAGIC)


def read_checkpoint(path: str) -> Any:
    """The object stored in ``path``, read on the CPU without running code.

    A ``torch.save`` file (any suffix) is read with ``torch.load(weights_only=True)``, numpy
    arrays and scalars allowed; any other file as a pickle of plain values and numpy arrays
    (detectron2/Detectron model-zoo ``.pkl``). The object is returned as stored: no format is
    assumed (see :class:`SNCheckpointer` for detectron2's).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: one line, for a truncated file, a non-checkpoint, or a file that names
            a global outside :data:`SAFE_GLOBALS` (the global is named).
    """
    try:
        if is_torch_file(path):
            safe = [(obj, name) for name, obj in SAFE_GLOBALS.items()]
            with torch.serialization.safe_globals(safe):
                return torch.load(path, map_location="cpu", weights_only=True)
        with open(path, "rb") as f:
            return load_pickle(f)
    except FileNotFoundError:
        raise
    except _Refused as e:
        raise refused(path, e.name) from None
    except Exception as e:  # any failure to unpickle means "not readable"
        raise unreadable(path, e) from None
