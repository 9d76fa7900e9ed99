"""Precise SN statistics: the BN-branch running statistics of SN layers recomputed for the current
weights, as the plain average over a number of training batches with the weights fixed (the
official "batch average"), together with fvcore's ``update_bn_stats`` for BatchNorm layers."""

import itertools
import logging
from typing import Any, Iterable, List

import torch
from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats
from torch import nn

from ..layers import SwitchNorm2d, named_switch_norms
from ..utils.cli import InputError

logger = logging.getLogger(__name__)


def get_sn_modules(model: nn.Module) -> List[SwitchNorm2d]:
    """The SN layers whose statistics the precise pass recomputes: ``SwitchNorm2d`` and
    ``SyncSwitchNorm2d`` in training mode with a BN branch. Frozen layers, layers in eval mode
    and layers without the BN branch (no running statistics) are left alone."""
    return [
        m
        for _, m in named_switch_norms(model)
        if isinstance(m, SwitchNorm2d) and m.training and m.using_bn
    ]


def why_nothing_to_update(model: nn.Module) -> str:
    """Why the precise pass has nothing to recompute in ``model`` (which layers it has instead)."""
    norms = [m for _, m in named_switch_norms(model)]
    kinds = {
        "frozen (FrozenSwitchNorm2d)": sum(not isinstance(m, SwitchNorm2d) for m in norms),
        "without the BN branch (MODEL.SN.USING_BN False)": sum(
            isinstance(m, SwitchNorm2d) and not m.using_bn for m in norms
        ),
        "in eval mode": sum(
            isinstance(m, SwitchNorm2d) and m.using_bn and not m.training for m in norms
        ),
    }
    found = ", ".join(f"{n} {kind}" for kind, n in kinds.items() if n) or "no SN layer"
    return (
        "the model has no layer with batch statistics to recompute: no BatchNorm and no "
        "SwitchNorm2d/SyncSwitchNorm2d with a BN branch in training mode (it has "
        f"{found})"
    )


@torch.no_grad()
def update_sn_stats(model: nn.Module, data_loader: Iterable[Any], num_iters: int = 200) -> None:
    """Recompute the BN-branch running statistics of every layer of :func:`get_sn_modules` as the
    plain average of its batch statistics over ``num_iters`` batches of ``data_loader`` (each
    passed as ``model(batch)``), and those of every BatchNorm in training mode by fvcore's
    ``update_bn_stats`` in the same batches.

    The model must be in the mode the statistics are wanted for (training mode for the layers to
    update, as during training); nothing but running statistics changes: weights, training
    modes and ``using_moving_average`` are as before, and ``num_batches`` counts the batches
    averaged (with ``using_moving_average=False`` training continues that average). A batch in
    which a layer sees no sample does not count for it; a layer that sees no sample in any batch
    keeps its statistics (with a warning). ``SyncSwitchNorm2d`` averages global batch statistics,
    identical on every process: every process must call this with the same ``num_iters``.

    Raises:
        InputError: if ``num_iters`` is not positive.
        RuntimeError: if ``data_loader`` ends before ``num_iters`` batches (statistics restored).
    """
    if num_iters <= 0:
        raise InputError(
            f"the precise statistics pass needs a positive number of batches, got {num_iters} "
            "(TEST.PRECISE_BN.NUM_ITER, e.g. 200)"
        )
    layers = get_sn_modules(model)
    saved = [
        (
            m.using_moving_average,
            m.running_mean.clone(),
            m.running_var.clone(),
            m.num_batches.clone(),
        )
        for m in layers
    ]
    for m in layers:
        m.reset_running_stats()
        m.using_moving_average = False  # each batch now enters a plain average
    logger.info(f"Computing precise SN statistics for {len(layers)} SN layers ...")
    try:
        if get_bn_modules(model):
            update_bn_stats(model, data_loader, num_iters)  # also runs the batches for SN
        else:
            seen = 0
            for batch in itertools.islice(data_loader, num_iters):
                model(batch)
                seen += 1
            if seen < num_iters:
                raise RuntimeError(
                    f"the precise statistics pass needs {num_iters} batches, but the data "
                    f"loader ended after {seen}: use a loader that repeats (detectron2's "
                    "training loaders do) or a smaller TEST.PRECISE_BN.NUM_ITER"
                )
    except BaseException:
        for m, (_, mean, var, count) in zip(layers, saved):
            _restore(m, mean, var, count)
        raise
    finally:
        for m, (moving, *_) in zip(layers, saved):
            m.using_moving_average = moving
    if layers:
        counts = torch.stack([m.num_batches for m in layers]).tolist()  # one transfer
        unused = [i for i, n in enumerate(counts) if n == 0]
        for i in unused:
            _restore(layers[i], *saved[i][1:])
        if unused:
            logger.warning(
                f"Precise SN statistics: {len(unused)} of {len(layers)} SN layers saw no sample in "
                f"{num_iters} batches and keep their statistics ({_names(model, layers, unused)})"
            )


def _restore(m: SwitchNorm2d, mean, var, count) -> None:
    m.running_mean.copy_(mean)
    m.running_var.copy_(var)
    m.num_batches.copy_(count)


def _names(model: nn.Module, layers: List[SwitchNorm2d], indices: List[int]) -> str:
    names = {id(m): n for n, m in model.named_modules()}
    shown = [names.get(id(layers[i]), "?") for i in indices[:3]]
    return ", ".join(shown) + (", ..." if len(indices) > 3 else "")
