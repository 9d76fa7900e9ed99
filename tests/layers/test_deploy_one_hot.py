"""One-hot SN layers deploy as the single norm they chose: ``harden`` rounds SN layers to one-hot
frozen layers, ``deployable`` replaces one-hot layers by plain modules (BN folded into
detectron2's convolutions) equal to eager SN in eval mode, traced, scripted and in ONNX."""

import io
import itertools

import pytest
import torch
from detectron2.export.torchscript_patch import freeze_training_mode
from detectron2.layers import Conv2d
from torch import nn

from sn_detection.export import FOLDED, SOFT, deployable
from sn_detection.layers import FrozenSwitchNorm2d, SparseSwitchNorm2d, SwitchNorm2d
from sn_detection.layers.one_hot_norm import ChannelAffine2d, OneHotNorm2d, harden
from sn_detection.layers.switch_norm import BRANCHES, named_switch_norms
from sn_detection.testing import randomize_sn_state
from sn_detection.utils.cli import InputError

CHOICES = list(itertools.product(BRANCHES, BRANCHES))


def _model(choices, in_conv=False, dtype=torch.float64, seed=0):
    """conv -> SN per choice (mean, var), each SN layer with random state whose largest logits
    are the chosen branches, hardened: frozen SN layers with exactly one-hot shares. With
    ``in_conv``, detectron2 Conv2d layers holding the SN layers as their norm (the second
    with a bias)."""
    torch.manual_seed(seed)
    layers = []
    for i, _ in enumerate(choices):
        if in_conv:
            layers.append(Conv2d(4, 4, 3, padding=1, bias=i % 2 == 1, norm=SwitchNorm2d(4)))
        else:
            layers += [nn.Conv2d(4, 4, 3, padding=1, bias=False), SwitchNorm2d(4)]
    model = randomize_sn_state(nn.Sequential(*layers), affine=True).to(dtype)
    with torch.no_grad():
        for (_, layer), (mean, var) in zip(named_switch_norms(model), choices):
            layer.mean_weight[BRANCHES.index(mean)] += 10.0
            layer.var_weight[BRANCHES.index(var)] += 10.0
    harden(model)
    return model.eval()


def _input(dtype=torch.float64):
    return 2.0 * torch.randn(3, 4, 7, 9, dtype=dtype) + 0.5


@pytest.mark.parametrize("choice", CHOICES, ids=["-".join(c) for c in CHOICES])
def test_one_hot_layer_deploys_equal_to_eager_sn_in_float64(choice):
    model = _model([choice])
    x = _input()
    with torch.no_grad():
        want = model(x)
        deployed = deployable(model).model
        got = deployed(x)
    assert not any(isinstance(m, (SwitchNorm2d, FrozenSwitchNorm2d)) for m in deployed.modules())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_fixed_sparse_layer_deploys_as_its_choice_equal_to_eager():
    layer = SparseSwitchNorm2d(4).double()
    randomize_sn_state(nn.Sequential(layer), affine=True)
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.0, 3.0, 0.0]))  # LN for the means
        layer.var_weight.copy_(torch.tensor([4.0, 0.0, 0.0]))  # IN for the variances
        layer.radius.fill_(1.0)
        layer.train()(_input())  # a training forward finds them one-hot and fixes them
    model = nn.Sequential(nn.Identity(), layer).eval()
    x = _input()
    with torch.no_grad():
        want = model(x)
        deployment = deployable(model)
        got = deployment.model(x)
    assert deployment.layers == {"1": "LN mean, IN var"}
    assert isinstance(deployment.model[1], OneHotNorm2d)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_bn_layer_in_a_detectron2_conv_is_folded_into_its_weight_and_bias():
    model = _model([("BN", "BN"), ("BN", "BN")], in_conv=True)
    x = _input()
    with torch.no_grad():
        want = model(x)
        deployment = deployable(model)
        got = deployment.model(x)
    assert deployment.layers == {"0.norm": FOLDED, "1.norm": FOLDED}
    assert all(conv.norm is None for conv in deployment.model)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_bn_layer_outside_a_convolution_becomes_a_per_channel_affine():
    deployed = deployable(_model([("BN", "BN")])).model
    assert isinstance(deployed[1], ChannelAffine2d)


