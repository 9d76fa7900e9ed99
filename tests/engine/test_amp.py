"""SOLVER.AMP.ENABLED with SOLVER.AMP.PRECISION: tools/train_net.py's Trainer trains the smoke model
in bfloat16 on the CPU with finite losses and float32 SN statistics; the key is checked against
the device."""
import math

import pytest
import torch
from detectron2.engine import SimpleTrainer

from sn_detection.engine import SNAMPTrainer, build_train_loop
from sn_detection.engine.amp import amp_precision
from sn_detection.layers import SwitchNorm2d, kernels_status
from sn_detection.testing import CONFIGS, load_config, load_script

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"


def test_bfloat16_on_cpu_trains_the_smoke_model_with_finite_losses(tmp_path):
    cfg = load_config(
        SMOKE, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bfloat16",
        "OUTPUT_DIR", str(tmp_path),
    )
    trainer = load_script("tools/train_net.py").Trainer(cfg)
    loop = trainer._trainer
    assert isinstance(loop, SNAMPTrainer) and not loop.grad_scaler.is_enabled()
    sn_layers = [m for m in trainer.model.modules() if isinstance(m, SwitchNorm2d)]
    dtypes = set()
    for m in sn_layers:
        m.register_forward_hook(lambda m, inputs, y: dtypes.add((inputs[0].dtype, y.dtype)))

    loop.train(0, 3)
    losses = [value for value, _ in loop.storage.history("total_loss").values()]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses), losses
    # convolutions under autocast feed SN bfloat16; SN returns it, with its state in float32
    assert (torch.bfloat16, torch.bfloat16) in dtypes
    assert kernels_status("cpu", torch.bfloat16) == "plain"  # the C++ kernels: fp32/fp64 only
    for m in sn_layers:
        assert m.running_mean.dtype == m.running_var.dtype == m.weight.dtype == torch.float32
        assert torch.isfinite(m.running_var).all() and m.running_var.abs().sum() > 0


def test_float16_on_cpu_is_refused_naming_the_key():
    cfg = load_config(SMOKE, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16")
    with pytest.raises(ValueError, match="set SOLVER.AMP.PRECISION bfloat16"):
        amp_precision(cfg)
    cfg.SOLVER.AMP.PRECISION = "fp8"
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION must be one of 'float16', "):
        amp_precision(cfg)


def test_without_amp_the_loop_is_detectron2s_simple_trainer():
    model = torch.nn.Linear(2, 2)
    cfg = load_config(SMOKE)
    loop = build_train_loop(cfg, model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    assert type(loop) is SimpleTrainer
