"""sn_detection.engine.launch: bad input in a launched process is one line and exit status 2, which
the launching process returns; the CUDA fallback and DDP's arguments on the CPU."""

import argparse
import logging

import torch

from sn_detection.engine import ddp_arguments, defaults, launch, resolve_device
from sn_detection.utils.cli import InputError


def _bad_input(args):
    raise InputError(f"bad input in process {torch.distributed.get_rank()}")


def test_bad_input_in_launched_processes_is_one_line_and_exit_status_2(capfd):
    args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto")
    assert launch(_bad_input, args) == 2
    err = capfd.readouterr().err
    assert "error: bad input in process" in err and "Traceback" not in err


def test_one_process_runs_in_the_caller_and_its_errors_reach_it():
    args = argparse.Namespace(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
    try:
        launch(lambda a: (_ for _ in ()).throw(InputError("here")), args)
    except InputError as e:
        assert str(e) == "here"
    else:
        raise AssertionError("the error did not reach the caller")


def test_cuda_without_a_cuda_device_falls_back_to_the_cpu_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(defaults, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        assert resolve_device("cuda", "train.device") == "cpu"
        assert resolve_device("cuda", "train.device") == "cpu"  # checked, then set up: one warning
    assert caplog.text.count("No CUDA device: running on the CPU (train.device cpu)") == 1
    assert resolve_device("cpu") == "cpu"


def test_ddp_gets_no_device_ids_on_the_cpu_and_keeps_the_given_arguments():
    assert ddp_arguments("cpu") == {"forward_sync_buffers": False, "device_ids": None}
    assert ddp_arguments("cuda") == {"forward_sync_buffers": False}
    assert ddp_arguments("cpu", {"find_unused_parameters": True}) == {
        "find_unused_parameters": True,
        "device_ids": None,
    }