def test_deployed_layers_hold_and_compute_only_the_statistics_their_choice_needs():
    deployed = deployable(_model([("IN", "BN"), ("LN", "LN")])).model
    assert set(dict(deployed[1].named_buffers())) == {"weight", "bias", "running_var"}
    assert set(dict(deployed[3].named_buffers())) == {"weight", "bias"}
    graph = str(torch.jit.trace(deployed[1], _input()).graph)
    assert "aten::mean" in graph and "linalg_vector_norm" not in graph  # no variance pass


def test_soft_layers_stay_and_are_reported_as_kept():
    torch.manual_seed(0)
    model = randomize_sn_state(nn.Sequential(nn.Conv2d(3, 4, 1), SwitchNorm2d(4)))
    deployment = deployable(model)
    assert isinstance(deployment.model[1], SwitchNorm2d)
    assert deployment.layers == {"1": SOFT}


def _exports():
    def onnx_runner(model, x):
        ort = pytest.importorskip("onnxruntime")
        buffer = io.BytesIO()
        axes = {"x": {0: "n", 2: "h", 3: "w"}}
        torch.onnx.export(
            model,
            (x,),
            buffer,
            dynamo=False,
            input_names=["x"],
            dynamic_axes=axes,
            opset_version=17,
        )
        session = ort.InferenceSession(buffer.getvalue())
        return lambda y: torch.from_numpy(session.run(None, {"x": y.numpy()})[0])

    dims = ({0: torch.export.Dim("n"), 2: torch.export.Dim("h"), 3: torch.export.Dim("w")},)
    return {
        "jit.trace": lambda m, x: torch.jit.trace(m, x),
        "jit.script": lambda m, x: torch.jit.script(m),
        "torch.export": lambda m, x: torch.export.export(m, (x,), dynamic_shapes=dims).module(),
        "onnx": onnx_runner,
    }


@pytest.mark.parametrize("exporter", list(_exports()))
def test_deployed_model_exports_equal_to_eager_for_every_choice(exporter):
    dtype = torch.float32 if exporter == "onnx" else torch.float64
    model = _model(CHOICES, in_conv=True, dtype=dtype)
    deployed = deployable(model).model
    exported = _exports()[exporter](deployed, _input(dtype))
    x = 2.0 * torch.randn(2, 4, 5, 6, dtype=dtype) + 0.5  # another shape than the example
    with torch.no_grad():
        want, got = model(x), exported(x)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


def test_deployed_model_scripts_under_detectron2s_scripting_patches():
    model = _model(CHOICES, in_conv=True)
    deployed = deployable(model).model
    with freeze_training_mode(deployed):  # what scripting_with_instances does to every module
        scripted = torch.jit.script(deployed)
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=1e-10)


# -- harden --------------------------------------------------------------------------------------


def test_harden_makes_every_layer_frozen_with_one_hot_shares_of_its_argmax():
    torch.manual_seed(0)
    model = randomize_sn_state(nn.Sequential(SwitchNorm2d(4), nn.ReLU(), SwitchNorm2d(4)))
    argmax = [(int(m.mean_weight.argmax()), int(m.var_weight.argmax())) for m in model[::2]]
    harden(model)
    for layer, (i, j) in zip(model[::2], argmax):
        assert isinstance(layer, FrozenSwitchNorm2d)
        p, q = layer.mix_weights()
        assert p.tolist() == torch.eye(3)[i].tolist() and q.tolist() == torch.eye(3)[j].tolist()


def test_harden_reports_the_dropped_share_per_layer_and_in_all():
    torch.manual_seed(0)
    model = randomize_sn_state(nn.Sequential(SwitchNorm2d(4), SwitchNorm2d(4)))
    shares = [(layer.mix_weights()) for layer in model]
    report = harden(model)
    assert list(report.layers) == ["0", "1"]
    for (p, q), hardened in zip(shares, report.layers.values()):
        assert hardened.mean == BRANCHES[int(p.argmax())]
        assert hardened.dropped_mean == pytest.approx(1 - float(p.max()))
        assert hardened.dropped_var == pytest.approx(1 - float(q.max()))
    assert report.total == pytest.approx(float(sum(2 - p.max() - q.max() for p, q in shares)))
    assert report.lines()[-1].startswith(f"dropped share: {report.total:.4f} in all")


def test_harden_of_a_model_without_sn_layers_is_refused_saying_so():
    with pytest.raises(InputError, match="has no SN layer"):
        harden(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))


def test_harden_of_a_trainable_sn_layer_itself_is_refused_naming_what_to_pass():
    with pytest.raises(InputError, match="pass the module holding the layer"):
        harden(SwitchNorm2d(4))
