"""One place that turns a norm name into a layer: SN's names here, every other one detectron2's.

detectron2's own ``get_norm`` is a closed dict that its modules import by name, so SN cannot be
added to it. Its blocks accept a norm *callable* instead; :func:`norm_factory` makes one from any
name this module knows, and the builders of this package pass that callable to detectron2.
"""
import functools
from typing import Any, Callable, Dict, List, Optional, Union

from detectron2.layers import get_norm as d2_get_norm
from torch import nn

from .switch_norm import SwitchNorm2d
from .sync_switch_norm import SyncSwitchNorm2d

# Names detectron2's get_norm understands (detectron2/layers/batch_norm.py);
# tests/layers/test_norm_registry.py checks that each still builds there.
DETECTRON2_NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN")

# name -> constructor(channels, **sn_options) of the norms this package adds
NORMS: Dict[str, Callable[..., nn.Module]] = {}

NormSpec = Union[str, Callable[[int], nn.Module], None]


def register_norm(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Register ``constructor(channels, **sn_options)`` under ``name`` (not a detectron2 name)."""
    if name in NORMS or name in DETECTRON2_NORMS:
        raise ValueError(f"norm {name!r} is already registered")
    NORMS[name] = constructor


register_norm("SN", SwitchNorm2d)
register_norm("SyncSN", SyncSwitchNorm2d)


def valid_norm_names() -> List[str]:
    """Every name :func:`get_norm` accepts ("" means no norm)."""
    return [*NORMS, *DETECTRON2_NORMS]


def get_norm(norm: NormSpec, out_channels: int, **sn_options: Any) -> Optional[nn.Module]:
    """Build the norm layer ``norm`` for ``out_channels`` channels.

    Args:
        norm: "" or None for no norm; a name from :func:`valid_norm_names`; or a callable
            ``channels -> nn.Module``.
        sn_options: keyword arguments for the norms registered here (SN: eps, momentum,
            using_moving_average, using_bn); detectron2's norms ignore them.
    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if norm is None or norm == "":
        return None
    if callable(norm):
        return norm(out_channels)
    if norm in NORMS:
        return NORMS[norm](out_channels, **sn_options)
    if norm in DETECTRON2_NORMS:
        return d2_get_norm(norm, out_channels)
    raise ValueError(
        f"Unknown norm {norm!r}. Valid names: {', '.join(valid_norm_names())} "
        "(or \"\" for none). Set MODEL.RESNETS.NORM, MODEL.FPN.NORM, MODEL.ROI_BOX_HEAD.NORM or "
        "MODEL.ROI_MASK_HEAD.NORM to one of them."
    )


def norm_factory(norm: NormSpec, **sn_options: Any) -> Union[str, Callable[[int], nn.Module]]:
    """What to pass as ``norm`` to detectron2's blocks: "" for none, else a callable.

    The name is checked here, so a typo fails when the model is built, with the list of names.
    """
    if norm is None or norm == "":
        return ""
    if callable(norm):
        return norm
    if norm not in NORMS and norm not in DETECTRON2_NORMS:
        get_norm(norm, 1)  # raises the ValueError with the valid names
    return functools.partial(get_norm, norm, **sn_options)
