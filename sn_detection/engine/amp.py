"""Mixed-precision training from YAML: ``SOLVER.AMP.ENABLED`` and ``SOLVER.AMP.PRECISION``.

detectron2's ``AMPTrainer`` autocasts on CUDA only (``run_step`` asserts a GPU) and always scales
the loss with a CUDA ``GradScaler``. :class:`SNAMPTrainer` runs the same loop under
``torch.autocast`` of the model's device type, so that

- "float16" trains on CUDA with a ``GradScaler`` (as detectron2);
- "bfloat16" trains on CUDA and on the CPU, without loss scaling: bfloat16 has float32's exponent
  range, gradients do not underflow, so the scaler is built disabled (a pass-through);
- float16 on the CPU is refused with an error naming ``SOLVER.AMP.PRECISION``.

SN under autocast: ``switch_norm`` turns autocast off inside the layer. It takes the input in the
dtype the previous layer gave (bfloat16 or float16 from a convolution under autocast), computes the
per-(n, c) moments, the mixture and the scale/shift in float32, and returns the input's dtype. On
CUDA the Triton kernels read bfloat16 and float16 directly. The C++ CPU kernels take float32 and
float64 only: for a bfloat16 input on the CPU, SN runs the plain PyTorch kernels (statistics in
float32 as well; ``kernels.kernels_status("cpu", torch.bfloat16)`` says "plain"). Running
statistics and parameters stay float32.
"""
import time
from typing import Dict

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage
from torch import nn

PRECISIONS: Dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_precision(cfg: CfgNode) -> torch.dtype:
    """The autocast dtype of ``SOLVER.AMP.PRECISION``, checked against ``MODEL.DEVICE``."""
    name = cfg.SOLVER.AMP.PRECISION
    if name not in PRECISIONS:
        raise ValueError(
            f"SOLVER.AMP.PRECISION must be one of {', '.join(map(repr, PRECISIONS))}, got {name!r}"
        )
    device = torch.device(cfg.MODEL.DEVICE).type
    if name == "float16" and device != "cuda":
        raise ValueError(
            f"SOLVER.AMP.PRECISION float16 trains on CUDA only (MODEL.DEVICE is {device}): "
            "set SOLVER.AMP.PRECISION bfloat16 for mixed precision on the CPU"
        )
    return PRECISIONS[name]


class SNAMPTrainer(AMPTrainer):
    """detectron2's ``AMPTrainer`` on any device type: autocast to ``precision`` on
    ``device_type``, with loss scaling for float16 only (module docstring)."""

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
        assert self.model.training, "[SNAMPTrainer] model was changed to eval mode!"
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


def build_train_loop(cfg: CfgNode, model: nn.Module, data_loader, optimizer) -> SimpleTrainer:
    """DefaultTrainer's choice of loop: ``SimpleTrainer``, or with ``SOLVER.AMP.ENABLED`` an
    :class:`SNAMPTrainer` on ``MODEL.DEVICE`` in ``SOLVER.AMP.PRECISION``."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    precision = amp_precision(cfg)
    device_type = torch.device(cfg.MODEL.DEVICE).type
    return SNAMPTrainer(model, data_loader, optimizer, precision=precision, device_type=device_type)
