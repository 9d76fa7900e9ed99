"""Counting torch.distributed collectives, for tests and benchmarks of synchronized layers."""
from contextlib import contextmanager
from typing import Callable, Dict, Iterator

import torch.distributed as dist

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "all_to_all",
)


@contextmanager
def count_collectives() -> Iterator[Dict[str, int]]:
    """Count the calls of torch.distributed's collectives (by name) made inside the block.

    Wraps the functions of the ``torch.distributed`` module for the duration of the block, so it
    sees calls made as ``dist.all_reduce(...)`` (as fvcore and detectron2 make them), in this
    process only.
    """
    counts: Dict[str, int] = {}
    originals = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}

    def counting(name: str, original: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return original(*args, **kwargs)

        return wrapper

    for name, original in originals.items():
        setattr(dist, name, counting(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
