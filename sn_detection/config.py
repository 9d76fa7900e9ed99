"""Config keys of sn_detection."""
from detectron2.config import CfgNode as CN


def add_sn_config(cfg: CN) -> None:
    """Add the ``MODEL.SN`` namespace to ``cfg`` (in place), and ``SOLVER.AMP.PRECISION``.

    The norm of each part is chosen by detectron2's own keys, which accept "SN", "SyncSN" and every
    detectron2 norm name: MODEL.RESNETS.NORM, MODEL.FPN.NORM, MODEL.ROI_BOX_HEAD.NORM,
    MODEL.ROI_MASK_HEAD.NORM, MODEL.RETINANET.NORM, MODEL.SEM_SEG_HEAD.NORM (with the SN builders of
    sn_detection.modeling). The keys below configure every SN/SyncSN layer of the model; it also
    adds MODEL.REGNETS, the RegNet backbone of YAML configs.
    """
    cfg.MODEL.SN = CN()
    # Share of the new batch statistic in the running statistics, PyTorch's convention:
    # running = (1 - MOMENTUM) * running + MOMENTUM * batch. The official code's keep ratio is
    # 1 - MOMENTUM (its detection code used 0.997, i.e. MOMENTUM 0.003). In [0, 1].
    cfg.MODEL.SN.MOMENTUM = 0.01
    # Added to the mixed variance before the square root.
    cfg.MODEL.SN.EPS = 1e-5
    # How training updates the BN-branch running statistics.
    # True: exponential moving average (MOMENTUM above).
    # False: plain average of every batch since the start, the last reset or the last precise
    # pass ("batch average"; the batch count `num_batches` is saved, so it continues after a
    # reload or --resume). From the start of training it averages statistics of early weights
    # too, which is rarely what is wanted: prefer the precise pass below.
    # Precise statistics: TEST.PRECISE_BN.ENABLED True (detectron2's keys) recomputes, before
    # each evaluation (TEST.EVAL_PERIOD) and at the end of training, the BN-branch statistics of
    # every SN/SyncSN layer (not frozen ones) as the plain average over TEST.PRECISE_BN.NUM_ITER
    # training batches with the weights fixed (the official "batch average" done right; global
    # over all processes with SyncSN), and those of BN layers as detectron2's PreciseBN, in the
    # same batches. Use it when the learned BN shares are large (the authors advise batch
    # averaging above 0.3; the sn/<part>/*_BN training scalars and tools/visualize_sn.py show
    # them) or when MOMENTUM is too small for the running statistics to follow the weights.
    # NUM_ITER 200 costs about 200 forward passes. USING_MOVING_AVERAGE keeps its meaning: it
    # says how training continues from the precise statistics.
    cfg.MODEL.SN.USING_MOVING_AVERAGE = True
    # Whether SN mixes batch statistics in (IN, LN, BN) or only (IN, LN). False for 1 image per
    # GPU, where BN statistics equal IN statistics; must match pretrained weights.
    cfg.MODEL.SN.USING_BN = True
    # Start the last SN of every residual block with weight 0 (each block starts as identity).
    cfg.MODEL.SN.LAST_GAMMA = False
    # Weight decay of the importance logits (mean_weight, var_weight) of every SN layer.
    # SN weight and bias follow SOLVER.WEIGHT_DECAY_NORM.
    cfg.MODEL.SN.WEIGHT_DECAY_IMPORTANCE = 0.0

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

    # Mixed-precision training, with detectron2's SOLVER.AMP.ENABLED True (tools/train_net.py,
    # sn_detection.engine.amp): the autocast dtype on MODEL.DEVICE. "float16": CUDA only, with
    # loss scaling (detectron2's AMP); "bfloat16": CUDA or CPU, no loss scaling needed. SN computes
    # its statistics in float32 either way.
    cfg.SOLVER.AMP.PRECISION = "float16"


def sn_options(cfg: CN) -> dict:
    """Keyword arguments for SwitchNorm2d / SyncSwitchNorm2d from ``cfg.MODEL.SN``."""
    sn = cfg.MODEL.SN
    if not 0.0 <= sn.MOMENTUM <= 1.0:
        raise ValueError(
            f"MODEL.SN.MOMENTUM must be in [0, 1] (the share of the new batch statistic), got "
            f"{sn.MOMENTUM}; the official keep ratio 0.997 is MOMENTUM 0.003"
        )
    if not sn.EPS > 0:
        raise ValueError(f"MODEL.SN.EPS must be positive (e.g. 1e-5), got {sn.EPS}")
    return {
        "eps":                  sn.EPS,
        "momentum":             sn.MOMENTUM,
        "using_moving_average": sn.USING_MOVING_AVERAGE,
        "using_bn":             sn.USING_BN,
    }
