"""The one place that turns a norm name into a layer: SN's names here, every other one detectron2's.

:func:`get_norm` builds a layer; :func:`norm_factory` gives what detectron2's blocks take as
``norm`` ("" or a callable ``channels -> module``), which is how this package's builders reach
detectron2's. An unknown name raises :class:`UnknownNormError`, naming where the name came from and
listing every valid name.
"""

import functools
from typing import Any, Callable, Dict, List, Optional, Union

from detectron2.layers import get_norm as d2_get_norm
from torch import nn

from ..utils.cli import InputError
from .sparse_switch_norm import SparseSwitchNorm2d, SyncSparseSwitchNorm2d
from .switch_norm import SwitchNorm2d
from .sync_switch_norm import SyncSwitchNorm2d

# Names detectron2's get_norm understands (detectron2/layers/batch_norm.py);
# tests/layers/test_norm_registry.py checks that each still builds there.
DETECTRON2_NORMS = (
    "BN",
    "SyncBN",
    "FrozenBN",
    "GN",
    "nnSyncBN",
    "naiveSyncBN",
    "naiveSyncBN_N",
    "LN",
)

# name -> constructor(channels, **sn_options) of the norms this package adds
NORMS: Dict[str, Callable[..., nn.Module]] = {}

NormSpec = Union[str, Callable[[int], nn.Module], None]
NormArg = Union[str, Callable[[int], nn.Module]]


class UnknownNormError(InputError):
    """A norm name that is neither registered here nor detectron2's."""


def register_norm(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Register ``constructor(channels, **sn_options)`` under ``name`` (not a detectron2 name)."""
    if name in NORMS or name in DETECTRON2_NORMS:
        raise ValueError(f"norm {name!r} is already registered")
    NORMS[name] = constructor


register_norm("SN", SwitchNorm2d)
register_norm("SyncSN", SyncSwitchNorm2d)
register_norm("SSN", SparseSwitchNorm2d)  # sparse SN: each layer ends on one of IN, LN, BN
register_norm("SyncSSN", SyncSparseSwitchNorm2d)
SPARSE_NORMS = ("SSN", "SyncSSN")  # the names whose layers take MODEL.SN.SSN_* settings


def valid_norm_names() -> List[str]:
    """Every name :func:`get_norm` accepts, besides "" (no norm)."""
    return [*NORMS, *DETECTRON2_NORMS]


def check_norm_name(norm: NormSpec, key: str = "norm") -> None:
    """Raise :class:`UnknownNormError` if ``norm`` is a name that no norm has; ``key`` says where
    it was given (a config key such as ``MODEL.FPN.NORM``, or an argument)."""
    if isinstance(norm, str) and norm and norm not in NORMS and norm not in DETECTRON2_NORMS:
        raise UnknownNormError(
            f"{key} is {norm!r}, which is not a norm. Valid names: "
            f'{", ".join(valid_norm_names())} (or "" for none).'
        )


def get_norm(
    norm: NormSpec, out_channels: int, *, key: str = "norm", **sn_options: Any
) -> Optional[nn.Module]:
    """Build the norm layer ``norm`` for ``out_channels`` channels.

    Args:
        norm: "" or None for no norm (returns None); a name from :func:`valid_norm_names`; or a
            callable ``channels -> nn.Module``.
        key: where ``norm`` was given, for the error message.
        sn_options: keyword arguments for the norms registered here (SN and SSN: eps,
            momentum, using_moving_average, using_bn); detectron2's norms ignore them.
    Raises:
        UnknownNormError: for an unknown name, listing the valid ones.
    """
    if norm is None or norm == "":
        return None
    if callable(norm):
        return norm(out_channels)
    check_norm_name(norm, key)
    if norm in NORMS:
        return NORMS[norm](out_channels, **sn_options)
    return d2_get_norm(norm, out_channels)


def norm_factory(norm: NormSpec, *, key: str = "norm", **sn_options: Any) -> NormArg:
    """What to pass as ``norm`` to detectron2's blocks: "" for none, else a callable
    ``channels -> nn.Module`` (a callable ``norm`` is returned as it is).

    The name is checked here, so a typo fails when the model is built, naming ``key``.
    """
    if norm is None or norm == "":
        return ""
    if callable(norm):
        return norm
    check_norm_name(norm, key)
    return functools.partial(get_norm, norm, **sn_options)
