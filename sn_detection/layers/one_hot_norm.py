"""SN layers whose mix weights are one-hot, as the single norm they choose: the modules that
``sn_detection.export.deployable`` puts in their place, and :func:`harden`, which rounds every SN
layer of a model to its argmax so that all of them are.

A one-hot layer's output is that of IN, LN or BN (or a mix such as IN means with BN variances)
with SN's definitions (``mixer.py``): IN statistics per (n, c) with the unbiased variance, LN per
n as ``m_L = mean_c m``, ``v_L = mean_c (v + (m - m_L)^2)``, BN from the running statistics. The
modules are plain PyTorch (scriptable, traceable, ONNX-exportable), so exported files run without
sn_detection, and compute only the statistics their choice needs.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..utils.cli import InputError
from .kernel_contract import stats_dtype
from .portable import apply_inference, moments_inference
from .sparsestmax import weights_as_logits
from .switch_norm import BRANCHES, LOGIT_NAMES, FrozenSwitchNorm2d, named_switch_norms


class ChannelAffine2d(nn.Module):
    """``x * scale + shift`` per channel of an (N, C, H, W) input: BN with its running statistics
    and affine parameters folded, computed in the statistics dtype (float32 for half inputs) and
    returned in x's dtype."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        dtype = stats_dtype(x.dtype)
        return apply_inference(x, self.scale.to(dtype)[None], self.shift.to(dtype)[None])

    def extra_repr(self) -> str:
        return str(self.scale.shape[0])


class OneHotNorm2d(nn.Module):
    """The norm of a one-hot SN layer whose means and variances are not both BN's: its mean from
    the branch ``mean_branch`` and its variance from ``var_branch`` (names of ``BRANCHES``), one
    statistics pass over x (the mean only, where the variance is BN's) and one apply. Holds
    ``weight`` and ``bias``, and ``running_mean``/``running_var`` only where that branch is BN."""

    def __init__(self, num_features: int, mean_branch: str, var_branch: str, eps: float):
        super().__init__()
        if mean_branch not in BRANCHES or var_branch not in BRANCHES:
            raise ValueError(f"branches must be among {BRANCHES}, got {mean_branch}, {var_branch}")
        if mean_branch == var_branch == "BN":
            raise ValueError("BN for both is a ChannelAffine2d (or folded into the convolution)")
        self.num_features = num_features
        self.mean_branch = mean_branch
        self.var_branch = var_branch
        self.instance_mean = mean_branch == "IN"
        self.instance_var = var_branch == "IN"
        self.batch_var = var_branch == "BN"
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        if mean_branch == "BN":
            self.register_buffer("running_mean", torch.zeros(num_features))
        if var_branch == "BN":
            self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        dtype = stats_dtype(x.dtype)
        if self.batch_var:
            m = x.to(dtype).mean(dim=(2, 3))
            v = m
        else:
            m, v = moments_inference(x)
        if hasattr(self, "running_mean"):
            mu = self.running_mean.to(dtype)[None]
        elif self.instance_mean:
            mu = m
        else:
            mu = m.mean(dim=1, keepdim=True)
        if hasattr(self, "running_var"):
            var = self.running_var.to(dtype).clamp(min=0.0)[None]
        elif self.instance_var:
            var = v
        else:
            var = (v + (m - m.mean(dim=1, keepdim=True)).square()).mean(dim=1, keepdim=True)
        scale = self.weight.to(dtype) * torch.rsqrt(var + self.eps)
        shift = self.bias.to(dtype) - mu * scale
        return apply_inference(x, scale, shift)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, mean={self.mean_branch}, var={self.var_branch}, eps={self.eps}"
        )


def one_hot_choice(layer: nn.Module) -> Optional[Tuple[str, str]]:
    """(mean branch, variance branch) of an SN layer whose mix weights (``mix_weights()``) are
    each exactly one-hot (a 1 and zeros), else None. Reads them on the host."""
    with torch.no_grad():
        weights = layer.mix_weights()
    choice = []
    for w in weights:
        if int((w == 1).sum()) != 1 or int((w == 0).sum()) != w.numel() - 1:
            return None
        choice.append(BRANCHES[int(w.argmax())])
    return choice[0], choice[1]


