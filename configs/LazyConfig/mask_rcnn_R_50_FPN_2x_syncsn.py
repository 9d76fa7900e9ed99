# As mask_rcnn_R_50_FPN_2x_sn.py with SyncSN: the BN branch of every SN layer computes its
# statistics over the whole global batch (16 images on 8 GPUs) instead of 2 images per GPU.
from .mask_rcnn_R_50_FPN_2x_sn import dataloader, lr_multiplier, model, optimizer, sn, train

model.backbone.bottom_up.stem.norm = "SyncSN"
model.backbone.bottom_up.stages.norm = "SyncSN"
model.backbone.norm = "SyncSN"
model.roi_heads.box_head.conv_norm = "SyncSN"
model.roi_heads.mask_head.conv_norm = "SyncSN"
