"""How this package's builders read a norm: from a YAML config key, or as a constructor argument.

Both routes resolve names through :func:`sn_detection.layers.norm_factory`; an unknown name raises
an :class:`~sn_detection.layers.norm.UnknownNormError` that names the config key or argument.
"""

from typing import Any, Iterable, Mapping, Optional

from detectron2.config import CfgNode, configurable

from ..config import sn_options
from ..layers.norm import NormArg, norm_factory

__all__ = ["config_norm", "with_norm_callables", "NamedNorm"]

SNOptions = Optional[Mapping[str, Any]]


def config_norm(cfg: CfgNode, node: str) -> NormArg:
    """``MODEL.<node>.NORM`` of ``cfg`` as detectron2's blocks take it ("" or a callable), with
    the SN options of ``MODEL.SN``."""
    return norm_factory(cfg.MODEL[node].NORM, key=f"MODEL.{node}.NORM", **sn_options(cfg))


def with_norm_callables(cfg: CfgNode, nodes: Iterable[str]) -> CfgNode:
    """A copy of ``cfg`` whose ``MODEL.<node>.NORM`` (for each of ``nodes``) are callables from
    :func:`config_norm`, for detectron2's own builders, which hand ``NORM`` to blocks that accept
    a callable.

    yacs takes only plain values by attribute assignment, so the callables are stored as dict
    items; the copy is for building only (never saved or merged).
    """
    cfg = cfg.clone()
    for node in nodes:
        dict.__setitem__(cfg.MODEL[node], "NORM", config_norm(cfg, node))
    return cfg


class NamedNorm:
    """Mixin of our subclasses of detectron2's heads: their norm argument (``_norm_arg``) may be a
    norm name, built with ``sn_options``, as well as a callable; from a YAML config it is
    ``MODEL.<_norm_node>.NORM``."""

    _norm_arg = "conv_norm"
    _norm_node = ""  # set by each subclass, e.g. "ROI_BOX_HEAD"

    @configurable
    def __init__(self, input_shape: Any, *, sn_options: SNOptions = None, **kwargs: Any):
        arg = self._norm_arg
        where = f"{type(self).__name__}'s {arg}"
        kwargs[arg] = norm_factory(kwargs.get(arg, ""), key=where, **(sn_options or {}))
        # by keyword: a LazyConfig input_shape may be a DictConfig (SemSegFPNHead's), which
        # detectron2's @configurable would take for a config if it came first
        super().__init__(input_shape=input_shape, **kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Any) -> dict:
        ret = super().from_config(cfg, input_shape)
        ret[cls._norm_arg] = config_norm(cfg, cls._norm_node)
        return ret
