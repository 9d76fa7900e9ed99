"""What both training tools (and the export tool) do around detectron2's engine: the CUDA-to-CPU
device fallback, DistributedDataParallel's arguments, and a ``launch`` whose processes report bad
input as the tools do (one line, exit status 2)."""

import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional

import torch
from detectron2.engine import launch as d2_launch
from torch.multiprocessing import ProcessExitedException

from ..utils.cli import EXIT_BAD_INPUT, InputError, debugging, one_line

__all__ = ["ddp_arguments", "launch", "resolve_device"]

logger = logging.getLogger("sn_detection")
_WARNED = set()  # the device warnings given in this process


def resolve_device(device: str, key: str = "MODEL.DEVICE") -> str:
    """``device``, or "cpu" with a warning naming ``key`` when it is "cuda" and no CUDA device is
    available (so configs written for GPUs also run on a CPU-only machine); the warning once per
    process (the tools check the config, then each process sets it up)."""
    if device == "cuda" and not torch.cuda.is_available():
        message = f"No CUDA device: running on the CPU ({key} cpu)."
        if message not in _WARNED:
            _WARNED.add(message)
            logger.warning(message)
        return "cpu"
    return device


def ddp_arguments(device: str, base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Keyword arguments of DistributedDataParallel for ``create_ddp_model``: ``base`` (default:
    buffers not broadcast in every forward, ``forward_sync_buffers=False``: each SN/BN layer keeps
    its own running statistics, SyncSN's are equal on every process by construction), and no
    ``device_ids`` for a CPU model (DistributedDataParallel refuses them)."""
    args = dict({"forward_sync_buffers": False} if base is None else base)
    if torch.device(device).type == "cpu":
        args["device_ids"] = None
    return args


def _report_bad_input(main_func: Callable[..., Any], *args: Any) -> Any:
    # runs in each launched process: bad input is one line there and exit status 2, which the
    # launching process turns into its own exit status. The process ends at once: a normal exit
    # would wait in the process group's teardown for the other processes.
    try:
        return main_func(*args)
    except InputError as e:
        if debugging():
            raise
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(EXIT_BAD_INPUT)


def launch(main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """detectron2's ``launch`` of ``main_func(args)`` with ``args.num_gpus`` processes per machine
    (``num_machines``, ``machine_rank``, ``dist_url`` from ``args``); returns the exit status.

    One process: ``main_func`` runs here and its errors reach the caller. Several: a process that
    fails on bad input prints ``error: ...`` and exits with status 2; any process's exit status
    becomes the one returned (detectron2 stops the others). Check the input before calling this,
    so that most errors are found once, before any process starts."""
    if args.num_gpus * args.num_machines == 1:
        main_func(args)
        return 0
    try:
        d2_launch(
            _report_bad_input,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main_func, args),
        )
    except ProcessExitedException as e:
        return e.exit_code if e.exit_code and e.exit_code > 0 else 1
    return 0
