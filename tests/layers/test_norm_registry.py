"""The norm registry: SN names, detectron2's names, callables and errors."""

import pytest
from torch import nn

from sn_detection.layers import (
    SparseSwitchNorm2d,
    SwitchNorm2d,
    SyncSparseSwitchNorm2d,
    SyncSwitchNorm2d,
    get_norm,
    norm_factory,
    register_norm,
    valid_norm_names,
)
from sn_detection.layers.norm import DETECTRON2_NORMS, UnknownNormError
from sn_detection.utils.cli import InputError


def test_sn_names_build_sn_layers_with_options():
    sn = get_norm("SN", 8, momentum=0.2, using_bn=False)
    assert type(sn) is SwitchNorm2d and sn.num_features == 8
    assert sn.momentum == 0.2 and not sn.using_bn
    assert type(get_norm("SyncSN", 8)) is SyncSwitchNorm2d


def test_ssn_names_build_sparse_sn_layers_with_options():
    ssn = get_norm("SSN", 8, momentum=0.2, using_bn=False)
    assert type(ssn) is SparseSwitchNorm2d and ssn.momentum == 0.2 and not ssn.using_bn
    assert type(get_norm("SyncSSN", 8)) is SyncSparseSwitchNorm2d
    assert {"SSN", "SyncSSN"} <= set(valid_norm_names())


@pytest.mark.parametrize("name", DETECTRON2_NORMS)
def test_every_detectron2_name_is_handed_to_detectron2(name):
    layer = get_norm(name, 32, momentum=0.5)  # SN options are ignored by detectron2's norms
    assert isinstance(layer, nn.Module)
    assert not isinstance(layer, SwitchNorm2d)


def test_group_norm_has_32_groups():
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32


def test_empty_and_none_mean_no_norm():
    assert get_norm("", 4) is None and get_norm(None, 4) is None
    assert norm_factory("") == ""


def test_callable_is_called_with_channels():
    assert isinstance(get_norm(lambda c: nn.BatchNorm2d(c), 3), nn.BatchNorm2d)


def test_unknown_name_lists_every_valid_name():
    with pytest.raises(ValueError) as e:
        get_norm("SwitchNorm", 4)
    message = str(e.value)
    assert "'SwitchNorm'" in message
    for name in valid_norm_names():
        assert name in message
    with pytest.raises(ValueError, match="Valid names"):
        norm_factory("sn")


def test_unknown_name_is_an_input_error_that_names_where_it_was_given():
    with pytest.raises(InputError) as e:
        norm_factory("sn", key="MODEL.FPN.NORM", eps=1e-3)
    assert isinstance(e.value, UnknownNormError)
    assert str(e.value).startswith("MODEL.FPN.NORM is 'sn', which is not a norm. Valid names: SN,")
    assert "\n" not in str(e.value)


def test_get_norm_and_norm_factory_give_one_error_text():
    with pytest.raises(UnknownNormError) as built:
        get_norm("Switch", 4, key="k")
    with pytest.raises(UnknownNormError) as factory:
        norm_factory("Switch", key="k")
    assert str(built.value) == str(factory.value)


def test_factory_builds_with_options():
    factory = norm_factory("SN", eps=1e-3)
    layer = factory(16)
    assert isinstance(layer, SwitchNorm2d) and layer.eps == 1e-3


def test_register_norm_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_norm("GN", nn.GroupNorm)
