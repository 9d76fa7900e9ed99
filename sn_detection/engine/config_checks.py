"""The configs of the training tools, built and checked before anything is built or written: a
wrong key, value or file is an :class:`InputError` that names the key (with close matches for an
unknown one) and the fix, instead of a traceback from yacs, OmegaConf or the first use."""

import difflib
import os
import re
import warnings
from typing import Any, Iterable, List, Sequence

import torch
import yaml
from detectron2.config import CfgNode, LazyConfig, get_cfg

from ..config import SSN_KEYS, add_sn_config, ssn_logits_options
from ..layers.norm import SPARSE_NORMS
from ..modeling import check_lazy_norms, check_sn_builders
from ..modeling.checks import norms_in_use
from ..utils.cli import InputError
from .amp import LAZY_AMP_KEYS, PRECISIONS, YAML_AMP_KEYS, autocast_dtype
from .defaults import resolve_device

__all__ = ["lazy_training_config", "unknown_key_message", "yaml_training_config"]

_UNKNOWN_YAML_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_YAML_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)"
)


def unknown_key_message(key: str, known: Iterable[str], source: str) -> str:
    """The message "``source``: unknown config key ``key``", with close matches in ``known``."""
    matches = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(matches)}?)" if matches else ""
    return f"{source}: unknown config key {key}{hint}"