def bn_scale_shift(layer: nn.Module) -> Tuple[Tensor, Tensor]:
    """(scale, shift) per channel of an SN layer's BN branch with its running statistics and
    affine parameters, as SN's mixer computes them (a negative running variance counts as 0)."""
    with torch.no_grad():
        scale = layer.weight * torch.rsqrt(layer.running_var.clamp(min=0.0) + layer.eps)
        return scale, layer.bias - layer.running_mean * scale


def one_hot_norm(layer: nn.Module, choice: Tuple[str, str]) -> nn.Module:
    """The plain module computing what the one-hot SN ``layer`` with ``choice`` (see
    :func:`one_hot_choice`) computes in eval mode, on its device and dtype."""
    if choice == ("BN", "BN"):
        return ChannelAffine2d(*bn_scale_shift(layer))
    norm = OneHotNorm2d(layer.num_features, *choice, eps=layer.eps)
    norm = norm.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        for name, _ in norm.named_buffers():
            getattr(norm, name).copy_(getattr(layer, name))
    return norm


@torch.no_grad()
def fold_into_conv(conv: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """Fold ``x * scale + shift`` per output channel into ``conv`` (weight and bias rescaled, a
    bias added where there was none), in place."""
    conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, *[1] * (conv.weight.dim() - 1)))
    if conv.bias is None:
        conv.bias = nn.Parameter(shift.to(conv.weight).clone())
    else:
        conv.bias.mul_(scale.to(conv.bias.dtype)).add_(shift.to(conv.bias.dtype))


@dataclass
class HardenedLayer:
    """What :func:`harden` did to one layer: the branches kept for the means and the variances
    and the shares dropped (1 - the largest share) from each."""

    mean: str
    var: str
    dropped_mean: float
    dropped_var: float


@dataclass
class HardenReport:
    """:func:`harden`'s result: a :class:`HardenedLayer` per layer name, in module order."""

    layers: Dict[str, HardenedLayer]

    @property
    def total(self) -> float:
        """The dropped shares summed over every layer's means and variances."""
        return sum(h.dropped_mean + h.dropped_var for h in self.layers.values())

    def lines(self) -> List[str]:
        """One line per layer and one for the total, for a log."""
        width = max(len(name) for name in self.layers)
        lines = [
            f"{name:<{width}}  mean {h.mean} (dropped {h.dropped_mean:.4f})  "
            f"var {h.var} (dropped {h.dropped_var:.4f})"
            for name, h in self.layers.items()
        ]
        count = 2 * len(self.layers)
        lines.append(
            f"dropped share: {self.total:.4f} in all over {len(self.layers)} layers "
            f"(mean {self.total / count:.4f} per weight vector)"
        )
        return lines


@torch.no_grad()
def harden(model: nn.Module) -> HardenReport:
    """Round the mix weights of every SN layer of ``model`` (SN, SyncSN, sparse SN, frozen SN)
    to their argmax, in place: each becomes a :class:`FrozenSwitchNorm2d` whose shares are
    exactly one-hot (logits 0 and -1e4), so that ``deployable`` turns it into that single norm.
    Returns the branch kept and the share dropped per layer. Ties go to the first branch of
    ``BRANCHES``. :class:`InputError` when ``model`` has no SN layer, or is a trainable SN layer
    itself (pass the module holding it)."""
    weights = {name: layer.mix_weights() for name, layer in named_switch_norms(model)}
    if not weights:
        raise InputError(
            f"{type(model).__name__} has no SN layer (SN, SyncSN, SSN or frozen SN): there is "
            "nothing to harden; build the model with an SN norm"
        )
    if FrozenSwitchNorm2d.convert_frozen_switchnorm(model) is not model:
        raise InputError(
            "harden replaces a model's SN layers by frozen ones: pass the module holding the layer"
        )
    layers = {}
    for name, layer in named_switch_norms(model):
        kept = []
        for logit_name, w in zip(LOGIT_NAMES, weights[name]):
            index = int(w.argmax())
            logits = getattr(layer, logit_name)
            logits.copy_(weights_as_logits(torch.eye(w.numel(), dtype=logits.dtype)[index]))
            kept.append((BRANCHES[index], 1.0 - float(w[index])))
        (mean, dropped_mean), (var, dropped_var) = kept
        layers[name] = HardenedLayer(mean, var, dropped_mean, dropped_var)
    return HardenReport(layers)
