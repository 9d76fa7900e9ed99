"""The precise SN statistics pass (update_sn_stats, the PreciseSN hook) against an independent
computation of the average BN-branch statistics over the same batches; and batch-average mode
across a save and resume."""

import logging
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sn_detection.checkpoint import SNCheckpointer
from sn_detection.engine import PreciseSN, get_sn_modules, update_sn_stats
from sn_detection.layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d
from sn_detection.testing import run_distributed, switch_norm_reference

RUNNING = ("running_mean", "running_var", "num_batches", "num_batches_tracked")


class Net(nn.Module):
    """conv -> SN -> ReLU -> conv -> SN -> BN -> frozen SN -> SN without BN branch."""

    def __init__(self, sn=SwitchNorm2d, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.sn1 = sn(6, momentum=0.1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.sn2 = sn(5, momentum=0.1)
        self.bn = nn.BatchNorm2d(5)
        self.frozen = FrozenSwitchNorm2d(5)
        self.no_bn = sn(5, using_bn=False)
        with torch.no_grad():
            for name, t in self.state_dict().items():
                if name.endswith(("mean_weight", "var_weight", "running_mean", "bias")):
                    t.normal_()
                elif name.endswith("running_var"):
                    t.uniform_(0.5, 2.0)
        self.double()

    def forward(self, x):
        x = F.relu(self.sn1(self.conv1(x)))
        return self.no_bn(self.frozen(self.bn(self.sn2(self.conv2(x)))))


def _batches(count: int, sizes=(2,), seed=1) -> List[List[torch.Tensor]]:
    """``count`` iterations, each a list of one batch per process (of the given sizes)."""
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(n, 3, 6, 7, generator=g, dtype=torch.float64) for n in sizes]
        for _ in range(count)
    ]


def _bn_branch_stats(h: torch.Tensor):
    """The BN-branch statistics of one batch, as the SN paper defines them (unbiased IN
    variances, the BN variance that of the union of the planes)."""
    mean_in, var_in = h.mean((2, 3)), h.var((2, 3))
    mean = mean_in.mean(0)
    return mean, (var_in + mean_in**2).mean(0) - mean**2


def _sn_train_output(layer, h):
    return switch_norm_reference(
        h,
        layer.weight,
        layer.bias,
        layer.mean_weight,
        layer.var_weight,
        layer.running_mean.clone(),
        layer.running_var.clone(),
        training=True,
    )


