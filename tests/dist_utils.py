"""Run a function in several CPU processes on the gloo backend, with a time limit (for tests)."""

import os
import tempfile
import time
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, tmp: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)  # one core per process
    store = os.path.join(tmp, "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(tmp, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 40.0) -> List[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes of one gloo group.

    Returns each rank's return value (saved with ``torch.save``). A process that raises fails
    the caller with its traceback; processes still running after ``timeout`` seconds (a hang in
    a collective) are killed and TimeoutError is raised.
    """
    with tempfile.TemporaryDirectory() as tmp:
        context = mp.start_processes(
            _worker,
            args=(world_size, tmp, fn, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{getattr(fn, '__name__', fn)} did not finish in {timeout:.0f} s "
                        "(a hang in a collective?)"
                    )
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        return [torch.load(os.path.join(tmp, f"result{r}.pt")) for r in range(world_size)]


