"""Sparse Switchable Normalization (SSN; Shao et al., CVPR 2019): SN whose mix weights are the
sparsestmax of the logits, so that, as the radius rises from 0 to 1 over training, each layer ends
on exactly one of IN, LN and BN for its means and one for its variances.

Statistics, kernels and SyncSN's exact all-gather are SN's: only ``mix_weights`` differs. The
radius, the fixed flags and the choice of a fixed layer live on the device: a training step reads
no host value. ``set_ssn_radius`` and ``hold_fixed_logits`` are what a training loop calls.
"""

import warnings
from typing import Iterator, Tuple

import torch
from torch import Tensor, nn

from .sparsestmax import is_one_hot, sparsestmax, weights_as_logits
from .switch_norm import LOGIT_NAMES, SSN_BUFFER_NAMES, SwitchNorm2d
from .sync_switch_norm import SyncSwitchNorm2d


class _SparseMixin:
    """The SSN part of :class:`SparseSwitchNorm2d` and :class:`SyncSparseSwitchNorm2d`, placed
    before the SN class in their bases.

    Buffers (saved): ``radius`` (float, shape (1,)), ``mean_fixed`` and ``var_fixed`` (long,
    shape (1,), 0 or 1, as the official ``SSN2d``). Not saved: ``choice`` (2, K), the one-hot
    weights of the mean and variance vectors once fixed, rebuilt from the logits on loading
    (``hold_fixed_logits`` keeps a fixed layer's logits at its choice)."""

    _holds_sparse_state = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        num_branches = self.mean_weight.shape[0]
        self.register_buffer("radius", torch.zeros(1))
        self.register_buffer("mean_fixed", torch.zeros(1, dtype=torch.long))
        self.register_buffer("var_fixed", torch.zeros(1, dtype=torch.long))
        self.register_buffer("choice", torch.zeros(2, num_branches), persistent=False)

    def _fixed(self) -> Tensor:
        """(2,) bool: whether the mean and the variance weights are fixed."""
        return torch.cat([self.mean_fixed, self.var_fixed]) != 0

    def _sparse_weights(self, update: bool) -> Tuple[Tensor, Tensor]:
        logits = torch.stack([self.mean_weight, self.var_weight])
        weights = sparsestmax(logits, self.radius.reshape(()).to(logits.dtype))
        fixed = self._fixed()
        if update:
            # a weight vector that is one-hot now is fixed from now on, on its exact one-hot
            with torch.no_grad():
                branches = torch.arange(weights.shape[1], device=weights.device)
                one_hot = (branches == weights.argmax(dim=1, keepdim=True)).to(self.choice.dtype)
                self.choice.copy_(torch.where(fixed[:, None], self.choice, one_hot))
                fixed = fixed | is_one_hot(weights)
                self.mean_fixed.copy_(fixed[:1])
                self.var_fixed.copy_(fixed[1:])
        weights = torch.where(fixed[:, None], self.choice.to(weights.dtype), weights)
        return weights[0], weights[1]

    def mix_weights(self) -> Tuple[Tensor, Tensor]:
        """(p, q): ``sparsestmax(logits, radius)`` of the mean and variance logits, or the
        constant one-hot choice of a fixed vector (no gradient to its logits)."""
        return self._sparse_weights(False)

    def _forward_mix_weights(self) -> Tuple[Tensor, Tensor]:
        return self._sparse_weights(self.training)

    def softmax_logits(self) -> Tuple[Tensor, Tensor]:
        """Logits whose softmax is :meth:`mix_weights` (a weight of 0 becomes a logit of -1e4,
        whose share is exactly 0): what a frozen (softmax) SN layer holds for this layer."""
        with torch.no_grad():
            p, q = self.mix_weights()
            return tuple(weights_as_logits(w) for w in (p, q))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.mean_fixed.zero_()
        self.var_fixed.zero_()
        self.choice.zero_()

    def extra_repr(self) -> str:
        return super().extra_repr() + ", sparse=True"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        absent = [name for name in SSN_BUFFER_NAMES if prefix + name not in state_dict]
        if absent and any(prefix + name in state_dict for name in LOGIT_NAMES):
            warnings.warn(  # without the layer's name: Python shows it once, not per layer
                f"an SSN layer's state has SN logits but no {', '.join(absent)} (an SN "
                "checkpoint?): such layers start from those logits, not fixed, at the radius "
                "they have"
            )
            for name in absent:
                state_dict[prefix + name] = getattr(self, name).clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        with torch.no_grad():
            logits = torch.stack([self.mean_weight, self.var_weight])
            branches = torch.arange(logits.shape[1], device=logits.device)
            self.choice.copy_(branches == logits.argmax(dim=1, keepdim=True))


