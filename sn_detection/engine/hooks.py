"""Training hooks for SN models: the learned shares in the EventStorage (:class:`SNSharesWriter`),
precise statistics (:class:`PreciseSN`), a warning for batches whose statistics were not
finite (:class:`NonFiniteBatchWarner`), and sparse SN's radius schedule (:class:`SSNSchedule`)."""

import itertools
import logging
from typing import Any, Iterable, Set, Tuple

from detectron2.engine import HookBase, hooks
from detectron2.utils.events import EventStorage
from fvcore.nn.precise_bn import get_bn_modules
from torch import nn

from ..analysis import layer_shares, share_scalars
from ..layers import (
    hold_fixed_logits,
    named_switch_norms,
    nonfinite_batches,
    set_ssn_radius,
    sparse_switch_norms,
)
from ..utils.cli import InputError
from .precise_sn import get_sn_modules, update_sn_stats, why_nothing_to_update

# detectron2's DefaultTrainer writes metrics every 20 iterations (its PeriodicWriter)
WRITER_PERIOD = 20


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper: layer names as in its checkpoints."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class SNSharesWriter(HookBase):
    """Every ``period`` iterations and after the last one (when detectron2's PeriodicWriter
    writes; register this hook before it), puts the shares of the model's SN layers (frozen ones
    included) into the EventStorage: ``sn/<part>/<mean|var>_<IN|LN|BN>``, the mean share over the
    part's layers (``sn_detection.analysis``), and the model-wide mean BN shares
    ``[metric]sn/BN_mean`` and ``[metric]sn/BN_var``, which the console writer prints.

    The logits are read only then, in one transfer from the device. Run it on the main process
    only, as the writers.
    """

    def __init__(self, model: nn.Module, period: int = WRITER_PERIOD):
        if period <= 0:
            raise InputError(f"SNSharesWriter: period must be positive, got {period}")
        self._layers = list(named_switch_norms(_unwrap(model)))
        self._period = period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self.write()

    def write(self) -> None:
        """Put the current shares into the trainer's EventStorage at its current iteration."""
        layers = layer_shares(self._layers)
        self.trainer.storage.put_scalars(smoothing_hint=False, **share_scalars(layers))


class NonFiniteBatchWarner(HookBase):
    """Every ``period`` iterations and after the last one, reads how many training batches each
    SN layer skipped because their statistics were not finite (``layers.nonfinite_batches``: one
    host transfer for the whole model) and logs one warning per layer the first time its count is
    non-zero, naming the layer and the count. Later batches of the same layer are not reported
    again."""

    def __init__(self, model: nn.Module, period: int = WRITER_PERIOD):
        if period <= 0:
            raise InputError(f"NonFiniteBatchWarner: period must be positive, got {period}")
        self._model = _unwrap(model)
        self._period = period
        self._reported: Set[str] = set()
        self._logger = logging.getLogger(__name__)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            self.check(next_iter)

    def check(self, iteration: int) -> None:
        """Warn about the layers whose count became non-zero since the last check."""
        for name, count in nonfinite_batches(self._model).items():
            if name in self._reported:
                continue
            self._reported.add(name)
            self._logger.warning(
                f"SN layer {name}: {count} training batch(es) with non-finite statistics by "
                f"iteration {iteration}; they did not update its running statistics (look for "
                "NaN/inf in the inputs or a diverging loss)"
            )


class PreciseSN(hooks.PreciseBN):
    """detectron2's PreciseBN for models with SN: every ``period`` iterations (before the
    evaluation; 0: never) and after the last iteration, recomputes with the weights fixed the
    BN-branch running statistics of every SN/SyncSN layer in training mode, as the plain average
    over ``num_iter`` batches of ``data_loader``, and those of every BatchNorm layer in training
    mode as PreciseBN does, in the same batches (``update_sn_stats``). Events of the pass go to a
    storage of their own and are discarded.

    Frozen SN layers and SN layers without the BN branch are left alone. With SyncSN the
    statistics are global and identical on every process: run the hook on every process. A model
    with nothing to recompute gets one warning saying why, and the hook does nothing. The errors
    and the warning name ``config_keys``, the keys that enable the pass and set ``num_iter``.
    """

    def __init__(
        self,
        period: int,
        model: nn.Module,
        data_loader: Iterable[Any],
        num_iter: int,
        config_keys: Tuple[str, str] = ("TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER"),
    ):
        self._logger = logging.getLogger(__name__)
        enabled_key, num_iter_key = config_keys
        if num_iter <= 0:
            raise InputError(
                f"{num_iter_key} must be positive (batches of the precise statistics "
                f"pass, e.g. 200), got {num_iter}; or set {enabled_key} False"
            )
        self._model = model
        self._data_loader = data_loader
        self._num_iter = num_iter
        self._period = period
        self._data_iter = None
        self._disabled = not has_statistics_to_update(model)
        if self._disabled:
            self._logger.warning(
                f"{enabled_key} is True but {why_nothing_to_update(model)}: precise "
                f"statistics are not computed. Set {enabled_key} False to silence this."
            )

    def update_stats(self) -> None:
        """Recompute the statistics now (also callable by hand)."""
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)
        batches = (next(self._data_iter) for _ in itertools.count())  # reuses the iterator
        with EventStorage():  # the model's training events of the pass are discarded
            self._logger.info(
                f"Running precise SN/BN statistics for {self._num_iter} iterations "
                f"({len(get_sn_modules(self._model))} SN, {len(get_bn_modules(self._model))} BN "
                "layers)."
            )
            update_sn_stats(self._model, batches, self._num_iter)


def has_statistics_to_update(model: nn.Module) -> bool:
    """Whether the precise pass recomputes anything in ``model`` (SN or BN layers to update)."""
    return bool(get_sn_modules(model) or get_bn_modules(model))


class SSNSchedule(HookBase):
    """Sparse SN's schedule: before each step, the radius of every SSN layer is
    ``iter / max_iter`` (0 at the start, (max_iter - 1) / max_iter at the last step, which is
    past every vertex: each layer ends fixed), also right after ``--resume``, and the same on
    every process; after each step, :func:`~sn_detection.layers.hold_fixed_logits` keeps the
    logits of fixed layers where they were (no weight decay, no momentum drift). Register it
    before the checkpointer, so that checkpoints hold the held logits. Device-only, no sync."""

    def __init__(self, model: nn.Module, max_iter: int):
        if max_iter <= 0:
            raise InputError(f"SSNSchedule: max_iter must be positive, got {max_iter}")
        self._model = _unwrap(model)
        self._max_iter = max_iter

    def before_step(self):
        set_ssn_radius(self._model, min(self.trainer.iter / self._max_iter, 1.0))

    def after_step(self):
        hold_fixed_logits(self._model)


def has_sparse_switch_norms(model: nn.Module) -> bool:
    """Whether ``model`` has a sparse SN layer (so needs :class:`SSNSchedule`)."""
    return any(True for _ in sparse_switch_norms(_unwrap(model)))
