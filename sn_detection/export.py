"""Export of SN models for deployment: what ``tools/deploy/export_model.py`` runs.

In eval mode SN layers export as plain aten operators (the portable path), so the files run
without sn_detection; SyncSN exports as SN, and a layer whose mix weights are one-hot (fixed
sparse SN, or any SN layer after :func:`harden`) as exactly the norm it chose (:func:`deployable`;
BN folded into the convolution). Methods, as detectron2's tool names them: ``tracing``
(``model.ts``, or ``model.onnx`` with ``--format onnx``), ``scripting`` (``model.ts``) and
``torch_export`` (``model.pt2``: normalisation, backbone and FPN only); docs/DEPLOYMENT.md says
what each file takes and returns. Files are written whole or not at all; bad input raises
:class:`ExportError` or :class:`CheckpointError`, one line saying what to do instead.
"""

import io
import logging
import os
import tempfile
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, detection_utils
from detectron2.data import transforms as T
from detectron2.export import TracingAdapter, dump_torchscript_IR, scripting_with_instances
from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema
from detectron2.layers import Conv2d
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import Boxes
from torch import Tensor, nn

from .checkpoint import CheckpointError, SNCheckpointer
from .checkpoint.errors import sample_keys
from .layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d
from .layers.one_hot_norm import (
    HardenReport,
    bn_scale_shift,
    fold_into_conv,
    harden,
    one_hot_choice,
    one_hot_norm,
)
from .utils.cli import InputError
from .utils.file_io import atomic_save

logger = logging.getLogger(__name__)

EXPORT_METHODS = ("tracing", "scripting", "torch_export", "caffe2_tracing")
FORMATS = ("torchscript", "onnx")
SOFT = "SN (soft mix, kept)"  # what deployable reports for a layer that is not one-hot
FOLDED = "BN folded into the convolution"
SN_LAYERS = (SwitchNorm2d, FrozenSwitchNorm2d)  # with SyncSN and sparse SN, their subclasses
ONNX_OPSET = 17  # RoiAlign-16 has the half-pixel ("aligned") mode of detectron2's ROIAlignV2

# the Instances fields of detectron2's models, with their types, for scripting
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
    "pred_keypoints": Tensor,
    "pred_keypoint_heatmaps": Tensor,
}


class ExportError(InputError):
    """An export that cannot work as asked; the message is one line saying what to do instead."""


def check_method(method: str, fmt: str) -> None:
    """Raise :class:`ExportError` for a method/format pair that cannot work."""
    if method not in EXPORT_METHODS:
        choices = ", ".join(EXPORT_METHODS)
        raise ExportError(f"unknown export method {method!r}: use one of {choices}")
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if method == "caffe2_tracing":
        raise ExportError(
            "caffe2_tracing needs Caffe2, which PyTorch no longer ships (and its tracer does not "
            "know SN): use --export-method tracing (--format torchscript or onnx) or torch_export"
        )
    if method == "scripting" and fmt != "torchscript":
        raise ExportError(
            "scripting writes TorchScript only: use --export-method tracing --format onnx for ONNX"
        )
    if method == "torch_export" and fmt != "torchscript":
        raise ExportError(
            "torch_export writes a .pt2 program (--format is not used): use --export-method "
            "tracing --format onnx for ONNX"
        )


class Deployment(NamedTuple):
    """:func:`deployable`'s result: the model, and per SN layer name what it became."""

    model: nn.Module
    layers: Dict[str, str]

    def lines(self) -> List[str]:
        """One line per SN layer and a line of counts, for a log."""
        if not self.layers:
            return ["no SN layer"]
        width = max(len(name) for name in self.layers)
        counts = Counter(self.layers.values())
        summary = "; ".join(f"{what}: {n}" for what, n in counts.most_common())
        return [f"{name:<{width}}  {what}" for name, what in self.layers.items()] + [summary]


def _describe(choice: Tuple[str, str]) -> str:
    mean, var = choice
    if mean != var:
        return f"{mean} mean, {var} var"
    return "BN (per-channel affine)" if mean == "BN" else mean


def _deploy_children(module: nn.Module, prefix: str, layers: Dict[str, str]) -> None:
    for name, child in module.named_children():
        path = prefix + name
        if isinstance(child, SN_LAYERS):
            choice = one_hot_choice(child)
            if choice is None:
                layers[path] = SOFT
                continue
            setattr(module, name, one_hot_norm(child, choice))
            layers[path] = _describe(choice)
        elif isinstance(child, Conv2d) and isinstance(child.norm, SN_LAYERS):
            choice = one_hot_choice(child.norm)
            if choice == ("BN", "BN"):
                fold_into_conv(child, *bn_scale_shift(child.norm))
                child.norm = None
                layers[path + ".norm"] = FOLDED
            else:
                _deploy_children(child, path + ".", layers)
        else:
            _deploy_children(child, path + ".", layers)


