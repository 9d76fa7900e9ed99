# Mask R-CNN R50-FPN with SN in backbone, FPN, 4conv1fc box head and mask head: detectron2's
# common/models/mask_rcnn_fpn.py with our constructors, which take the norm as a name. The model
# of configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml, from LazyConfig
# (tests/modeling/test_lazy_configs.py builds both and compares them).
# Import `sn` with `model`: every norm reads its options from it ("${sn}").
from detectron2 import model_zoo

from sn_detection.modeling import (
    SNFastRCNNConvFCHead,
    SNMaskRCNNConvUpsampleHead,
    sn_basic_stem,
    sn_fpn,
    sn_resnet,
    sn_resnet_stages,
)

# Options of every SN/SyncSN layer (MODEL.SN of the YAML configs; see sn_detection/config.py):
# momentum is PyTorch's (share of the batch statistic; 0.003 = the official keep ratio 0.997).
# Overriding e.g. `sn.momentum=0.01` changes every layer.
sn = dict(eps=1e-5, momentum=0.003, using_moving_average=True, using_bn=True)

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

model.backbone.update(_target_=sn_fpn, norm="SN", sn_options="${sn}")
model.backbone.bottom_up.update(
    _target_=sn_resnet,
    freeze_at=2,  # stem and res2 frozen; their SN layers become FrozenSwitchNorm2d
    last_gamma=False,  # MODEL.SN.LAST_GAMMA
)
model.backbone.bottom_up.stem.update(_target_=sn_basic_stem, norm="SN", sn_options="${sn}")
model.backbone.bottom_up.stages.update(
    _target_=sn_resnet_stages,
    norm="SN",
    sn_options="${sn}",
    stride_in_1x1=False,  # the SN checkpoints stride in the 3x3 conv (torchvision layout)
)
model.roi_heads.box_head.update(
    _target_=SNFastRCNNConvFCHead,
    conv_dims=[256, 256, 256, 256],  # 4conv1fc, as in the SN detection results
    fc_dims=[1024],
    conv_norm="SN",
    sn_options="${sn}",
)
model.roi_heads.mask_head.update(
    _target_=SNMaskRCNNConvUpsampleHead, conv_norm="SN", sn_options="${sn}"
)
# inputs as the ImageNet SN checkpoints expect them: RGB, ImageNet mean/std (in 0-255 units)
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
