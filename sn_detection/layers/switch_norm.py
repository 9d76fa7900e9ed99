"""Switchable Normalization (Luo et al., ICLR 2019) for 4-D feature maps."""
from typing import Dict

import torch
from torch import Tensor, nn

from .switch_norm_function import LOCAL_BATCH, BatchNormSource, switch_norm

BRANCHES = ("IN", "LN", "BN")


def _empty_output(x: Tensor, module: nn.Module) -> Tensor:
    """An empty output that still depends on every parameter, so autograd and DDP stay happy."""
    y = x * module.weight.view(1, -1, 1, 1) + module.bias.view(1, -1, 1, 1)
    return y + 0.0 * (module.mean_weight.sum() + module.var_weight.sum())


def _check_input(x: Tensor, num_features: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
    if x.shape[1] != num_features:
        raise ValueError(
            f"{name} was built for {num_features} channels but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)})"
        )


def _load_official_layout(state_dict: dict, prefix: str, num_features: int, version) -> None:
    """Checkpoints before version 2 (the official code) store weight/bias as (1, C, 1, 1) and
    running statistics as (1, C, 1): flatten them to (C,)."""
    if version is not None and version >= 2:
        return
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = state_dict.get(prefix + key)
        if t is not None and t.dim() > 1 and t.numel() == num_features:
            state_dict[prefix + key] = t.reshape(num_features)


class SwitchNorm2d(nn.Module):
    """Switchable Normalization over (N, C, H, W) inputs.

    Normalises with a learned, softmax-weighted mixture of instance (IN, per sample and channel),
    layer (LN, per sample) and batch (BN, per channel) statistics, all derived from one set of
    per-(n, c) moments (the official semantics: the IN variance is unbiased, and the LN/BN variances
    are E[var_in + mean_in^2] - mean^2). ``mean_weight`` and ``var_weight`` hold the mixture
    logits in the order (IN, LN, BN), or (IN, LN) with ``using_bn=False``. In eval mode the BN
    branch uses the running statistics, so outputs do not depend on the eval batch size.

    Running statistics start at zero (as in the official code). ``momentum`` follows PyTorch's
    convention: ``running = (1 - momentum) * running + momentum * batch_stat``; the official code's
    keep ratio is ``1 - momentum`` (0.997 in its detection code is ``momentum=0.003``). The
    default 0.01 averages over ~100 iterations (200 images at 2 per GPU), which is steady at small
    batches, and forgets the zero (or ImageNet) initial statistics within a few hundred
    iterations, so it serves training from scratch and fine-tuning alike.
    With ``using_moving_average=False`` the running statistics are instead the plain average of all
    batches since construction, loading or ``reset_running_stats()`` (the official "batch average",
    for a dedicated statistics pass).

    Caveats, where the official code gives NaN: a single spatial element (H*W = 1) has IN variance
    0; cancelled variances are clamped at 0; an empty batch (N = 0) returns an empty output that
    keeps autograd connected and leaves the running statistics untouched. Under autocast the
    statistics are float32 and the output keeps the input's dtype.
    """

    _version = 2
    # False selects the plain PyTorch kernels even where faster ones are registered
    use_fast_kernels = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        using_moving_average: bool = True,
        using_bn: bool = True,
        last_gamma: bool = False,
    ):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (PyTorch convention), got {momentum}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        self.using_bn = using_bn
        self.last_gamma = last_gamma
        num_branches = 3 if using_bn else 2
        self.weight = nn.Parameter(torch.empty(num_features))
        self.bias = nn.Parameter(torch.empty(num_features))
        self.mean_weight = nn.Parameter(torch.ones(num_branches))
        self.var_weight = nn.Parameter(torch.ones(num_branches))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.zeros(num_features))
            # batches averaged so far, for using_moving_average=False; not saved
            self.register_buffer("num_batches", torch.zeros((), dtype=torch.long), persistent=False)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.zero_()
            self.num_batches.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.constant_(self.weight, 0.0 if self.last_gamma else 1.0)
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def _batch_statistics_source(self) -> BatchNormSource:
        """Where the BN branch gets its statistics in training (``switch_norm``'s ``bn``): this
        process's batch; SyncSwitchNorm2d returns a sum over all processes."""
        return LOCAL_BATCH

    def _has_local_work(self, x: Tensor) -> bool:
        """Whether forward must run the full computation (an empty batch can skip it)."""
        return x.shape[0] > 0

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.num_features, type(self).__name__)
        if not self._has_local_work(x):
            return _empty_output(x, self)
        bn = None
        if self.using_bn:
            bn = (
                self._batch_statistics_source()
                if self.training
                else (self.running_mean, self.running_var)
            )
        y, batch_stats = switch_norm(
            x, self.weight, self.bias, self.mean_weight, self.var_weight,
            eps=self.eps, bn=bn, use_fast_kernels=self.use_fast_kernels,
        )
        if batch_stats is not None:
            self._update_running_stats(*batch_stats)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean_bn: Tensor, var_bn: Tensor, count: Tensor) -> None:
        seen = (count > 0).to(self.running_mean.dtype)  # a globally empty batch changes nothing
        if self.using_moving_average:
            rate = self.momentum * seen
        else:
            self.num_batches += seen.to(self.num_batches.dtype)
            rate = seen / self.num_batches.clamp(min=1).to(seen.dtype)
        self.running_mean.lerp_(mean_bn.to(self.running_mean.dtype), rate)
        self.running_var.lerp_(var_bn.to(self.running_var.dtype), rate)

    def importance(self) -> Dict[str, Dict[str, float]]:
        """The current mixture weights (softmax of the logits), e.g. {"mean": {"IN": 0.2, ...}}."""
        return {
            kind: dict(zip(BRANCHES, torch.softmax(logits.detach().float(), 0).tolist()))
            for kind, logits in (("mean", self.mean_weight), ("var", self.var_weight))
        }

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"using_moving_average={self.using_moving_average}, using_bn={self.using_bn}, "
            f"last_gamma={self.last_gamma}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        _load_official_layout(state_dict, prefix, self.num_features, local_metadata.get("version"))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class FrozenSwitchNorm2d(nn.Module):
    """Switchable Normalization with every parameter and statistic fixed.

    Holds the same tensors as :class:`SwitchNorm2d` as buffers. The BN branch always uses the
    running statistics; the IN and LN statistics are still computed from each sample, so this
    equals ``SwitchNorm2d`` in eval mode, in train mode too. Gradients still flow to the input.
    Used for the stages that ``MODEL.BACKBONE.FREEZE_AT`` freezes.
    """

    _version = 2

    def __init__(self, num_features: int, eps: float = 1e-5, using_bn: bool = True):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.using_bn = using_bn
        num_branches = 3 if using_bn else 2
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("mean_weight", torch.ones(num_branches))
        self.register_buffer("var_weight", torch.ones(num_branches))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.num_features, type(self).__name__)
        if x.shape[0] == 0:
            return _empty_output(x, self)
        bn = (self.running_mean, self.running_var) if self.using_bn else None
        y, _ = switch_norm(
            x, self.weight, self.bias, self.mean_weight, self.var_weight,
            eps=self.eps, bn=bn, use_fast_kernels=SwitchNorm2d.use_fast_kernels,
        )
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, using_bn={self.using_bn}"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        _load_official_layout(state_dict, prefix, self.num_features, local_metadata.get("version"))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def convert_frozen_switchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every SwitchNorm2d (and subclass) in it replaced, in place where
        it is a child, by a FrozenSwitchNorm2d holding a copy of its parameters and statistics."""
        if isinstance(module, SwitchNorm2d):
            frozen = cls(module.num_features, module.eps, module.using_bn)
            with torch.no_grad():
                for name in ("weight", "bias", "mean_weight", "var_weight"):
                    getattr(frozen, name).copy_(getattr(module, name))
                if module.using_bn:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen.to(module.weight.device)
        for name, child in module.named_children():
            new_child = cls.convert_frozen_switchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module