def deployable(model: nn.Module) -> Deployment:
    """``model`` in eval mode for export, in place where its SN layers are children: SyncSN
    layers as SN, and every SN layer whose mean and variance weights are each one-hot (fixed
    sparse SN, frozen SN with one-hot shares, :func:`harden`-ed layers) as exactly that norm: BN
    for both folded into the convolution holding it (detectron2's ``Conv2d.norm``; elsewhere a
    per-channel affine), else a ``OneHotNorm2d`` computing only the statistics its choice needs.
    Other SN layers stay. Returns the model and what each SN layer became (``SOFT``: kept)."""
    model = SyncSwitchNorm2d.revert_sync_switchnorm(model).eval()
    layers: Dict[str, str] = {}
    if isinstance(model, SN_LAYERS):
        choice = one_hot_choice(model)
        if choice is None:
            return Deployment(model, {"": SOFT})
        return Deployment(one_hot_norm(model, choice).eval(), {"": _describe(choice)})
    _deploy_children(model, "", layers)
    return Deployment(model.eval(), layers)


def deploy(
    model: nn.Module, harden_layers: bool = False
) -> Tuple[Deployment, Optional[HardenReport]]:
    """:func:`deployable` of ``model``, :func:`harden`-ed first with ``harden_layers``, and the
    hardening report (None without). What export and ``--eval-only --harden`` run."""
    hardened = harden(model) if harden_layers else None
    return deployable(model), hardened


def deployment_log(deployment: Deployment, hardened: Optional[HardenReport]) -> str:
    """The log text of :func:`deploy`: the hardened layers (if any), then what each became."""
    text = ""
    if hardened is not None:
        text = "Hardened SN layers:\n" + "\n".join(hardened.lines()) + "\n"
    return text + "SN layers deployed as:\n" + "\n".join(deployment.lines())


def deploy_hardened(model: nn.Module) -> nn.Module:
    """``model`` (loaded, any mode) as ``--eval-only --harden`` evaluates it: every SN layer
    rounded to its argmax choice, then :func:`deployable` (one-hot layers as their single norm,
    BN folded into the convolution); what each layer became is logged."""
    deployment, hardened = deploy(model, harden_layers=True)
    logger.info(deployment_log(deployment, hardened))
    return deployment.model


def _rcnn_inference(model: GeneralizedRCNN, inputs: List[Dict[str, Tensor]]) -> list:
    # no postprocessing: RoI masks as computed, boxes in the input image's coordinates
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def tracing_adapter(model: nn.Module, image: Tensor) -> TracingAdapter:
    """detectron2's ``TracingAdapter`` of an eval-mode model for one (3, H, W) image; R-CNN models
    skip the final postprocessing, as in detectron2's tool."""
    inference = _rcnn_inference if isinstance(model, GeneralizedRCNN) else None
    return TracingAdapter(model, [{"image": image}], inference)


def trace(model: nn.Module, image: Tensor) -> Tuple[torch.jit.ScriptModule, TracingAdapter]:
    """The traced model (TorchScript) and the adapter whose ``outputs_schema`` rebuilds outputs."""
    adapter = tracing_adapter(model, image)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
    return traced, adapter


def output_names(adapter: TracingAdapter) -> List[str]:
    """Names of the flattened outputs of a traced adapter: the field names (``pred_boxes``,
    ``scores``, ..., ``image_size``), prefixed by their path only where names repeat."""
    paths: List[List[str]] = []

    def walk(schema, path: List[str]) -> None:
        if isinstance(schema, InstancesSchema):
            for key, sub in zip(schema.keys, schema.schemas):
                walk(sub, path + [key])
            paths.append(path + ["image_size"])
        elif isinstance(schema, DictSchema):
            for key, sub in zip(schema.keys, schema.schemas):
                walk(sub, path + [key])
        elif isinstance(schema, ListSchema):
            for i, sub in enumerate(schema.schemas):
                walk(sub, path + ([str(i)] if len(schema.schemas) > 1 else []))
        else:
            paths.append(path or ["output"])

    walk(adapter.outputs_schema, [])
    leaves = [p[-1] for p in paths]
    return [leaf if leaves.count(leaf) == 1 else "/".join(p) for leaf, p in zip(leaves, paths)]


