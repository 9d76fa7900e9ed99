"""Config keys of sn_detection: ``add_sn_config`` and the readers of ``MODEL.SN``."""

import warnings

from detectron2.config import CfgNode as CN

from .utils.cli import InputError


def add_sn_config(cfg: CN) -> None:
    """Add the ``MODEL.SN`` and ``MODEL.REGNETS`` namespaces and ``SOLVER.AMP.PRECISION`` to
    ``cfg`` (in place).

    The norm of each part is chosen by detectron2's own keys, which accept "SN", "SyncSN", "SSN",
    "SyncSSN" and every
    detectron2 norm name with the builders of sn_detection.modeling: MODEL.RESNETS.NORM,
    MODEL.FPN.NORM, MODEL.ROI_BOX_HEAD.NORM, MODEL.ROI_MASK_HEAD.NORM, MODEL.RETINANET.NORM,
    MODEL.SEM_SEG_HEAD.NORM. ``MODEL.SN`` configures every SN layer of the model (sparse included).
    """
    cfg.MODEL.SN = CN()
    # Share of the new batch statistic in the running statistics, in [0, 1] (PyTorch's
    # convention: running = (1 - MOMENTUM) * running + MOMENTUM * batch). The official keep
    # ratio 0.997 is MOMENTUM 0.003.
    cfg.MODEL.SN.MOMENTUM = 0.01
    # Added to the mixed variance before the square root; > 0.
    cfg.MODEL.SN.EPS = 1e-5
    # How training updates the BN-branch running statistics. True: exponential moving average
    # (MOMENTUM). False: plain average of every batch since the start, the last reset or the last
    # precise pass (TEST.PRECISE_BN, which recomputes SN statistics too).
    cfg.MODEL.SN.USING_MOVING_AVERAGE = True
    # True: SN mixes IN, LN and BN statistics; False: only IN and LN (for 1 image per GPU, where
    # BN statistics equal IN statistics). Must match pretrained weights.
    cfg.MODEL.SN.USING_BN = True
    # True: the last SN of every residual block starts with weight 0 (each block starts as the
    # identity).
    cfg.MODEL.SN.LAST_GAMMA = False
    # Weight decay of the logits (mean_weight, var_weight) of every SN layer, >= 0. SN weight and
    # bias follow SOLVER.WEIGHT_DECAY_NORM.
    cfg.MODEL.SN.WEIGHT_DECAY_LOGITS = 0.0
    # Deprecated name of WEIGHT_DECAY_LOGITS: when set, its value is used, with a warning.
    cfg.MODEL.SN.WEIGHT_DECAY_IMPORTANCE = None
    # Sparse SN (norm "SSN"/"SyncSSN"): the logits' learning rate is SOLVER.BASE_LR times this
    # factor, > 0 (the authors: 0.1); they take no weight decay.
    cfg.MODEL.SN.SSN_LOGITS_LR_FACTOR = 0.1
    # Sparse SN: the gradient of all SSN logits together is clipped to this norm before each
    # step, >= 0 (the authors: 1.0); 0 disables. Other parameters are not clipped by it.
    cfg.MODEL.SN.SSN_LOGITS_CLIP_NORM = 1.0

    # RegNet backbones from YAML (MODEL.BACKBONE.NAME build_sn_regnet_backbone or
    # build_sn_regnet_fpn_backbone; detectron2 builds RegNet only from LazyConfig). The keys are
    # the arguments of detectron2.modeling.backbone.RegNet (:paper:`dds`); the defaults are
    # detectron2's RegNetX-4GF. MODEL.BACKBONE.FREEZE_AT freezes the stem and stages as in ResNet.
    cfg.MODEL.REGNETS = CN()
    # Any norm name of sn_detection ("SN", "SyncSN", "GN", "FrozenBN", ...).
    cfg.MODEL.REGNETS.NORM = "SN"
    # "SimpleStem" (3x3/2 conv) or "ResStem" (7x7/2 conv and 3x3/2 max-pool).
    cfg.MODEL.REGNETS.STEM = "SimpleStem"
    cfg.MODEL.REGNETS.STEM_WIDTH = 32
    # "ResBottleneckBlock" (RegNetX/Y), "ResBasicBlock" or "VanillaBlock".
    cfg.MODEL.REGNETS.BLOCK = "ResBottleneckBlock"
    # Total number of blocks, and the width parameters w_a, w_0, w_m of :paper:`dds` Sec. 3.3.
    cfg.MODEL.REGNETS.DEPTH = 23
    cfg.MODEL.REGNETS.W_A = 38.65
    cfg.MODEL.REGNETS.W_0 = 96
    cfg.MODEL.REGNETS.W_M = 2.43
    cfg.MODEL.REGNETS.GROUP_WIDTH = 40
    cfg.MODEL.REGNETS.BOTTLENECK_RATIO = 1.0
    # Squeeze-and-excitation ratio: 0 for RegNetX, 0.25 for RegNetY.
    cfg.MODEL.REGNETS.SE_RATIO = 0.0
    # Stages to return, of "stem", "s1" (stride 4) ... "s4" (stride 32).
    cfg.MODEL.REGNETS.OUT_FEATURES = ["s1", "s2", "s3", "s4"]

    # The autocast dtype of mixed-precision training (SOLVER.AMP.ENABLED True) on MODEL.DEVICE:
    # "float16" (CUDA only, with loss scaling) or "bfloat16" (CUDA or CPU, no loss scaling). SN
    # computes its statistics in float32 either way.
    cfg.SOLVER.AMP.PRECISION = "float16"