@torch.no_grad()
def _expected(net: Net, batches: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The plain average over the batches of each layer's BN-branch statistics, computed with
    the reference layer (and, for the BN layer, the population statistics of fvcore's PreciseBN:
    every element of every batch, biased variance)."""
    stats = {k: [] for k in ("sn1", "sn2")}
    bn_inputs = []
    for x in batches:
        h = net.conv1(x)
        stats["sn1"].append(_bn_branch_stats(h))
        h = net.conv2(F.relu(_sn_train_output(net.sn1, h)))
        stats["sn2"].append(_bn_branch_stats(h))
        bn_inputs.append(_sn_train_output(net.sn2, h))
    out = {}
    for name, pairs in stats.items():
        out[f"{name}.running_mean"] = torch.stack([m for m, _ in pairs]).mean(0)
        out[f"{name}.running_var"] = torch.stack([v for _, v in pairs]).mean(0)
    every = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in bn_inputs], 1)
    out["bn.running_mean"] = every.mean(1)
    out["bn.running_var"] = every.var(1, unbiased=False)
    return out


def _assert_only_running_stats_changed(before, after, changed=("sn1.", "sn2.", "bn.")):
    assert before.keys() == after.keys()
    for key in before:
        if key.startswith(changed) and key.endswith(RUNNING):
            continue
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)


def test_precise_pass_averages_bn_branch_statistics_of_each_batch_and_changes_nothing_else():
    net = Net().train()
    net.sn1.num_batches.fill_(7)  # as after training in batch-average mode: the pass restarts
    batches = [b[0] for b in _batches(4, sizes=(3,))]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    update_sn_stats(net, iter(batches), num_iters=4)

    expected = _expected(net, batches)
    state = net.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=1e-10, atol=1e-10, msg=key)
    assert int(net.sn1.num_batches) == int(net.sn2.num_batches) == 4
    _assert_only_running_stats_changed(before, state)  # frozen and no-BN layers untouched
    assert all(m.using_moving_average for m in (net.sn1, net.sn2))  # mode restored
    assert net.training and all(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_precise_pass_uses_exactly_num_iters_batches():
    net, reference = Net().train(), Net().train()
    batches = [b[0] for b in _batches(5)]
    update_sn_stats(net, iter(batches), num_iters=3)
    expected = _expected(reference, batches[:3])
    torch.testing.assert_close(net.sn2.running_var, expected["sn2.running_var"])


def test_only_trainable_sn_layers_with_a_bn_branch_in_training_mode_are_updated():
    net = Net().train()
    net.sn2.eval()  # a layer the user keeps in eval mode is frozen in effect
    assert get_sn_modules(net) == [net.sn1]


def test_a_layer_that_sees_no_sample_keeps_its_statistics(caplog):
    net = Net().train()
    before = net.sn2.running_mean.clone()
    empty = [torch.zeros(0, 3, 6, 7, dtype=torch.float64)] * 2
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        update_sn_stats(nn.Sequential(net.conv2.__class__(3, 5, 1).double(), net.sn2), empty, 2)
    torch.testing.assert_close(net.sn2.running_mean, before, rtol=0, atol=0)
    assert "1 of 1 SN layers saw no sample in 2 batches" in caplog.text


def test_a_loader_that_ends_early_fails_and_restores_the_statistics():
    model = nn.Sequential(nn.Conv2d(3, 5, 1), SwitchNorm2d(5)).double().train()
    with torch.no_grad():
        model[1].running_var.fill_(3.0)
    with pytest.raises(RuntimeError, match="the data loader ended after 1"):
        update_sn_stats(model, [torch.randn(2, 3, 4, 4, dtype=torch.float64)], num_iters=2)
    assert bool((model[1].running_var == 3.0).all()) and int(model[1].num_batches) == 0
    assert model[1].using_moving_average


def test_num_iters_must_be_positive():
    with pytest.raises(ValueError, match="TEST.PRECISE_BN.NUM_ITER"):
        update_sn_stats(Net(), [], num_iters=0)


def test_hook_warns_once_and_does_nothing_when_there_is_nothing_to_recompute(caplog):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), FrozenSwitchNorm2d(4), SwitchNorm2d(4, using_bn=False)
    )
    with caplog.at_level(logging.WARNING, logger="sn_detection"):
        hook = PreciseSN(10, model, data_loader=[], num_iter=5)
        hook.update_stats()  # returns without touching the (empty) loader
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "TEST.PRECISE_BN.ENABLED is True but the model has no layer" in message
    assert "1 frozen (FrozenSwitchNorm2d), 1 without the BN branch" in message


def test_hook_names_the_config_keys_it_is_given():
    lazy = ("train.precise_bn.enabled", "train.precise_bn.num_iter")
    with pytest.raises(ValueError, match="train.precise_bn.num_iter must be positive.*set train"):
        PreciseSN(10, Net(), data_loader=[], num_iter=0, config_keys=lazy)


def test_hook_runs_the_pass_in_a_storage_of_its_own():
    from detectron2.utils.events import EventStorage

    class Logging(Net):
        def forward(self, x):
            from detectron2.utils.events import get_event_storage

            get_event_storage().put_scalar("from_the_pass", 1.0)
            return super().forward(x)

    net = Logging().train()
    batches = [b[0] for b in _batches(3)]
    with EventStorage() as storage:
        PreciseSN(0, net, batches, num_iter=3).update_stats()
    assert "from_the_pass" not in storage.histories()
    assert int(net.sn1.num_batches) == 3


# -- SyncSN in 2 processes ----------------------------------------------------------------------

SIZES = (2, 3)  # unequal per-process batches: the global statistics weight samples, not ranks


def _sync_worker(rank: int, world_size: int, batches):
    net = Net(sn=SyncSwitchNorm2d).train()
    update_sn_stats(net, [b[rank] for b in batches], num_iters=len(batches))
    return {k: v for k, v in net.state_dict().items() if k.endswith(RUNNING)}


def test_syncsn_precise_statistics_are_global_and_identical_on_every_process():
    batches = _batches(3, sizes=SIZES)
    ranks = run_distributed(_sync_worker, 2, batches, timeout=60)
    # the global batch of each iteration is the union of the processes' batches
    expected = _expected(Net().train(), [torch.cat(b) for b in batches])
    for key in ("sn1.running_mean", "sn1.running_var", "sn2.running_mean", "sn2.running_var"):
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ranks[0][key], expected[key], rtol=1e-10, atol=1e-10, msg=key)
    assert int(ranks[0]["sn2.num_batches"]) == int(ranks[1]["sn2.num_batches"]) == 3


# -- batch-average mode across a resume ---------------------------------------------------------


def test_batch_average_continues_after_save_and_resume(tmp_path):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(SwitchNorm2d(4, using_moving_average=False)).double().train()

    batches = [torch.randn(2, 4, 5, 5, dtype=torch.float64) for _ in range(4)]
    first = model()
    for x in batches[:3]:
        first(x)
    SNCheckpointer(first, str(tmp_path)).save("model_0000002")

    resumed = model()
    SNCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert int(resumed[0].num_batches) == 3
    resumed(batches[3])
    mean = torch.stack([_bn_branch_stats(x)[0] for x in batches]).mean(0)
    torch.testing.assert_close(resumed[0].running_mean, mean, rtol=1e-12, atol=1e-12)
