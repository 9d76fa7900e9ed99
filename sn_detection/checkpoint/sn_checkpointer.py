"""A DetectionCheckpointer that reads files without running code and also initialises models from
the ImageNet SN checkpoints."""

import logging
import os
import warnings
from typing import Any, Dict, List, Mapping
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.parallel import DistributedDataParallel

from .errors import CheckpointError, natural_key, sample_keys
from .fitting import BOOKKEEPING, fit_to_model, sn_layers_from_scratch, sparse_state_mismatch
from .official_layout import (
    SN_IMAGENET_KEY,
    SNImageNetInfo,
    convert_official,
    describe_foreign,
    official_state_dict,
    strip_module_prefix,
)
from .reading import is_torch_file, read_checkpoint, unreadable

logger = logging.getLogger(__name__)
# where SN layers warn, per layer, about sparse SN state they absorb or lack
_LAYER_WARNINGS = r"sn_detection\.layers\.(sparse_)?switch_norm$"


def _as_dict(obj: Any, source: str) -> Mapping:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


class SNCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` for SN models; ``MODEL.WEIGHTS`` may be any of

    - a released ImageNet SN checkpoint, as downloaded (recognised by its contents, whatever its
      name): converted in memory, with the report of tools/convert_sn_imagenet_to_d2.py logged;
    - a file written by tools/convert_sn_imagenet_to_d2.py (.pkl or .pth);
    - a detectron2 checkpoint (model_final.pth, model-zoo or Detectron .pkl, pycls .pyth,
      resume): loaded as by DetectionCheckpointer.

    Every file is read by :func:`read_checkpoint`, which never runs code: a pickle or torch file
    that names anything but containers, numbers, strings, tensors and numpy arrays is refused.
    Pickles are recognised by contents (any suffix), ``.pyth`` (pycls) by suffix, as detectron2.

    ImageNet SN weights load strictly: every parameter and buffer of the model's ResNet receives a
    tensor of its exact shape, or :class:`CheckpointError` names the mismatching keys and the
    setting to change (MODEL.BACKBONE.NAME, MODEL.RESNETS.DEPTH, MODEL.SN.USING_BN, ...). Sparse
    SN (SSN) weights loaded into SN layers, or SN weights into SSN layers, load with one warning
    saying what becomes of the layers' choice (:func:`~.fitting.sparse_state_mismatch`). A file
    that cannot be read, or a classifier checkpoint of another architecture, or a checkpoint none
    of whose tensors fit the model, raises a one-line CheckpointError. A detectron2 checkpoint
    without the model's SN layers (e.g. trained with GN or BN) loads as usual, and one warning
    says how many SN layers start from scratch. A local file that is missing (or a directory)
    raises a one-line CheckpointError. :meth:`unloaded_keys` says what the last load left at its
    initial values.
    """

    _source = ""
    _missing_keys: List[str] = []

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        local = urlparse(path)._replace(query="").geturl() if path else ""
        distributed = isinstance(self.model, DistributedDataParallel)  # detectron2 checks each rank
        if local and "://" not in local and not distributed and not os.path.isfile(local):
            what = "is a directory" if os.path.isdir(local) else "does not exist"
            raise CheckpointError(f"Checkpoint {local} {what}: give the path of a weights file")
        return super().load(path, *args, **kwargs)

    def unloaded_keys(self) -> List[str]:
        """The model's parameters and buffers that the last :meth:`load` left at their initial
        values, in natural order; not counted: those the model fills itself (pixel statistics
        from the config, SN and BatchNorm batch counts)."""
        return sorted(
            (k for k in self._missing_keys if k.rpartition(".")[2] not in BOOKKEEPING),
            key=natural_key,
        )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._source = filename
        try:
            if not is_torch_file(filename):  # a pickle: detectron2/Detectron model zoo
                return self._model_zoo_checkpoint(read_checkpoint(filename))
            if filename.endswith(".pyth"):  # pycls (decided by suffix, as detectron2 does)
                return self._pycls_checkpoint(read_checkpoint(filename))
            if filename.endswith(".pkl"):  # detectron2 would read this torch.save file as a pickle
                loaded = self._torch_load(filename)
                return loaded if "model" in loaded else {"model": loaded}
            return super()._load_file(filename)  # reads with _torch_load; handles URL queries
        except (CheckpointError, FileNotFoundError):
            raise
        except Exception as e:  # any failure of the readers means unreadable
            raise unreadable(filename, e) from None

    def _model_zoo_checkpoint(self, data: Any) -> Dict[str, Any]:
        """DetectionCheckpointer's reading of a .pkl: detectron2's model-zoo format as it is;
        Caffe2/Detectron blobs with name-matching heuristics."""
        data = _as_dict(data, self._source)
        if "model" in data and "__author__" in data:
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return dict(data)
        if "blobs" in data:  # Detectron's detection models; its ImageNet models are bare
            data = _as_dict(data["blobs"], self._source)
        model = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}

    def _pycls_checkpoint(self, data: Any) -> Dict[str, Any]:
        data = _as_dict(data, self._source)
        if not isinstance(data.get("model_state"), Mapping):
            raise CheckpointError(
                f"Cannot load .pyth file {self._source}: pycls checkpoints must contain "
                "'model_state'"
            )
        state = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}

    def _torch_load(self, f: str) -> Dict[str, Any]:
        obj = _as_dict(read_checkpoint(f), f)
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
        if checkpoint.get(SN_IMAGENET_KEY) is None:
            incompatible = self._load_detectron2(checkpoint)
        else:
            incompatible = self._load_imagenet_sn(checkpoint)
        self._missing_keys = list(incompatible.missing_keys)
        return incompatible

    def _load_state(self, checkpoint: Dict[str, Any]):
        """DetectionCheckpointer's loading of ``checkpoint["model"]``; SN layers that absorb or
        lack sparse SN state give one warning for the model instead of one each."""
        keys = strip_module_prefix(checkpoint.get("model") or {})
        mismatch = sparse_state_mismatch(self.model, keys, self._source)
        if mismatch is None:
            return super()._load_model(checkpoint)
        logger.warning(mismatch)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=_LAYER_WARNINGS)
            return super()._load_model(checkpoint)

    def _load_imagenet_sn(self, checkpoint: Dict[str, Any]):
        metadata = checkpoint[SN_IMAGENET_KEY]
        self._convert_ndarray_to_tensor(checkpoint["model"])
        state, layout, unused = fit_to_model(
            checkpoint["model"], metadata, self.model, self._source
        )
        if unused:
            self.logger.info(
                f"{len(unused)} checkpoint tensors belong to stages this model does not build "
                f"(MODEL.RESNETS.OUT_FEATURES) and are not used: {sample_keys(unused)}"
            )
        checkpoint["model"] = state
        count = len(set(state) & set(self.model.state_dict()))  # not the SSN buffers absorbed
        incompatible = self._load_state(checkpoint)
        self.logger.info(
            f"Loaded all {count} parameters and buffers of '{layout.prefix}*' from "
            f"{SNImageNetInfo.from_dict(metadata).name}; other parts start from their init."
        )
        return incompatible

    def _load_detectron2(self, checkpoint: Dict[str, Any]):
        """DetectionCheckpointer's loading, plus an error when not one tensor fits the model and
        a warning when SN layers start from scratch."""
        keys = list(checkpoint.get("model", {}))
        incompatible = self._load_state(checkpoint)
        model_keys = set(self.model.state_dict())
        # not counted as loaded: the pixel statistics (config values) and the SN batch counts,
        # which SwitchNorm2d fills in itself when a checkpoint has none
        loaded = {
            k
            for k in model_keys - set(incompatible.missing_keys) - {"pixel_mean", "pixel_std"}
            if k.rpartition(".")[2] not in BOOKKEEPING
        }
        if keys and not loaded:
            raise CheckpointError(
                f"None of the {len(keys)} tensors in {self._source} fit the model (checkpoint keys "
                f"like {sample_keys(keys, 3)}; model keys like {sample_keys(model_keys, 3)}): it "
                "is a checkpoint of another architecture"
            )
        summary = sn_layers_from_scratch(self.model, keys, incompatible.missing_keys, self._source)
        if summary:
            logger.warning(summary)
        return incompatible
