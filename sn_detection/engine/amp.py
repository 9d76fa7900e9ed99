"""Mixed-precision training on any device: detectron2's AMP loop under ``torch.autocast`` of the
model's device type, float16 (CUDA, loss scaling) or bfloat16 (CUDA or CPU, no scaling needed).

SN turns autocast off inside the layer and computes in float32 (docs/DESIGN.md, mixed precision).
"""

import time
from typing import Dict, Tuple

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

from ..utils.cli import InputError

PRECISIONS: Dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# the config keys of the precision and of the device, as the errors name them
YAML_AMP_KEYS = ("SOLVER.AMP.PRECISION", "MODEL.DEVICE")
LAZY_AMP_KEYS = ("train.amp.precision", "train.device")


def autocast_dtype(
    precision: str, device: str, keys: Tuple[str, str] = YAML_AMP_KEYS
) -> torch.dtype:
    """The autocast dtype named ``precision`` on ``device``; :class:`InputError` naming ``keys``
    (precision key, device key) for an unknown name or float16 off CUDA."""
    precision_key, device_key = keys
    if precision not in PRECISIONS:
        raise InputError(
            f"{precision_key} must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    device_type = torch.device(device).type
    if precision == "float16" and device_type != "cuda":
        raise InputError(
            f"{precision_key} float16 trains on CUDA only ({device_key} is {device_type}): "
            f"set {precision_key} bfloat16 for mixed precision on the CPU"
        )
    return PRECISIONS[precision]


class AutocastTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` on any device type: ``torch.autocast(device_type)`` to
    ``precision``, with loss scaling for float16 only (bfloat16 has float32's exponent range, so
    its scaler is built disabled, a pass-through)."""

    def __init__(
        self,
        model: nn.Module,
        data_loader,
        optimizer: torch.optim.Optimizer,
        precision: torch.dtype = torch.float16,
        device_type: str = "cuda",
        **kwargs,
    ):
        if kwargs.get("grad_scaler") is None:
            scale = precision == torch.float16
            kwargs["grad_scaler"] = torch.amp.GradScaler(device_type, enabled=scale)
        super().__init__(model, data_loader, optimizer, precision=precision, **kwargs)
        self.device_type = device_type

    def run_step(self) -> None:
        """``AMPTrainer.run_step`` with ``torch.autocast(device_type)`` in place of its CUDA-only
        autocast and GPU assertion."""
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler and self.grad_scaler.is_enabled():
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict: dict) -> None:
        """Also resumes a checkpoint without scaler state (written without AMP, or with
        bfloat16, whose disabled scaler saves nothing): the scaler then starts afresh."""
        SimpleTrainer.load_state_dict(self, state_dict)
        if state_dict.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def build_train_loop(
    model: nn.Module,
    data_loader,
    optimizer: torch.optim.Optimizer,
    *,
    amp: bool,
    precision: str,
    device: str,
    keys: Tuple[str, str] = YAML_AMP_KEYS,
) -> SimpleTrainer:
    """DefaultTrainer's choice of loop: ``SimpleTrainer``, or with ``amp`` an
    :class:`AutocastTrainer` on ``device`` in ``precision`` (checked by :func:`autocast_dtype`)."""
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    dtype = autocast_dtype(precision, device, keys)
    device_type = torch.device(device).type
    return AutocastTrainer(model, data_loader, optimizer, precision=dtype, device_type=device_type)
