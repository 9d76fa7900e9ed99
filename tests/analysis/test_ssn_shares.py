"""Sparse SN layers in the analysis (sn_detection.analysis): their weights are their sparsestmax
weights (one-hot where fixed), read from a model, our checkpoints or the official SSN layout, with
each layer's choice and fixed flags, counted per part and logged as a training scalar."""

import pytest
import torch

from sn_detection.analysis import (
    AnalysisError,
    fixed_scalar_name,
    load_shares,
    model_shares,
    share_scalars,
    state_dict_shares,
    summarize,
)
from sn_detection.analysis.metrics import fixed_at
from sn_detection.layers import sparse_switch_norms
from sn_detection.layers.switch_norm import BRANCHES
from sn_detection.testing import sparse_sn_model, sparsestmax_reference

OFFICIAL = "layer1.0.sn1"


def official_ssn_state(mean_fixed: int, var_fixed: int, radius: float) -> dict:
    """One layer of the official SSN2d as its state dict holds it (official shapes)."""
    c = 4
    return {
        f"{OFFICIAL}.weight": torch.ones(1, c, 1, 1),
        f"{OFFICIAL}.bias": torch.zeros(1, c, 1, 1),
        f"{OFFICIAL}.mean_weight": torch.tensor([0.1, 0.5, 0.2]),
        f"{OFFICIAL}.var_weight": torch.tensor([0.5, 0.3, 0.2]),
        f"{OFFICIAL}.running_mean": torch.zeros(1, c, 1),
        f"{OFFICIAL}.running_var": torch.ones(1, c, 1),
        f"{OFFICIAL}.mean_fixed": torch.tensor([mean_fixed]),
        f"{OFFICIAL}.var_fixed": torch.tensor([var_fixed]),
        f"{OFFICIAL}.radius": torch.tensor([radius]),
    }


def test_checkpoint_shares_of_ssn_layers_are_their_weights_not_a_softmax():
    model = sparse_sn_model()
    layers = state_dict_shares(model.state_dict())
    for shares, (name, layer) in zip(layers, sparse_switch_norms(model)):
        mean, var = (dict(zip(BRANCHES, w.tolist())) for w in layer.mix_weights())
        assert shares.name == name
        assert shares.mean == pytest.approx(mean, abs=1e-6)
        assert shares.var == pytest.approx(var, abs=1e-6)


def test_checkpoint_records_each_ssn_layers_choice_and_fixed_flags():
    layers = state_dict_shares(sparse_sn_model().state_dict())
    assert [(s.fixed, s.choice("mean"), s.choice("var")) for s in layers] == [
        ((True, True), "IN", "BN"),
        ((True, False), "LN", None),
        ((False, False), None, None),
    ]
    assert layers[0].to_dict()["mean_choice"] == "IN" and layers[1].to_dict()["var_fixed"] is False


def test_model_shares_record_the_same_choices_and_flags_as_the_checkpoint():
    model = sparse_sn_model()
    from_model = [(s.name, s.fixed, s.mean, s.var) for s in model_shares(model)]
    from_state = [(s.name, s.fixed, s.mean, s.var) for s in state_dict_shares(model.state_dict())]
    assert [x[:2] for x in from_model] == [x[:2] for x in from_state]
    for (_, _, mean, var), (_, _, want_mean, want_var) in zip(from_model, from_state):
        assert mean == pytest.approx(want_mean, abs=1e-6) and var == pytest.approx(want_var)


def test_an_sn_layer_has_no_choice_or_fixed_flags():
    state = official_ssn_state(0, 0, 0.0)
    del state[f"{OFFICIAL}.radius"]  # without all three SSN buffers: an SN layer
    (layer,) = state_dict_shares(state)
    assert layer.fixed is None and "mean_choice" not in layer.to_dict()
    assert layer.mean == pytest.approx(
        dict(zip(BRANCHES, torch.softmax(torch.tensor([0.1, 0.5, 0.2]), 0).tolist()))
    )


def test_official_ssn_layout_fixed_mean_is_its_argmax_one_hot_and_var_its_sparsestmax():
    (layer,) = state_dict_shares(official_ssn_state(mean_fixed=1, var_fixed=0, radius=0.3))
    assert layer.mean == {"IN": 0.0, "LN": 1.0, "BN": 0.0}
    want = dict(zip(BRANCHES, sparsestmax_reference([0.5, 0.3, 0.2], 0.3)))
    assert layer.var == pytest.approx(want, abs=1e-6)
    assert (layer.fixed, layer.choice("mean"), layer.choice("var")) == ((True, False), "LN", None)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_fixed_flags_saved_as_bool_or_byte_are_read(dtype):
    state = official_ssn_state(mean_fixed=1, var_fixed=0, radius=0.3)
    for name in ("mean_fixed", "var_fixed"):
        state[f"{OFFICIAL}.{name}"] = state[f"{OFFICIAL}.{name}"].to(dtype)
    (layer,) = state_dict_shares(state)
    assert (layer.fixed, layer.choice("mean")) == ((True, False), "LN")


def test_official_ssn_checkpoint_file_reads_as_a_state_dict(tmp_path):
    path = tmp_path / "ssn.pth"
    state = official_ssn_state(mean_fixed=1, var_fixed=1, radius=0.0)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    (layer,) = load_shares(str(path)).layers
    assert (layer.name, layer.choice("mean"), layer.choice("var")) == (OFFICIAL, "LN", "IN")


def test_an_ssn_buffer_of_several_values_is_refused_naming_it():
    state = official_ssn_state(0, 0, 0.5)
    state[f"{OFFICIAL}.radius"] = torch.tensor([0.5, 0.5])
    with pytest.raises(AnalysisError, match=rf"src: {OFFICIAL}\.radius has 2 values"):
        state_dict_shares(state, source="src")


def test_part_summary_counts_the_ssn_choices_and_fixed_layers():
    summary = summarize(state_dict_shares(sparse_sn_model().state_dict()))
    assert summary["res3"]["ssn"] == {
        "layers": 2,
        "mean_choice": {"IN": 1, "LN": 1, "BN": 0},
        "mean_fixed": 2,
        "var_choice": {"IN": 0, "LN": 0, "BN": 1},
        "var_fixed": 1,
    }
    assert summary["fpn"]["ssn"]["mean_fixed"] == 0


def test_training_scalars_give_the_fixed_fraction_of_ssn_parts_only():
    scalars = share_scalars(model_shares(sparse_sn_model()))
    assert scalars[fixed_scalar_name("res3")] == 0.75
    assert scalars[fixed_scalar_name("fpn")] == 0.0
    sn = share_scalars(
        state_dict_shares({"a.b.mean_weight": torch.zeros(3), "a.b.var_weight": torch.zeros(3)})
    )
    assert not [k for k in sn if k.endswith("/fixed")]


def test_fixed_at_is_the_first_iteration_from_which_a_part_stays_fixed():
    records = [
        {"iteration": 19, "sn/res3/fixed": 0.5, "sn/fpn/fixed": 0.0},
        {"iteration": 39, "sn/res3/fixed": 1.0, "sn/fpn/fixed": 0.5},
        {"iteration": 59, "sn/res3/fixed": 1.0, "sn/fpn/fixed": 0.5},
    ]
    assert fixed_at(records, "metrics.json") == {"res3": 39, "fpn": None}
    assert fixed_at([{"iteration": 0, "sn/res3/mean_IN": 0.3}], "metrics.json") == {}