def sn_options(cfg: CN) -> dict:
    """Keyword arguments for SwitchNorm2d / SyncSwitchNorm2d from ``cfg.MODEL.SN``."""
    sn = cfg.MODEL.SN
    if not 0.0 <= sn.MOMENTUM <= 1.0:
        raise InputError(
            f"MODEL.SN.MOMENTUM must be in [0, 1] (the share of the new batch statistic), got "
            f"{sn.MOMENTUM}; the official keep ratio 0.997 is MOMENTUM 0.003"
        )
    if not sn.EPS > 0:
        raise InputError(f"MODEL.SN.EPS must be positive (e.g. 1e-5), got {sn.EPS}")
    return {
        "eps": sn.EPS,
        "momentum": sn.MOMENTUM,
        "using_moving_average": sn.USING_MOVING_AVERAGE,
        "using_bn": sn.USING_BN,
    }


def renamed_value(
    new_name: str, new: object, old_name: str, old: object, default: object
) -> object:
    """The value of a setting renamed from ``old_name`` to ``new_name``: ``new``, or ``old`` where
    that is set (not None), with a FutureWarning. Both set (``new`` not ``default``) to different
    values is an InputError."""
    if old is None:
        return new
    if new != default and new != old:
        raise InputError(
            f"{old_name} ({old}) and {new_name} ({new}) are both set: remove {old_name}, the "
            f"deprecated name of {new_name}"
        )
    warnings.warn(
        f"{old_name} is deprecated: set {new_name} instead (its value {old} is used)",
        FutureWarning,
        stacklevel=3,
    )
    return old


def weight_decay_logits(cfg: CN) -> float:
    """``MODEL.SN.WEIGHT_DECAY_LOGITS``, or its deprecated name ``MODEL.SN.WEIGHT_DECAY_IMPORTANCE``
    where that is set (with a warning)."""
    sn = cfg.MODEL.SN
    return renamed_value(
        "MODEL.SN.WEIGHT_DECAY_LOGITS",
        sn.WEIGHT_DECAY_LOGITS,
        "MODEL.SN.WEIGHT_DECAY_IMPORTANCE",
        sn.get("WEIGHT_DECAY_IMPORTANCE"),
        0.0,
    )


SSN_KEYS = ("SSN_LOGITS_LR_FACTOR", "SSN_LOGITS_CLIP_NORM")  # MODEL.SN keys of sparse SN only


def ssn_logits_options(cfg: CN) -> dict:
    """``MODEL.SN.SSN_LOGITS_LR_FACTOR`` and ``SSN_LOGITS_CLIP_NORM`` as the keyword arguments
    ``ssn_logits_lr_factor``/``ssn_logits_clip_norm`` of ``solver.get_sn_optimizer_params``."""
    sn = cfg.MODEL.SN
    factor, clip = sn.SSN_LOGITS_LR_FACTOR, sn.SSN_LOGITS_CLIP_NORM
    if not isinstance(factor, (int, float)) or not factor > 0:
        raise InputError(f"MODEL.SN.SSN_LOGITS_LR_FACTOR must be > 0 (e.g. 0.1), got {factor!r}")
    if not isinstance(clip, (int, float)) or not clip >= 0:
        raise InputError(
            f"MODEL.SN.SSN_LOGITS_CLIP_NORM must be >= 0 (e.g. 1.0; 0 disables), got {clip!r}"
        )
    return {"ssn_logits_lr_factor": float(factor), "ssn_logits_clip_norm": float(clip)}