def _yaml_keys(node: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for name, value in node.items():
        keys.append(prefix + name)
        if isinstance(value, CfgNode):
            keys.extend(_yaml_keys(value, f"{prefix}{name}."))
    return keys


def _yaml_error(error: Exception, cfg: CfgNode, source: str) -> InputError:
    text = str(error.args[0]) if error.args else str(error)
    unknown = _UNKNOWN_YAML_KEY.search(text)
    if unknown:
        return InputError(unknown_key_message(unknown.group(1), _yaml_keys(cfg), source))
    mismatch = _YAML_TYPE_MISMATCH.search(text)
    if mismatch:
        expected, given, _, value, key = mismatch.groups()
        return InputError(f"{source}: {key} must be of type {expected}, got {value!r} ({given})")
    return InputError(f"{source}: {text}")


def _check_file(config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise InputError(f"--config-file {config_file}: no such file")


def yaml_training_config(config_file: str, opts: Sequence[str]) -> CfgNode:
    """detectron2's config with MODEL.SN, merged from ``config_file`` and the ``KEY VALUE``
    overrides ``opts``, checked (keys, types, SN builders, AMP precision, precise statistics),
    with MODEL.DEVICE "cuda" replaced by "cpu" on a machine without CUDA. Not frozen."""
    _check_file(config_file)
    cfg = get_cfg()
    add_sn_config(cfg)
    try:
        cfg.merge_from_file(config_file)
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as e:
        raise _yaml_error(e, cfg, config_file) from e
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise _yaml_error(e, cfg, "command line") from e
    check_sn_builders(cfg)
    _check_ssn_keys(cfg)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    _check_training(
        cfg.SOLVER.AMP.ENABLED,
        cfg.SOLVER.AMP.PRECISION,
        cfg.MODEL.DEVICE,
        YAML_AMP_KEYS,
    )
    _check_precise(
        cfg.TEST.PRECISE_BN.ENABLED,
        cfg.TEST.PRECISE_BN.NUM_ITER,
        ("TEST.PRECISE_BN.ENABLED", "TEST.PRECISE_BN.NUM_ITER"),
    )
    return cfg


def _check_ssn_keys(cfg: CfgNode) -> None:
    """The sparse SN keys' values (an :class:`InputError` naming the key), and a warning when one
    is set to other than its default in a model without sparse SN layers, where it does nothing."""
    ssn_logits_options(cfg)
    if any(norm in SPARSE_NORMS for norm in norms_in_use(cfg).values()):
        return
    defaults = get_cfg()
    add_sn_config(defaults)
    for key in SSN_KEYS:
        if cfg.MODEL.SN[key] != defaults.MODEL.SN[key]:
            warnings.warn(
                f"MODEL.SN.{key} is {cfg.MODEL.SN[key]} but no part of the model is "
                f"{' or '.join(SPARSE_NORMS)}: it has no effect (set a norm key to SSN, or "
                "drop it)",
                stacklevel=2,
            )


def _check_training(amp: Any, precision: Any, device: Any, keys: Sequence[str]) -> None:
    precision_key, device_key = keys
    try:
        device_type = torch.device(device).type
    except (RuntimeError, TypeError):
        device_type = None
    if device_type not in ("cpu", "cuda"):
        raise InputError(f"{device_key} must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if precision not in PRECISIONS or amp:
        autocast_dtype(precision, device, keys)


def _check_precise(enabled: Any, num_iter: Any, keys: Sequence[str]) -> None:
    enabled_key, num_iter_key = keys
    if enabled and not (_is_int(num_iter) and num_iter > 0):
        raise InputError(
            f"{num_iter_key} must be a positive integer (batches of the precise statistics "
            f"pass, e.g. 200), got {num_iter!r}; or set {enabled_key} False"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- LazyConfig ----------------------------------------------------------------------------------

# train.<key>: (test, what it must be)
_LAZY_TRAIN_VALUES = {
    "max_iter": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "eval_period": (lambda v: _is_int(v) and v >= 0, "a non-negative integer (0: at the end only)"),
    "log_period": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "checkpointer.period": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "amp.enabled": (lambda v: isinstance(v, bool), "True or False"),
    "precise_bn.enabled": (lambda v: isinstance(v, bool), "True or False"),
    "output_dir": (lambda v: isinstance(v, str) and v != "", "a directory"),
    "init_checkpoint": (lambda v: isinstance(v, str), "a path (or '' for none)"),
}


def _child(node: Any, part: str) -> Any:
    """``node[part]`` of a LazyConfig node (a mapping, or a list with an integer index), or a
    KeyError."""
    if hasattr(node, "keys"):
        if part in node:
            return node[part]
    elif isinstance(node, Sequence) and not isinstance(node, str) and part.isdigit():
        if int(part) < len(node):
            return node[int(part)]
    raise KeyError(part)


def _check_override_keys(cfg: Any, opts: Sequence[str]) -> None:
    for opt in opts:
        key, equals, _ = opt.partition("=")
        if not equals or not key:
            raise InputError(f"override {opt!r} is not key=value (e.g. train.max_iter=100)")
        node, done = cfg, []
        for part in key.split("."):
            try:
                node = _child(node, part)
            except KeyError:
                prefix = "".join(f"{p}." for p in done)
                siblings = [prefix + str(k) for k in node.keys()] if hasattr(node, "keys") else []
                raise InputError(unknown_key_message(key, siblings, "command line")) from None
            done.append(part)


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = _child(node, part)
    return node


def lazy_training_config(config_file: str, opts: Sequence[str]) -> Any:
    """The LazyConfig ``config_file`` with the ``key=value`` overrides ``opts``, checked (every
    override names a key the config has; the model's norms; the values of ``train``), with
    ``train.device`` "cuda" replaced by "cpu" on a machine without CUDA."""
    _check_file(config_file)
    cfg = LazyConfig.load(config_file)
    _check_override_keys(cfg, opts)
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    check_lazy_norms(cfg.model)
    train = cfg.train
    for key, (valid, expected) in _LAZY_TRAIN_VALUES.items():
        try:
            value = _get(train, key)
        except KeyError:
            continue  # configs without detectron2's common/train.py keys keep their defaults
        if not valid(value):
            raise InputError(f"train.{key} must be {expected}, got {value!r}")
    train.device = resolve_device(train.device, "train.device")
    amp = train.get("amp", {})
    _check_training(
        amp.get("enabled", False), amp.get("precision", "float16"), train.device, LAZY_AMP_KEYS
    )
    precise = train.get("precise_bn", {})
    _check_precise(
        precise.get("enabled", False),
        precise.get("num_iter", 200),
        ("train.precise_bn.enabled", "train.precise_bn.num_iter"),
    )
    return cfg
