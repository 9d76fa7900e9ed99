"""Switchable Normalization with BN-branch statistics synchronized across processes."""

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .mixer import combine_summaries
from .switch_norm import SwitchNorm2d
from .switch_norm_function import BatchNormSource, BatchReduction


def _world_size() -> int:
    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


class ProcessGroupReduction(BatchReduction):
    """The BN statistics of every process of the default group: forward gathers each process's
    summary (one all_gather of 2C+1 numbers) and combines them exactly, whatever the processes'
    sample counts; backward sums the gradients of the BN statistics (one all_reduce of 2C).

    The first gather of a layer also checks that every process has the same channel count and
    statistics dtype, and raises a ValueError on every process when they differ, instead of
    hanging or aborting in the collective."""

    traceable = False

    def __init__(self, layer: "SyncSwitchNorm2d"):
        self.layer = layer

    def combine(self, summary: Tensor) -> Tensor:
        world = _world_size()
        gathered = [torch.empty_like(summary) for _ in range(world)]
        if not self.layer._checked_across_processes:
            self._check(summary, world)
        dist.all_gather(gathered, summary.contiguous())
        return combine_summaries(torch.stack(gathered))

    def sum_gradients(self, grads: Tensor) -> Tensor:
        grads = grads.contiguous()
        dist.all_reduce(grads)
        return grads

    def _check(self, summary: Tensor, world: int) -> None:
        layer = self.layer
        mine = torch.tensor(
            [layer.num_features, torch.finfo(summary.dtype).bits],
            dtype=torch.int64,
            device=summary.device,
        )
        gathered = [torch.zeros_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        counts = [int(t[0]) for t in gathered]
        bits = [int(t[1]) for t in gathered]
        if len(set(counts)) > 1:
            raise ValueError(
                f"SyncSwitchNorm2d: processes disagree on this layer's channel count {counts} "
                f"(rank {dist.get_rank()} has {layer.num_features}). Every process must build the "
                "same model and call its SyncSN layers in the same order."
            )
        if len(set(bits)) > 1:
            raise ValueError(
                f"SyncSwitchNorm2d: processes disagree on the dtype of this layer's statistics "
                f"(float bits per rank: {bits}; rank {dist.get_rank()} has {summary.dtype}). "
                "Every process must run the model in the same dtype."
            )
        layer._checked_across_processes = True


class SyncSwitchNorm2d(SwitchNorm2d):
    """:class:`SwitchNorm2d` whose BN branch sees the batch of every process.

    In training with an initialised default process group of more than one process, the BN-branch
    mean and variance are those of the union of all processes' samples: each forward gathers
    every process's (sample count, mean, sum of squared deviations) per channel and combines them
    exactly (Chan et al.'s parallel formula: no E[x^2] - E[x]^2 cancellation, any batch sizes; a
    process with an empty batch contributes nothing but still takes part), and backward makes one
    all-reduce of the gradients of the BN statistics, reaching every process's input and the
    logits. IN and LN statistics stay per sample. Running statistics are updated from the
    synchronized statistics, so they stay identical on every process.

    With one process, in eval mode, without an initialised process group, or with
    ``using_bn=False``, this is exactly :class:`SwitchNorm2d`. Every process must run the layer in
    the same order, in the same mode, with the same ``num_features`` and dtype; the first
    synchronized forward of each layer checks channel count and statistics dtype across processes
    (one extra small collective, once). With DistributedDataParallel, which averages gradients,
    the parameter gradients are those of the mean of the processes' losses. Works on any backend
    (gloo, NCCL) through ``torch.distributed``.
    """

    # what revert_sync_switchnorm turns this class into
    _unsynchronized_class = SwitchNorm2d

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._checked_across_processes = False

    def _synchronizes(self) -> bool:
        return self.training and self.using_bn and _world_size() > 1

    def _bn_source(self) -> BatchNormSource:
        if self._synchronizes():
            return ProcessGroupReduction(self)
        return super()._bn_source()

    def _empty_output(self, x: Tensor) -> Tensor:
        y = super()._empty_output(x)
        if self._synchronizes():
            # take part in the other processes' collectives, forward and backward, with no sample
            y = y + self._normalize(x.new_zeros((0, self.num_features, 1, 1))).sum()
        return y

    @classmethod
    def revert_sync_switchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every SyncSwitchNorm2d in it replaced, in place where it is a
        child, by a SwitchNorm2d (a SparseSwitchNorm2d for the sparse form) with the same
        settings, parameters, statistics and buffers (what deployment wants: inference has no
        processes to synchronize; an exported SyncSN model is an SN model). Requires-grad flags,
        device and dtype are kept; values are copied exactly."""
        if isinstance(module, cls):
            plain = module._unsynchronized_class(
                module.num_features,
                eps=module.eps,
                momentum=module.momentum,
                using_moving_average=module.using_moving_average,
                using_bn=module.using_bn,
            ).to(device=module.weight.device, dtype=module.weight.dtype)
            plain.load_state_dict(module.state_dict())
            with torch.no_grad():
                for name, buffer in module.named_buffers(recurse=False):  # the unsaved ones too
                    getattr(plain, name).copy_(buffer)
            for name, param in plain.named_parameters():
                param.requires_grad_(getattr(module, name).requires_grad)
            return plain.train(module.training)
        for name, child in module.named_children():
            new_child = cls.revert_sync_switchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module