class SparseSwitchNorm2d(_SparseMixin, SwitchNorm2d):
    """Sparse Switchable Normalization over (N, C, H, W) inputs: :class:`SwitchNorm2d` with mix
    weights ``sparsestmax(logits, radius)`` (``layers.sparsestmax``) instead of their softmax.

    ``radius`` (a buffer, 0 at construction) is set by :func:`set_ssn_radius`, by the training
    loop from 0 to 1 (``iter / max_iter``); at 1 every weight vector is one-hot. A training
    forward that finds the mean (or variance) weights one-hot fixes them: from then on they are
    that constant one-hot vector, whatever the logits and the radius, and their logits get no
    gradient; :func:`hold_fixed_logits` after each optimizer step keeps the logits of fixed
    vectors at their choice (1 for the chosen branch, 0 for the others) against weight decay and
    momentum. All of this stays on the device. :meth:`shares` gives the sparse weights.

    Caveat: at exactly equal logits (the initial state) sparsestmax leaves the weights at the
    uniform point until a gradient step breaks the tie (``layers.sparsestmax``).
    """


class SyncSparseSwitchNorm2d(_SparseMixin, SyncSwitchNorm2d):
    """:class:`SparseSwitchNorm2d` whose BN branch sees the batch of every process (as
    :class:`SyncSwitchNorm2d`). The radius and fixed flags are buffers, which DDP broadcasts
    from rank 0, so every process mixes with the same weights."""

    _unsynchronized_class = SparseSwitchNorm2d


def sparse_switch_norms(model: nn.Module) -> Iterator[Tuple[str, _SparseMixin]]:
    """(name, layer) of every SSN layer (synchronized or not) of ``model`` in module order."""
    for name, module in model.named_modules():
        if isinstance(module, _SparseMixin):
            yield name, module


def set_ssn_radius(model: nn.Module, radius: float) -> int:
    """Set the sparsestmax radius of every SSN layer of ``model`` to ``radius`` (a Python number
    in [0, 1]; written on the device without a sync). Returns the number of SSN layers."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"the SSN radius must be a Python number in [0, 1], got {radius!r}")
    if not 0.0 <= radius <= 1.0:
        raise ValueError(f"the SSN radius must be in [0, 1] (iter / max_iter), got {radius}")
    count = 0
    for _, layer in sparse_switch_norms(model):
        layer.radius.fill_(float(radius))
        count += 1
    return count


@torch.no_grad()
def hold_fixed_logits(model: nn.Module) -> None:
    """Write back the logits of every fixed weight vector of ``model``'s SSN layers to their
    choice (1 for the chosen branch, 0 for the others), undoing whatever the optimizer step did
    to them (weight decay, momentum); call it after each optimizer step. On the device, no sync.
    """
    for _, layer in sparse_switch_norms(model):
        fixed = layer._fixed()
        for row, name in enumerate(LOGIT_NAMES):
            logits = getattr(layer, name)
            held = torch.where(fixed[row], layer.choice[row].to(logits.dtype), logits)
            logits.copy_(held)
