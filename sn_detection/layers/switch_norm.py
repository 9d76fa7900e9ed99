"""Switchable Normalization (Luo et al., ICLR 2019) for 4-D feature maps: the trainable layer and
its frozen form."""

import warnings
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from .portable import switch_norm_inference
from .sparsestmax import saved_weights, weights_as_logits
from .switch_norm_function import LOCAL_BATCH, BatchNormSource, switch_norm

# The names of SN's statistics and tensors, used wherever SN layers or their checkpoints are read.
BRANCHES = ("IN", "LN", "BN")  # the statistics mixed, in the order of the logits
AFFINE_NAMES = ("weight", "bias")
LOGIT_NAMES = ("mean_weight", "var_weight")  # the learned logits; their softmax gives the shares
RUNNING_NAMES = ("running_mean", "running_var")
TENSOR_NAMES = AFFINE_NAMES + LOGIT_NAMES + RUNNING_NAMES
SSN_BUFFER_NAMES = ("radius", "mean_fixed", "var_fixed")  # what sparse SN layers save besides


def _flatten_official_layout(state_dict: dict, prefix: str, num_features: int) -> None:
    """The official code stores weight/bias as (1, C, 1, 1) and running statistics as (1, C, 1):
    flatten them to (C,)."""
    for key in AFFINE_NAMES + RUNNING_NAMES:
        t = state_dict.get(prefix + key)
        if t is not None and t.dim() > 1 and t.numel() == num_features:
            state_dict[prefix + key] = t.reshape(num_features)


def _empty_input_output(
    x: Tensor, weight: Tensor, bias: Tensor, mean_weight: Tensor, var_weight: Tensor
) -> Tensor:
    """SN's output for an input with no element: empty, dependent on every parameter."""
    y = x * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    return y + 0.0 * (mean_weight.sum() + var_weight.sum())


