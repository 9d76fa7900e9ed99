"""Switchable Normalization with BN-branch statistics synchronized across processes."""

import torch
import torch.distributed as dist
from torch import Tensor

from .switch_norm import SwitchNorm2d
from .switch_norm_function import BatchNormSource


def _world_size() -> int:
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


class SyncSwitchNorm2d(SwitchNorm2d):
    """:class:`SwitchNorm2d` whose BN branch sees the batch of every process.

    In training with an initialised default process group of more than one process, the BN-branch
    mean and variance are those of the union of all processes' samples: each forward makes one
    all-reduce of (sum over samples of the per-sample means, sum of the per-sample second moments,
    sample count), so each process's statistics are weighted by its sample count (a process with
    an empty batch contributes nothing but still takes part), and backward makes one all-reduce of
    the gradients of those sums, reaching every process's input and the mixture logits. IN and
    LN statistics stay per sample. Running statistics are updated from the synchronized statistics,
    so they stay identical on every process.

    With one process, in eval mode, without an initialised process group, or with
    ``using_bn=False``, this is exactly :class:`SwitchNorm2d`. Every process must run the layer in
    the same order, in the same mode, with the same ``num_features`` and dtype; the first
    synchronized forward of each layer checks channel count and statistics dtype across processes
    (one extra small collective, once) and raises a ValueError on every process when they differ,
    instead of hanging or aborting in the all-reduce. With DistributedDataParallel, which averages
    gradients, the parameter gradients are those of the mean of the processes' losses.
    Works on any backend (gloo, NCCL) through ``torch.distributed``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shape_checked = False

    def _synchronizes(self) -> bool:
        return self.training and self.using_bn and _world_size() > 1

    def _has_local_work(self, x: Tensor) -> bool:
        # an empty batch still joins the collectives of the other processes
        return x.shape[0] > 0 or self._synchronizes()

    def _check_across_processes(self, stats: Tensor) -> None:
        """Raise on every process if they disagree on the channel count or the statistics dtype
        (either would make the all-reduce fail, abort the process or mix unrelated numbers)."""
        mine = torch.tensor(
            [self.num_features, torch.finfo(stats.dtype).bits],
            dtype=torch.int64,
            device=stats.device,
        )
        gathered = [torch.zeros_like(mine) for _ in range(_world_size())]
        dist.all_gather(gathered, mine)
        counts = [int(t[0]) for t in gathered]
        bits = [int(t[1]) for t in gathered]
        if len(set(counts)) > 1:
            raise ValueError(
                f"SyncSwitchNorm2d: processes disagree on this layer's channel count {counts} "
                f"(rank {dist.get_rank()} has {self.num_features}). Every process must build the "
                "same model and call its SyncSN layers in the same order."
            )
        if len(set(bits)) > 1:
            raise ValueError(
                f"SyncSwitchNorm2d: processes disagree on the dtype of this layer's statistics "
                f"(float bits per rank: {bits}; rank {dist.get_rank()} has {stats.dtype}). "
                "Every process must run the model in the same dtype."
            )
        self._shape_checked = True

    def _batch_statistics_source(self) -> BatchNormSource:
        if self._synchronizes():
            return self._all_reduce_sum
        return super()._batch_statistics_source()

    def _all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over all processes (in place); ``switch_norm`` calls this once in forward,
        with the sums behind the BN statistics, and once in backward, with their gradients."""
        if not self._shape_checked:
            self._check_across_processes(t)
        dist.all_reduce(t)
        return t
