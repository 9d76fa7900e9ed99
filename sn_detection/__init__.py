"""Switchable Normalization (SN) and synchronized SN for detectron2.

Importing this package registers, with detectron2's registries, the SN builders of every detectron2
model that takes a norm (``sn_detection.modeling``: ResNet v1/v2, ResNet-FPN, RetinaNet, RegNet
backbones; box, mask, C4 res5 and semantic FPN heads; ``SNRetinaNet``) and the embedded datasets
(``sn_detection.data``: ``sn_shapes_*`` and its keypoint/panoptic versions, ``sn_clutter_*``, and
the user COCO files named in ``SN_DETECTION_COCO_DATASETS`` by tools/norm_study.py).
"""

import importlib.util
import warnings

if importlib.util.find_spec("detectron2") is None:
    raise ImportError(
        "sn_detection needs detectron2, which is not installed in this environment: install it "
        "from source (https://detectron2.readthedocs.io/en/latest/tutorials/install.html) or with "
        "`python scripts/install_detectron2.py` from this repository (`make setup` does it)"
    )

# detectron2 0.7 applies torch.jit.script to a few helpers when its modules are first imported,
# which torch 2.14 deprecates with a FutureWarning per helper: noise about detectron2, not about
# anything a user of this package does. It is silenced for this import only (the user's warning
# filters are left as they were; importing detectron2 directly still shows it).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from . import (
        data,  # noqa: F401  (imported for registration: the shapes datasets)
        modeling,  # noqa: F401  (imported for registration: backbones and RoI heads)
    )
    from .config import add_sn_config
    from .layers import FrozenSwitchNorm2d, SwitchNorm2d, SyncSwitchNorm2d, get_norm
    from .solver import build_sn_optimizer

__all__ = [
    "SwitchNorm2d",
    "FrozenSwitchNorm2d",
    "SyncSwitchNorm2d",
    "get_norm",
    "add_sn_config",
    "build_sn_optimizer",
]