class _SwitchNormBase(nn.Module):
    """What SwitchNorm2d and FrozenSwitchNorm2d share: the input checks, the empty-input rule, the
    state-dict versions, ``shares()`` and the forward skeleton. Subclasses hold ``weight``,
    ``bias``, ``mean_weight``, ``var_weight`` (and ``running_mean``/``running_var`` with the BN
    branch) as parameters or buffers, and say where the BN branch takes its statistics from."""

    # 2: weight/bias/running statistics are (C,); 3: SwitchNorm2d saves ``num_batches``
    _version = 3
    # whether the BN branch uses the batch in training (SwitchNorm2d) or always the running
    # statistics (FrozenSwitchNorm2d)
    _batch_statistics_in_training: torch.jit.Final[bool] = True

    def __init__(self, num_features: int, eps: float, using_bn: bool):
        super().__init__()
        if not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive (e.g. 1e-5), got {eps}")
        self.num_features = num_features
        self.eps = eps
        self.using_bn = using_bn
        # also an instance attribute: TorchScript then finds it even where the class's own
        # annotations are replaced (detectron2's scripting_with_instances gives every module class
        # a new ``__annotations__`` holding only "training", which hides the Final above)
        self._batch_statistics_in_training = type(self)._batch_statistics_in_training

    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name} expects a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name} was built for {self.num_features} channels but the input has "
                f"{x.shape[1]} (shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")

    def _empty_output(self, x: Tensor) -> Tensor:
        """The output for an input with no element (N = 0 or H*W = 0): empty, and still dependent
        on every parameter, so autograd and DDP stay happy."""
        return _empty_input_output(x, self.weight, self.bias, self.mean_weight, self.var_weight)

    def _bn_source(self) -> BatchNormSource:
        """Where the BN branch takes its statistics from in this forward."""
        raise NotImplementedError

    def mix_weights(self) -> Tuple[Tensor, Tensor]:
        """The mix weights (p, q) of the means and variances, in the order of ``BRANCHES``: the
        softmax of the logits ``mean_weight`` and ``var_weight``, differentiable. The one place
        that turns logits into weights (sparse SN overrides it)."""
        return torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)

    def _forward_mix_weights(self) -> Tuple[Tensor, Tensor]:
        """:meth:`mix_weights` as the eager forward takes them (where sparse SN's training
        forward also fixes one-hot weights)."""
        return self.mix_weights()

    def _normalize(self, x: Tensor) -> Tensor:
        p, q = self._forward_mix_weights()
        y, batch_stats = switch_norm(
            x,
            self.weight,
            self.bias,
            p,
            q,
            eps=self.eps,
            bn=self._bn_source() if self.using_bn else None,
        )
        if batch_stats is not None:
            self._update_running_stats(*batch_stats)
        return y

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._forward_scripted(x)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing():
            # the checks would be constants of the trace (and warn): the graph is the same for
            # every input, whose emptiness the portable path handles
            return self._normalize(x)
        self._check_input(x)
        if x.numel() == 0:
            return self._empty_output(x)
        return self._normalize(x)

    def _forward_scripted(self, x: Tensor) -> Tensor:
        """The forward of a ``torch.jit.script``-ed layer: the portable inference path (BN branch
        from the running statistics), for deployment; a SwitchNorm2d in training mode raises."""
        if self.training and self._batch_statistics_in_training:
            raise RuntimeError(
                "a scripted SwitchNorm2d runs in eval mode only (its BN branch uses the running "
                "statistics): call .eval() on the model, or train it unscripted"
            )
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                "SwitchNorm2d expects an (N, C, H, W) input with C = num_features, got shape "
                + str(x.shape)
            )
        if x.numel() == 0:
            return _empty_input_output(x, self.weight, self.bias, self.mean_weight, self.var_weight)
        running_mean: Optional[Tensor] = None
        running_var: Optional[Tensor] = None
        if hasattr(self, "running_mean"):
            running_mean = self.running_mean
            running_var = self.running_var
        p, q = self.mix_weights()
        return switch_norm_inference(
            x, self.weight, self.bias, p, q, running_mean, running_var, self.eps
        )

    def _update_running_stats(self, mean_bn: Tensor, var_bn: Tensor, count: Tensor) -> None:
        raise NotImplementedError

    @torch.jit.unused
    def shares(self) -> Dict[str, Dict[str, float]]:
        """The current shares of the branches (:meth:`mix_weights`: softmax of the logits
        ``mean_weight`` and ``var_weight`` for SN), e.g. {"mean": {"IN": 0.2, ...}, "var": {...}};
        no "BN" entry without the BN branch. Reads them on the host."""
        with torch.no_grad():
            weights = self.mix_weights()
        return {
            kind: dict(zip(BRANCHES, w.float().tolist()))
            for kind, w in zip(("mean", "var"), weights)
        }

    def importance(self) -> Dict[str, Dict[str, float]]:
        """Deprecated name of :meth:`shares`."""
        warnings.warn(
            f"{type(self).__name__}.importance() is deprecated: call shares() (same result)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.shares()

    # whether the layer keeps sparse SN's radius and fixed flags (else it absorbs them on loading)
    _holds_sparse_state = False
    # whether loading a sparse SN layer's state warns (a frozen layer takes it silently)
    _warns_on_sparse_state = True

    def _absorb_sparse_state(self, state_dict, prefix: str) -> None:
        """A sparse SN layer's state loaded here (an SSN checkpoint into SN, or a frozen stage of
        an SSN model): its logits become logits whose softmax is its mix weights (one-hot where
        fixed), and its radius and fixed flags are dropped."""
        keys = [prefix + name for name in SSN_BUFFER_NAMES + LOGIT_NAMES]
        if self._holds_sparse_state or not all(key in state_dict for key in keys):
            return
        logits = torch.stack(
            [torch.as_tensor(state_dict[prefix + n]).double() for n in LOGIT_NAMES]
        )
        radius, mean_fixed, var_fixed = (torch.as_tensor(state_dict.pop(k)) for k in keys[:3])
        fixed = torch.cat([mean_fixed.reshape(1), var_fixed.reshape(1)])
        weights = saved_weights(logits, radius.double(), fixed)
        for name, w in zip(LOGIT_NAMES, weights):
            old = state_dict[prefix + name]
            state_dict[prefix + name] = weights_as_logits(w).to(old.dtype).reshape(old.shape)
        if self._warns_on_sparse_state:
            warnings.warn(
                f"loading sparse SN (SSN) layers into {type(self).__name__} layers: each keeps "
                "its SSN mix weights (one-hot where fixed) as logits whose softmax they are; "
                "the radius and fixed flags are dropped (build the model with norm SSN to "
                "continue SSN training)"
            )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version")
        if version is None or version < 2:
            _flatten_official_layout(state_dict, prefix, self.num_features)
        self._absorb_sparse_state(state_dict, prefix)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class SwitchNorm2d(_SwitchNormBase):
    """Switchable Normalization over (N, C, H, W) inputs.

    Normalises with a learned, softmax-weighted mixture of instance (IN, per sample and channel),
    layer (LN, per sample) and batch (BN, per channel) statistics, all derived from one set of
    per-(n, c) moments (the official semantics: the IN variance is unbiased, and the LN/BN
    variances are those of the union of the planes, E[var_in + mean_in^2] - mean^2, computed here
    without cancellation; see ``mixer.py``). ``mean_weight`` and ``var_weight`` hold the logits
    of the branches in the order (IN, LN, BN), or (IN, LN) with ``using_bn=False``; their softmax
    gives the shares (:meth:`shares`). In eval mode the BN branch uses the running statistics,
    so outputs do not depend on the eval batch size.

    Running statistics start at zero (as in the official code). ``momentum`` follows PyTorch's
    convention: ``running = (1 - momentum) * running + momentum * batch_stat``; the official code's
    keep ratio is ``1 - momentum`` (0.997 in its detection code is ``momentum=0.003``). The
    default 0.01 averages over ~100 iterations (200 images at 2 per GPU), which is steady at small
    batches, and forgets the zero (or ImageNet) initial statistics within a few hundred
    iterations, so it serves training from scratch and fine-tuning alike.
    With ``using_moving_average=False`` the running statistics are instead the plain average of all
    batches since construction or ``reset_running_stats()`` (the official "batch average", for a
    dedicated statistics pass); the count of batches (``num_batches``) is saved with the model,
    so the average continues after a reload.

    A training batch whose BN-branch statistics are not all finite (a NaN or inf in the input)
    leaves the running statistics (and ``num_batches``) unchanged, decided on the device without a
    host sync; the buffer ``nonfinite_updates`` (not saved with the model) counts such batches, and
    :func:`nonfinite_batches` reads the counts of a whole model at once.

    Caveats, where the official code gives NaN: a single spatial element (H*W = 1) has IN variance
    0; an input with no element (N = 0 or H*W = 0) returns an empty output that keeps autograd
    connected and leaves the running statistics untouched. Under autocast the statistics are
    float32 and the output keeps the input's dtype. Double backward is refused with an error.
    To start a layer as the identity of a residual block, zero its ``weight``
    (``sn_detection.modeling.zero_init_last_switchnorm``, ``MODEL.SN.LAST_GAMMA``).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        using_moving_average: bool = True,
        using_bn: bool = True,
    ):
        super().__init__(num_features, eps, using_bn)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (PyTorch convention), got {momentum}")
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        num_branches = 3 if using_bn else 2
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(num_branches))
        self.var_weight = nn.Parameter(torch.ones(num_branches))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.zeros(num_features))
            # batches averaged so far, for using_moving_average=False
            self.register_buffer("num_batches", torch.zeros((), dtype=torch.long))
            # training batches whose statistics were not finite, so did not update the above
            self.register_buffer(
                "nonfinite_updates", torch.zeros((), dtype=torch.long), persistent=False
            )

    def reset_running_stats(self) -> None:
        if self.using_bn:
            self.running_mean.zero_()
            self.running_var.zero_()
            self.num_batches.zero_()
            self.nonfinite_updates.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)

    def _bn_source(self) -> BatchNormSource:
        """In training this process's batch (SyncSwitchNorm2d: every process's batch); in eval
        mode the running statistics."""
        return LOCAL_BATCH if self.training else (self.running_mean, self.running_var)

    @torch.no_grad()
    def _update_running_stats(self, mean_bn: Tensor, var_bn: Tensor, count: Tensor) -> None:
        finite = torch.isfinite(torch.cat([mean_bn, var_bn])).all()
        # an empty batch has zero (finite) statistics and count 0: it changes and counts nothing
        self.nonfinite_updates += ~finite
        seen = ((count > 0) & finite).to(self.running_mean.dtype)
        # a skipped batch's statistics are replaced by the running ones: lerp(a, a, w) is a,
        # where a rate of 0 alone would give 0 * NaN = NaN
        mean_bn = torch.where(finite, mean_bn.to(self.running_mean.dtype), self.running_mean)
        var_bn = torch.where(finite, var_bn.to(self.running_var.dtype), self.running_var)
        if self.using_moving_average:
            rate = self.momentum * seen
        else:
            self.num_batches += seen.to(self.num_batches.dtype)
            rate = seen / self.num_batches.clamp(min=1).to(seen.dtype)
        self.running_mean.lerp_(mean_bn, rate)
        self.running_var.lerp_(var_bn, rate)

    def softmax_logits(self) -> Tuple[Tensor, Tensor]:
        """Logits whose softmax is :meth:`mix_weights` (for SN the logits themselves): what a
        frozen SN layer holds for this layer."""
        return self.mean_weight, self.var_weight

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"using_moving_average={self.using_moving_average}, using_bn={self.using_bn}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version")
        if self.using_bn and (version is None or version < 3):
            # checkpoints before version 3 (and the official ones) have no batch count: keep ours
            state_dict.setdefault(prefix + "num_batches", self.num_batches.clone())
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class FrozenSwitchNorm2d(_SwitchNormBase):
    """Switchable Normalization with every parameter and statistic fixed.

    Holds the same tensors as :class:`SwitchNorm2d` as buffers. The BN branch always uses the
    running statistics; the IN and LN statistics are still computed from each sample, so this
    equals ``SwitchNorm2d`` in eval mode, in train mode too. Gradients still flow to the input.
    Used for the stages that ``MODEL.BACKBONE.FREEZE_AT`` freezes. Loads SwitchNorm2d state dicts
    (their batch count ``num_batches`` is ignored) and sparse SN ones (its mix weights, one-hot
    where fixed, become logits whose softmax they are).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, using_bn: bool = True):
        super().__init__(num_features, eps, using_bn)
        num_branches = 3 if using_bn else 2
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("mean_weight", torch.ones(num_branches))
        self.register_buffer("var_weight", torch.ones(num_branches))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))

    _batch_statistics_in_training: torch.jit.Final[bool] = False
    _warns_on_sparse_state = False  # the frozen stages of an SSN model

    def _bn_source(self) -> BatchNormSource:
        return (self.running_mean, self.running_var)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, using_bn={self.using_bn}"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def convert_frozen_switchnorm(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every SwitchNorm2d (and subclass) in it replaced, in place where
        it is a child, by a FrozenSwitchNorm2d holding a copy of its parameters and statistics
        (same device and dtype).
        A sparse SN layer becomes the frozen SN layer with its current mix weights (one-hot
        where fixed), held as logits whose softmax gives exactly those weights."""
        if isinstance(module, SwitchNorm2d):
            frozen = cls(module.num_features, module.eps, module.using_bn)
            frozen = frozen.to(device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                for name in AFFINE_NAMES + RUNNING_NAMES:
                    if hasattr(frozen, name):
                        getattr(frozen, name).copy_(getattr(module, name))
                for name, logits in zip(LOGIT_NAMES, module.softmax_logits()):
                    getattr(frozen, name).copy_(logits)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_switchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def named_switch_norms(model: nn.Module) -> Iterator[Tuple[str, _SwitchNormBase]]:
    """(name, layer) of every SN layer of ``model`` in module order: trainable, synchronized and
    frozen (``isinstance(layer, SwitchNorm2d)`` tells the trainable ones)."""
    for name, module in model.named_modules():
        if isinstance(module, _SwitchNormBase):
            yield name, module


def nonfinite_batches(model: nn.Module) -> Dict[str, int]:
    """{layer name: training batches whose BN-branch statistics were not finite, so did not
    update its running statistics} for every SwitchNorm2d (and SyncSwitchNorm2d) of ``model``
    that skipped one; empty when none did. Counts are kept since construction or
    ``reset_running_stats()``, not in checkpoints. Reads all counters with one host transfer per
    device: meant for a periodic check (e.g. every 20 iterations), not for every step."""
    counters: Dict[torch.device, Dict[str, Tensor]] = {}
    for name, layer in named_switch_norms(model):
        counter = getattr(layer, "nonfinite_updates", None)
        if isinstance(counter, Tensor):
            counters.setdefault(counter.device, {})[name] = counter
    counts: Dict[str, int] = {}
    for on_device in counters.values():
        values = torch.stack(list(on_device.values())).tolist()
        counts.update(zip(on_device, values))
    return {name: counts[name] for name, _ in named_switch_norms(model) if counts.get(name)}
