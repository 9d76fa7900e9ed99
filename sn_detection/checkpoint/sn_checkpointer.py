"""A DetectionCheckpointer that also initialises models from the ImageNet SN checkpoints."""

from typing import Any, Dict, Mapping

from detectron2.checkpoint import DetectionCheckpointer

from .imagenet_sn import (
    SN_IMAGENET_KEY,
    CheckpointError,
    SNImageNetInfo,
    _sample,
    convert_official,
    describe_foreign,
    fit_to_model,
    is_torch_file,
    official_state_dict,
    read_checkpoint,
    unreadable,
)


class SNCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` for SN models; ``MODEL.WEIGHTS`` may be any of

    - a released ImageNet SN checkpoint, as downloaded (recognised by its contents, whatever its
      name): converted in memory, with the report of tools/convert_sn_imagenet_to_d2.py logged;
    - a file written by tools/convert_sn_imagenet_to_d2.py (.pkl or .pth);
    - a detectron2 checkpoint (model_final.pth, model zoo .pkl, resume): loaded exactly as by
      DetectionCheckpointer.

    ImageNet SN weights load strictly: every parameter and buffer of the model's ResNet receives a
    tensor of its exact shape, or :class:`CheckpointError` names the mismatching keys and the
    setting to change (MODEL.BACKBONE.NAME, MODEL.RESNETS.DEPTH, MODEL.SN.USING_BN, ...). A file
    that cannot be read, or a classifier checkpoint of another architecture, or a checkpoint none
    of whose tensors fit the model, raises a one-line CheckpointError.
    """

    _source = ""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._source = filename
        try:
            if filename.endswith(".pkl") and is_torch_file(filename):
                # detectron2 decides by suffix; a torch.save file named .pkl is read as one
                loaded = self._torch_load(filename)
                return loaded if "model" in loaded else {"model": loaded}
            return super()._load_file(filename)
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception as e:  # noqa: BLE001 - .pkl/.pyth readers: any failure means unreadable
            raise unreadable(filename, e) from None

    def _torch_load(self, f: str) -> Dict[str, Any]:
        obj = read_checkpoint(f)
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{f} holds a {type(obj).__name__}, not a checkpoint dict")
        if official_state_dict(obj) is not None:
            conversion = convert_official(obj, source=f)
            self.logger.info("Converting in memory.\n" + conversion.report())
            return conversion.to_checkpoint()
        foreign = describe_foreign(obj, f)
        if foreign is not None:
            raise CheckpointError(foreign)
        if "model" in obj and not isinstance(obj["model"], Mapping):
            raise CheckpointError(
                f"{f}: its 'model' entry is a {type(obj['model']).__name__}, not a state dict"
            )
        return dict(obj)

    def _load_model(self, checkpoint: Dict[str, Any]):
        metadata = checkpoint.get(SN_IMAGENET_KEY)
        if metadata is None:
            return self._load_detectron2(checkpoint)
        self._convert_ndarray_to_tensor(checkpoint["model"])
        state, layout, unused = fit_to_model(
            checkpoint["model"], metadata, self.model, self._source
        )
        if unused:
            self.logger.info(
                f"{len(unused)} checkpoint tensors belong to stages this model does not build "
                f"(MODEL.RESNETS.OUT_FEATURES) and are not used: {_sample(unused)}"
            )
        checkpoint["model"] = state
        incompatible = super()._load_model(checkpoint)
        left = [k for k in incompatible.missing_keys if k.startswith(layout.prefix)]
        left += [k for k, *_ in incompatible.incorrect_shapes] + incompatible.unexpected_keys
        if left:  # fit_to_model checked this; never load half of a backbone in silence
            raise CheckpointError(f"backbone tensors were not loaded: {_sample(left)}")
        self.logger.info(
            f"Loaded all {len(state)} parameters and buffers of '{layout.prefix}*' from "
            f"{SNImageNetInfo.from_dict(metadata).name}; other parts start from their init."
        )
        return incompatible

    def _load_detectron2(self, checkpoint: Dict[str, Any]):
        """DetectionCheckpointer's loading, plus an error when not one tensor fits the model."""
        keys = list(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        model_keys = set(self.model.state_dict())
        loaded = model_keys - set(incompatible.missing_keys) - {"pixel_mean", "pixel_std"}
        if keys and not loaded:
            raise CheckpointError(
                f"None of the {len(keys)} tensors in {self._source} fit the model (checkpoint keys "
                f"like {_sample(keys, 3)}; model keys like {_sample(model_keys, 3)}): it is a "
                "checkpoint of another architecture"
            )
        return incompatible
