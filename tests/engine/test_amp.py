"""Mixed precision on any device: SNTrainer trains the smoke model in bfloat16 on the CPU with
finite losses and float32 SN statistics; the precision is checked against the device, naming the
keys of the config it came from."""

import math

import pytest
import torch
from detectron2.engine import SimpleTrainer

from sn_detection.engine import AutocastTrainer, SNTrainer, autocast_dtype, build_train_loop
from sn_detection.engine.amp import LAZY_AMP_KEYS
from sn_detection.layers import SwitchNorm2d, kernels_status
from sn_detection.testing import CONFIGS, load_config
from sn_detection.utils.cli import InputError

SMOKE = CONFIGS / "quick_schedules/mask_rcnn_sn_smoke.yaml"


def test_bfloat16_on_cpu_trains_the_smoke_model_with_finite_losses(tmp_path):
    cfg = load_config(
        SMOKE,
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.AMP.PRECISION",
        "bfloat16",
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",  # bfloat16 is slow on CPUs
        "OUTPUT_DIR",
        str(tmp_path),
    )
    trainer = SNTrainer(cfg)
    loop = trainer._trainer
    assert isinstance(loop, AutocastTrainer) and not loop.grad_scaler.is_enabled()
    sn_layers = [m for m in trainer.model.modules() if isinstance(m, SwitchNorm2d)]
    dtypes = set()
    for m in sn_layers:
        m.register_forward_hook(lambda m, inputs, y: dtypes.add((inputs[0].dtype, y.dtype)))

    loop.train(0, 2)
    losses = [value for value, _ in loop.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    # convolutions under autocast feed SN bfloat16; SN returns it, with its state in float32
    assert (torch.bfloat16, torch.bfloat16) in dtypes
    assert kernels_status("cpu", torch.bfloat16) == "plain"  # the C++ kernels: fp32/fp64 only
    for m in sn_layers:
        assert m.running_mean.dtype == m.running_var.dtype == m.weight.dtype == torch.float32
        assert torch.isfinite(m.running_var).all() and m.running_var.abs().sum() > 0


def test_float16_on_cpu_is_refused_naming_the_key():
    with pytest.raises(InputError, match="set SOLVER.AMP.PRECISION bfloat16"):
        autocast_dtype("float16", "cpu")


def test_an_unknown_precision_is_refused_with_the_known_ones():
    with pytest.raises(InputError, match="SOLVER.AMP.PRECISION must be one of 'float16', "):
        autocast_dtype("fp8", "cuda")


def test_the_errors_name_the_keys_they_are_given():
    with pytest.raises(InputError, match=r"train.amp.precision float16 .*\(train.device is cpu\)"):
        autocast_dtype("float16", "cpu", LAZY_AMP_KEYS)


def test_without_amp_the_loop_is_detectron2s_simple_trainer():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = build_train_loop(model, [], optimizer, amp=False, precision="fp8", device="cpu")
    assert type(loop) is SimpleTrainer