def _inline_initializer_aliases(onnx_model) -> None:
    """Let consumers of ``Identity(initializer)`` read the initializer itself. The exporter writes
    such aliases for parameters with equal values (e.g. SN weights still at 1); onnxruntime 1.32
    then rejects the graph ("Node input ... is not a graph input, initializer, or output of a
    previous node") at every optimisation level but none. The graph computes the same."""
    import onnx

    graph = onnx_model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            if node.output[0] not in outputs:
                alias[node.output[0]] = node.input[0]
                continue
        kept.append(node)

    def rename(g) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    rename(attr.g)

    del graph.node[:]
    graph.node.extend(kept)
    rename(graph)


def export_onnx(adapter: TracingAdapter, image: Tensor, path: str) -> List[str]:
    """Export the traced adapter to ONNX (TorchScript-based exporter, opset ``ONNX_OPSET``, input
    "image" of dynamic height and width) in ``path``; returns the output names."""
    import onnx

    buffer = io.BytesIO()
    with torch.no_grad():
        adapter(image)  # fills outputs_schema
        names = output_names(adapter)
        torch.onnx.export(
            adapter,
            (image,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=names,
            dynamic_axes={"image": {1: "height", 2: "width"}, **{n: {0: "n"} for n in names}},
        )
    model = onnx.load_model_from_string(buffer.getvalue())
    _inline_initializer_aliases(model)
    onnx.checker.check_model(model)
    atomic_save(path, lambda f: f.write(model.SerializeToString()))
    return names


class _ScriptableRCNN(nn.Module):
    """R-CNN inference without postprocessing, returning plain dicts (as detectron2's tool)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class _ScriptableModel(_ScriptableRCNN):
    """Any other detectron2 model: its forward, returning plain dicts."""

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        instances = self.model(inputs)
        return [i.get_fields() for i in instances]


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``scripting_with_instances`` of an eval-mode model; :class:`ExportError` when detectron2
    cannot script it."""
    adapter_cls = _ScriptableRCNN if isinstance(model, GeneralizedRCNN) else _ScriptableModel
    try:
        return scripting_with_instances(adapter_cls(model), SCRIPTING_FIELDS)
    except (RuntimeError, torch.jit.frontend.NotSupportedError, TypeError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), repr(e))
        raise ExportError(
            f"{type(model).__name__} cannot be scripted by TorchScript ({first}): use "
            "--export-method tracing"
        ) from e


