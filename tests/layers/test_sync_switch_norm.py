"""SyncSwitchNorm2d: 2 gloo processes behave like one SwitchNorm2d on the union of their samples.

Starting processes is the slow part (each imports torch and detectron2), so every 2-process
scenario runs in one pair of spawned processes (the ``two_process`` fixture); each test checks
its scenario's results.
"""

import os
import traceback
from typing import Dict, List, Sequence

import pytest
import torch
import torch.distributed as dist
from torch import nn

from sn_detection.layers import SwitchNorm2d, SyncSwitchNorm2d
from sn_detection.testing import count_collectives, random_sn, run_distributed

C, H, W = 3, 5, 4
STEPS = 2  # two training steps: the running statistics see two updates
NUM_COUNTED_LAYERS = 3
DDP_SPLIT = (1, 3)


def _init_params(layer: SwitchNorm2d, seed: int = 0) -> SwitchNorm2d:
    """``random_sn``'s parameters and statistics (the same in every process), in float64."""
    layer = layer.double()
    layer.load_state_dict(random_sn(layer.num_features, layer.using_bn, seed=seed).state_dict())
    return layer


def _batches(total: int, seed: int = 1, channels: int = C) -> List[Dict[str, torch.Tensor]]:
    """STEPS batches of inputs and output gradients, with channel offsets so BN stats matter."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        scale = torch.rand(1, channels, 1, 1, generator=g, dtype=torch.float64) + 0.5
        offset = 3 * torch.randn(1, channels, 1, 1, generator=g, dtype=torch.float64)
        x = torch.randn(total, channels, H, W, generator=g, dtype=torch.float64) * scale + offset
        dy = torch.randn(total, channels, H, W, generator=g, dtype=torch.float64)
        out.append({"x": x, "dy": dy})
    return out


def _train(layer: nn.Module, batches: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, object]:
    """Forward and backward of loss = sum(y * dy) for each batch; gradients accumulate."""
    ys, dxs = [], []
    for batch in batches:
        x = batch["x"].clone().requires_grad_()
        y = layer(x)
        (y * batch["dy"]).sum().backward()
        ys.append(y.detach())
        dxs.append(x.grad)
    params = {name: p.grad.clone() for name, p in layer.named_parameters()}
    buffers = {name: b.clone() for name, b in layer.named_buffers()}
    return {"y": ys, "dx": dxs, "grad": params, "buffers": buffers}


def _sync_train_worker(rank: int, world_size: int, split: Sequence[int]) -> Dict[str, object]:
    start, stop = sum(split[:rank]), sum(split[: rank + 1])
    local = [{k: v[start:stop] for k, v in b.items()} for b in _batches(sum(split))]
    return _train(_init_params(SyncSwitchNorm2d(C, momentum=0.1)), local)


@pytest.mark.parametrize("split", [(1, 3), (0, 2)])
def test_two_processes_equal_one_switchnorm_on_all_samples(two_process, split):
    """Outputs, input gradients and running statistics of 2 processes holding ``split`` samples
    equal those of one SwitchNorm2d on the concatenated samples; running statistics are
    bit-identical across ranks.

    Gradients of the layer's parameters (weight, bias, mixture logits): each rank's local gradient
    is that of its own loss, so their **sum** over ranks is the single-process gradient of the
    summed loss. DistributedDataParallel averages, so its gradient is the single-process gradient
    divided by the world size (checked in ``test_ddp_...`` below).
    """
    ranks = two_process(f"train{split}")
    single = _train(_init_params(SwitchNorm2d(C, momentum=0.1)), _batches(sum(split)))

    for step in range(STEPS):
        torch.testing.assert_close(torch.cat([r["y"][step] for r in ranks]), single["y"][step])
        torch.testing.assert_close(torch.cat([r["dx"][step] for r in ranks]), single["dx"][step])
    for name, buf in single["buffers"].items():
        assert torch.equal(ranks[0]["buffers"][name], ranks[1]["buffers"][name]), name
        torch.testing.assert_close(ranks[0]["buffers"][name], buf, msg=name)
    assert single["buffers"]["running_var"].abs().min() > 0  # the running stats did move
    for name, grad in single["grad"].items():
        torch.testing.assert_close(ranks[0]["grad"][name] + ranks[1]["grad"][name], grad, msg=name)
        if min(split) > 0:  # then no rank's local gradient alone is the total
            assert not torch.allclose(ranks[0]["grad"][name], grad), name


def test_all_processes_empty_batch_leaves_running_stats_untouched(two_process):
    ranks = two_process("train(0, 0)")
    initial = _init_params(SyncSwitchNorm2d(C, momentum=0.1))
    for r in ranks:
        assert all(y.shape == (0, C, H, W) for y in r["y"])
        for name, buffer in initial.named_buffers():
            assert torch.equal(r["buffers"][name], buffer), name
        assert all(torch.isfinite(g).all() for g in r["grad"].values())


def _compare_with_switchnorm() -> Dict[str, object]:
    """SyncSN and SN (same parameters) on the same 2-sample batches, train then eval."""
    batches = _batches(2)
    results = {}
    for name, cls in (("sync", SyncSwitchNorm2d), ("sn", SwitchNorm2d)):
        layer = _init_params(cls(C, momentum=0.1))
        with count_collectives() as calls:
            trained = _train(layer, batches)
            layer.eval()
            with torch.no_grad():
                trained["eval_y"] = layer(batches[0]["x"])
        trained["collectives"] = sum(calls.values())
        results[name] = trained
    return results


def _assert_identical(results: Dict[str, object]) -> None:
    sync, sn = results["sync"], results["sn"]
    for key in ("y", "dx"):
        for a, b in zip(sync[key], sn[key]):
            assert torch.equal(a, b), key
    for key in ("grad", "buffers"):
        for name in sn[key]:
            assert torch.equal(sync[key][name], sn[key][name]), (key, name)
    assert torch.equal(sync["eval_y"], sn["eval_y"])
    assert sync["collectives"] == 0


def test_without_process_group_equals_switchnorm():
    assert not dist.is_initialized()
    _assert_identical(_compare_with_switchnorm())


def test_one_process_group_equals_switchnorm(tmp_path):
    store = os.path.join(tmp_path, "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        _assert_identical(_compare_with_switchnorm())
    finally:
        dist.destroy_process_group()


def _eval_worker(rank: int, world_size: int) -> Dict[str, object]:
    sync = _init_params(SyncSwitchNorm2d(C)).eval()
    sn = _init_params(SwitchNorm2d(C)).eval()
    with torch.no_grad():
        for layer in (sync, sn):
            layer.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(2))
            layer.running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(3))
    x = _batches(1 + rank, seed=4 + rank)[0]["x"].requires_grad_()
    with count_collectives() as calls:
        y_sync = sync(x)
        y_sync.sum().backward()
    y_sn = sn(x)
    return {"equal": torch.equal(y_sync, y_sn), "collectives": sum(calls.values())}


def test_eval_mode_with_two_processes_is_local_switchnorm(two_process):
    for r in two_process("eval"):
        assert r == {"equal": True, "collectives": 0}


def _mismatch_worker(rank: int, world_size: int) -> str:
    channels = 4 + 2 * rank  # rank 0: 4 channels, rank 1: 6
    layer = SyncSwitchNorm2d(channels)
    try:
        layer(torch.randn(2, channels, H, W))
    except ValueError as e:
        return str(e)
    return "no error"


def test_channel_mismatch_across_processes_raises_on_every_rank(two_process):
    messages = two_process("mismatch")
    for rank, message in enumerate(messages):
        assert "channel count" in message and "[4, 6]" in message, message
        assert f"rank {rank} has {4 + 2 * rank}" in message, message


def _dtype_mismatch_worker(rank: int, world_size: int) -> str:
    dtype = (torch.float32, torch.float64)[rank]
    layer = SyncSwitchNorm2d(C).to(dtype)
    try:
        layer(torch.randn(2, C, H, W, dtype=dtype))
    except ValueError as e:
        return str(e)
    return "no error"


def test_dtype_mismatch_across_processes_raises_on_every_rank(two_process):
    # without the check gloo aborts the processes (received data size mismatch)
    for message in two_process("dtype mismatch"):
        assert "dtype" in message and "[32, 64]" in message, message


def _count_worker(rank: int, world_size: int, num_layers: int) -> List[Dict[str, int]]:
    model = nn.Sequential(*(SyncSwitchNorm2d(C) for _ in range(num_layers)))
    counts = []
    for step, batch in enumerate(_batches(1 + rank, channels=C)):
        x = batch["x"].float().requires_grad_()
        with count_collectives() as forward:
            y = model(x)
        with count_collectives() as backward:
            y.sum().backward()
        counts.append({"forward": dict(forward), "backward": dict(backward)})
    return counts


def test_one_collective_per_layer_in_forward_and_in_backward(two_process):
    num_layers = NUM_COUNTED_LAYERS
    for counts in two_process("count"):
        first, second = counts
        # first forward: the one-time channel check plus the statistics (an all_gather each)
        assert first["forward"] == {"all_gather": 2 * num_layers}
        assert first["backward"] == {"all_reduce": num_layers}
        assert second["forward"] == {"all_gather": num_layers}
        assert second["backward"] == {"all_reduce": num_layers}


def _make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, C, 3, padding=1), SyncSwitchNorm2d(C, momentum=0.1))
    _init_params(model[1])
    return model.double()


def _ddp_worker(rank: int, world_size: int, split: Sequence[int]) -> Dict[str, object]:
    start, stop = sum(split[:rank]), sum(split[: rank + 1])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(sum(split), 2, H, W, generator=g, dtype=torch.float64)[start:stop]
    dy = torch.randn(sum(split), C, H, W, generator=g, dtype=torch.float64)[start:stop]
    model = nn.parallel.DistributedDataParallel(_make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(x) * dy).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
    optimizer.step()
    optimizer.zero_grad()
    y = model(x)  # a second step runs too
    y.sum().backward()
    return {"grad": grads, "state": model.module.state_dict(), "finite": bool(y.isfinite().all())}


def test_ddp_gradient_is_single_process_gradient_divided_by_world_size(two_process):
    split = DDP_SPLIT
    ranks = two_process("ddp")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(sum(split), 2, H, W, generator=g, dtype=torch.float64)
    dy = torch.randn(sum(split), C, H, W, generator=g, dtype=torch.float64)
    model = _make_model()
    (model(x) * dy).sum().backward()
    for name, p in model.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grad"][name], p.grad / 2, msg=name)
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert all(r["finite"] for r in ranks)


OFFSETS = (1e2, 1e3, 1e4)


def _offset_batch(offset: float) -> torch.Tensor:
    """5 samples, a mean ``offset`` times the spread (float64)."""
    g = torch.Generator().manual_seed(int(offset))
    return offset + torch.randn(5, C, H, W, generator=g, dtype=torch.float64)


def _offset_worker(rank: int, world_size: int) -> Dict[str, object]:
    """float32 SyncSN on 2 and 3 of 5 samples, train then eval (momentum 1: the running
    statistics are the batch's)."""
    out = {}
    for offset in OFFSETS:
        x = _offset_batch(offset)[(slice(0, 2), slice(2, 5))[rank]].float()
        layer = _init_params(SyncSwitchNorm2d(C, momentum=1.0)).float()
        y_train = layer(x).detach()
        y_eval = layer.eval()(x).detach()
        out[offset] = {"train": y_train, "eval": y_eval, "running_var": layer.running_var}
    return out


def test_float32_at_large_offsets_is_as_accurate_as_group_norm(two_process):
    """The combination over processes (Chan's formula) must not reintroduce the cancellation:
    float32 SyncSN on 2 processes against float64 SN on the union, bounded by GroupNorm's own
    float32 error on the same data."""
    ranks = two_process("offsets")
    for offset in OFFSETS:
        x = _offset_batch(offset)
        single = _init_params(SwitchNorm2d(C, momentum=1.0))
        want = {"train": single(x).detach(), "eval": single.eval()(x).detach()}
        gn64, gn32 = nn.GroupNorm(1, C).double(), nn.GroupNorm(1, C)
        gn_want = gn64(x)
        # errors relative to the outputs' size (SN's weights here are ~2, GroupNorm's 1)
        gn_error = (gn_want - gn32(x.float()).double()).abs().max() / gn_want.abs().max()
        for mode in ("train", "eval"):
            got = torch.cat([r[offset][mode] for r in ranks]).double()
            error = (got - want[mode]).abs().max() / want[mode].abs().max()
            assert error <= 5 * gn_error + 1e-7, (offset, mode, error, gn_error)
        torch.testing.assert_close(
            ranks[0][offset]["running_var"].double(), single.running_var, rtol=1e-3, atol=1e-3
        )


def _empty_map_worker(rank: int, world_size: int) -> Dict[str, object]:
    """Rank 1 holds 2 samples with an empty spatial map (H*W = 0), rank 0 a real batch."""
    layer = _init_params(SyncSwitchNorm2d(C, momentum=0.1))
    x = _batches(3)[0]["x"] if rank == 0 else torch.zeros(2, C, 0, W, dtype=torch.float64)
    x.requires_grad_()
    y = layer(x)
    y.sum().backward()
    return {"shape": tuple(y.shape), "buffers": dict(layer.named_buffers())}


def test_a_process_with_an_empty_spatial_map_takes_part_and_adds_nothing(two_process):
    ranks = two_process("empty map")
    assert ranks[1]["shape"] == (2, C, 0, W)
    single = _init_params(SwitchNorm2d(C, momentum=0.1))
    single(_batches(3)[0]["x"])
    for r in ranks:
        for name, buf in single.named_buffers():
            torch.testing.assert_close(r["buffers"][name], buf, msg=name)


def _nonfinite_worker(rank: int, world_size: int) -> Dict[str, object]:
    """A NaN in rank 1's batch only, then a finite batch on both ranks."""
    layer = _init_params(SyncSwitchNorm2d(C, momentum=0.5))
    first = {name: b.clone() for name, b in layer.named_buffers()}
    x = _batches(2)[0]["x"][rank : rank + 1].clone()
    if rank == 1:
        x[0, 0, 0, 0] = float("nan")
    layer(x)
    after_nan = {name: b.clone() for name, b in layer.named_buffers()}
    layer(_batches(2)[1]["x"][rank : rank + 1])
    return {"first": first, "after_nan": after_nan, "running_mean": layer.running_mean.clone()}


def test_a_nonfinite_batch_on_one_process_is_skipped_by_every_process(two_process):
    ranks = two_process("nonfinite")
    for r in ranks:
        for name in ("running_mean", "running_var", "num_batches"):
            assert torch.equal(r["after_nan"][name], r["first"][name]), name
        assert r["after_nan"]["nonfinite_updates"] == 1
        assert not torch.equal(r["running_mean"], r["first"]["running_mean"])
        assert torch.isfinite(r["running_mean"]).all()
    torch.testing.assert_close(ranks[0]["running_mean"], ranks[1]["running_mean"])


# name -> (worker, extra arguments); each worker runs as worker(rank, world_size, *arguments)
SCENARIOS = {
    "train(1, 3)": (_sync_train_worker, ((1, 3),)),
    "train(0, 2)": (_sync_train_worker, ((0, 2),)),
    "train(0, 0)": (_sync_train_worker, ((0, 0),)),
    "eval": (_eval_worker, ()),
    "mismatch": (_mismatch_worker, ()),
    "dtype mismatch": (_dtype_mismatch_worker, ()),
    "count": (_count_worker, (NUM_COUNTED_LAYERS,)),
    "ddp": (_ddp_worker, (DDP_SPLIT,)),
    "offsets": (_offset_worker, ()),
    "empty map": (_empty_map_worker, ()),
    "nonfinite": (_nonfinite_worker, ()),
}


def _run_scenarios(rank: int, world_size: int) -> Dict[str, object]:
    """Every scenario in turn; one that raises is reported (and the others still run)."""
    results = {}
    for name, (worker, args) in SCENARIOS.items():
        try:
            results[name] = worker(rank, world_size, *args)
        except Exception:  # reported by the scenario's test
            results[name] = {"traceback": traceback.format_exc()}
    return results


@pytest.fixture(scope="module")
def two_process():
    """Run every scenario in 2 processes once; return a lookup: name -> per-rank results."""
    ranks = run_distributed(_run_scenarios, 2, timeout=150)

    def lookup(name: str) -> List[object]:
        for rank, r in enumerate(ranks):
            if isinstance(r[name], dict) and "traceback" in r[name]:
                pytest.fail(f"scenario {name} failed on rank {rank}:\n{r[name]['traceback']}")
        return [r[name] for r in ranks]

    return lookup
