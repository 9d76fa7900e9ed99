"""SN shares of a model (sn_detection.analysis.shares): every SN layer, frozen ones included, in
network order, equal to the softmax of its logits."""

import pytest
import torch
from torch import nn

from sn_detection.analysis import model_shares, part_of, share_scalars
from sn_detection.layers import FrozenSwitchNorm2d, SparseSwitchNorm2d, SwitchNorm2d, set_ssn_radius


def test_part_and_short_name_come_from_the_module_name():
    assert part_of("backbone.bottom_up.res3.0.conv1.norm") == ("res3", "res3.0.conv1.norm")
    assert part_of("roi_heads.mask_head.mask_fcn1.norm") == (
        "mask_head",
        "mask_head.mask_fcn1.norm",
    )
    assert part_of("backbone.fpn_lateral3.norm") == ("fpn", "fpn_lateral3.norm")
    assert part_of("norm_out") == ("res5", "norm_out")
    assert part_of("neck.block.norm") == ("neck.block", "neck.block.norm")


def test_model_shares_list_every_sn_layer_in_network_order_with_softmax_shares():
    model = nn.Module()
    model.head = nn.Module()
    model.head.box_head = SwitchNorm2d(4, using_bn=False)
    model.stem = FrozenSwitchNorm2d(4)
    with torch.no_grad():
        model.stem.mean_weight.copy_(torch.tensor([0.0, 1.0, 2.0]))
        model.head.box_head.var_weight.copy_(torch.tensor([1.0, 0.0]))
    layers = model_shares(model)
    assert [(layer.name, layer.part, layer.using_bn) for layer in layers] == [
        ("stem", "stem", True),
        ("head.box_head", "box_head", False),
    ]
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0).tolist()
    assert list(layers[0].mean.values()) == [float(x) for x in expected]
    assert layers[1].var["BN"] == 0.0 and abs(sum(layers[1].var.values()) - 1) < 1e-6


def test_training_scalars_keep_their_names():
    scalars = share_scalars(model_shares(nn.Sequential(SwitchNorm2d(4))))
    assert {"sn/0/mean_IN", "sn/0/var_BN", "[metric]sn/BN_mean", "[metric]sn/BN_var"} <= set(
        scalars
    )


def test_model_shares_of_a_sparse_sn_layer_are_its_sparsestmax_weights():
    layer = SparseSwitchNorm2d(4)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.9, 0.1, 0.0]))
    set_ssn_radius(layer, 0.2)
    (shares,) = model_shares(nn.Sequential(layer))
    want = dict(zip(("IN", "LN", "BN"), layer.mix_weights()[0].tolist()))
    assert shares.mean == pytest.approx(want, abs=1e-6) and shares.mean["BN"] == 0.0