class _NormalizedBackbone(nn.Module):
    """Pixel normalisation and the backbone (with FPN): what ``torch.export`` accepts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), persistent=False)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        return self.backbone((images - self.pixel_mean) / self.pixel_std)


def backbone_input(model: nn.Module, image: Tensor) -> Tensor:
    """A (3, H, W) image as the (1, 3, H', W') input of the ``torch_export`` program: zero-padded
    at the bottom and right to multiples of the backbone's size_divisibility (as ImageList pads
    normalised images with 0, this pads with the pixel mean)."""
    d = max(model.backbone.size_divisibility, 1)
    h, w = image.shape[-2:]
    padded = model.pixel_mean.to(image).expand(3, -(-h // d) * d, -(-w // d) * d).clone()
    padded[:, :h, :w] = image
    return padded[None]


def export_backbone(model: nn.Module, images: Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of pixel normalisation + backbone for (N, 3, H, W) ``images`` (H and W
    multiples of the size divisibility d, at least 3 d); batch, H and W stay dynamic."""
    d = max(model.backbone.size_divisibility, 1)
    n, _, h, w = images.shape
    if h % d or w % d or h < 3 * d or w < 3 * d:
        raise ExportError(
            f"torch_export needs an image whose height and width are multiples of {d}, at least "
            f"{3 * d} (got {h}x{w}): pass it through sn_detection.export.backbone_input"
        )
    if n == 1:  # an example of one image would specialise the program to batch 1
        images = images.expand(2, -1, -1, -1)
    dims = {
        0: torch.export.Dim("batch", min=1, max=1024),
        2: d * torch.export.Dim("height_blocks", min=3, max=8192 // d),
        3: d * torch.export.Dim("width_blocks", min=3, max=8192 // d),
    }
    with torch.no_grad():
        return torch.export.export(_NormalizedBackbone(model), (images,), dynamic_shapes=(dims,))


def _save_torchscript(module: torch.jit.ScriptModule, output_dir: str) -> str:
    """``model.ts`` and detectron2's IR dumps in ``output_dir``, each file whole or not at all."""
    path = os.path.join(output_dir, "model.ts")
    atomic_save(path, lambda f: torch.jit.save(module, f))
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".ir.") as tmp:
        dump_torchscript_IR(module, tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(output_dir, name))
    return path


def export(
    model: nn.Module, image: Tensor, method: str, fmt: str, output_dir: str
) -> Tuple[str, Optional[TracingAdapter]]:
    """Export an eval-mode ``model`` (see :func:`deployable`) by ``method`` to ``fmt`` in
    ``output_dir``, with ``image`` (3, H, W) as the example input; returns the written file and,
    for tracing, the adapter (its ``outputs_schema`` rebuilds detectron2 outputs)."""
    check_method(method, fmt)
    check_output_dir(output_dir)
    if model.training:
        raise ExportError(
            "the model is in training mode: export sn_detection.export.deployable(model).model"
        )
    os.makedirs(output_dir, exist_ok=True)
    if method == "torch_export":
        program = export_backbone(model, backbone_input(model, image))
        path = os.path.join(output_dir, "model.pt2")
        atomic_save(path, lambda f: torch.export.save(program, f))
        return path, None
    if method == "scripting":
        return _save_torchscript(script(model), output_dir), None
    if fmt == "onnx":
        adapter = tracing_adapter(model, image)
        path = os.path.join(output_dir, "model.onnx")
        names = export_onnx(adapter, image, path)
        logger.info("ONNX outputs: " + ", ".join(names))
        return path, adapter
    traced, adapter = trace(model, image)
    path = _save_torchscript(traced, output_dir)
    logger.info("Outputs schema: " + str(adapter.outputs_schema))
    return path, adapter


# -- from a config: what the tool runs -------------------------------------------------------------


def check_output_dir(output_dir: str) -> None:
    """Raise :class:`ExportError` when ``output_dir`` cannot become the folder of the exported
    files: a file, or in a folder that is not writable (it is created when missing)."""
    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ExportError(f"--output {output_dir} is a file: give a folder for the exported files")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ExportError(f"--output {output_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"--output {output_dir}: {existing} is not writable: give another folder")


def sample_image(cfg: CfgNode, path: Optional[str] = None) -> Tensor:
    """The (3, H, W) float32 example input (pixels 0-255 in ``INPUT.FORMAT``): ``path`` read and
    resized as DefaultPredictor does, or the first image of ``DATASETS.TEST[0]`` as its test
    loader gives it."""
    if path is None:
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
        return next(iter(loader))[0]["image"].float()
    if not os.path.isfile(path):
        raise ExportError(f"--sample-image {path}: no such file")
    try:
        image = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ExportError(f"--sample-image {path} is not an image that PIL can read ({e})") from e
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def _require_weights(weights: str) -> None:
    if not weights:
        raise CheckpointError(
            "MODEL.WEIGHTS is not set: an export needs the trained weights (MODEL.WEIGHTS "
            "/path/to/model_final.pth)"
        )


def load_weights(model: nn.Module, weights: str, allow_partial: bool = False) -> None:
    """Load ``weights`` (MODEL.WEIGHTS) into ``model`` for export: :class:`CheckpointError`
    when there are none, or when they leave some of the model's parameters and buffers at their
    initial values (named; with ``allow_partial``, a warning)."""
    _require_weights(weights)
    checkpointer = SNCheckpointer(model)
    checkpointer.load(weights)
    unloaded = checkpointer.unloaded_keys()
    if not unloaded:
        return
    total = len(model.state_dict())
    message = (
        f"{weights} leaves {len(unloaded)} of the model's {total} tensors at their initial "
        f"values ({sample_keys(unloaded)})"
    )
    if allow_partial:
        logger.warning(f"{message}; exporting them as they are (--allow-partial-weights).")
        return
    raise CheckpointError(
        f"{message}: they are weights of another model or config. Give the checkpoint trained "
        "with this config, or --allow-partial-weights to export the model as it is."
    )


class ExportResult(NamedTuple):
    """What :func:`export_from_config` did: the written file, :func:`deployable`'s report and,
    with ``harden``, :func:`harden`'s."""

    path: str
    deployment: Deployment
    hardened: Optional[HardenReport]


def export_from_config(
    cfg: CfgNode,
    method: str,
    fmt: str,
    output_dir: str,
    image_path: Optional[str] = None,
    allow_partial_weights: bool = False,
    harden_layers: bool = False,
) -> ExportResult:
    """Build the model of ``cfg``, load ``MODEL.WEIGHTS`` (:func:`load_weights`), with
    ``harden_layers`` :func:`harden` it, and export :func:`deployable` of it as :func:`export`
    does, with :func:`sample_image` of ``image_path`` as the example input. The method, the
    output folder, that there are weights and the image are checked before the model is built."""
    check_method(method, fmt)
    check_output_dir(output_dir)
    _require_weights(cfg.MODEL.WEIGHTS)
    image = sample_image(cfg, image_path)
    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, allow_partial_weights)
    deployment, hardened = deploy(model, harden_layers)
    path, _ = export(deployment.model, image.to(cfg.MODEL.DEVICE), method, fmt, output_dir)
    return ExportResult(path, deployment, hardened)
