# A few iterations of a tiny SN Mask R-CNN (R18-FPN, 128 px) on the embedded shapes dataset, for
# the tests of tools/lazyconfig_train_net.py: training and evaluation on the CPU. The LazyConfig
# version of configs/quick_schedules/mask_rcnn_sn_smoke.yaml (the same model and optimizer
# groups; tests/modeling/test_lazy_configs.py compares them).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..mask_rcnn_R_50_FPN_2x_sn import dataloader, model, optimizer, sn, train

sn.momentum = 0.01  # a short schedule: the running statistics must settle within it

bottom_up = model.backbone.bottom_up
bottom_up.freeze_at = 0  # from scratch: nothing to freeze
bottom_up.stages.depth = 18
del bottom_up.stages.stride_in_1x1  # R18's BasicBlock has a single stride
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (500, 500)
# 20 proposals per image at test time: the box head's convs on them are most of an evaluation
model.proposal_generator.post_nms_topk = (200, 20)
model.proposal_generator.batch_size_per_image = 128
heads = model.roi_heads
heads.num_classes = 3
heads.batch_size_per_image = 64
heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
heads.box_head.conv_dims = [64, 64, 64, 64]
heads.box_head.fc_dims = [256]
heads.box_predictor.input_shape = ShapeSpec(channels=256)
heads.box_predictor.test_score_thresh = 0.0  # an untrained model still detects: both tasks evaluate
heads.box_predictor.test_topk_per_image = 20
heads.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
heads.mask_head.conv_dims = [64, 64, 64, 64, 64]
del bottom_up, heads  # not config keys

dataloader.train.dataset.names = "sn_shapes_train"
dataloader.test.dataset.names = "sn_shapes_val_10"  # the first 10 images of sn_shapes_val
dataloader.train.mapper.augmentations[0].update(short_edge_length=(128,), max_size=128)
dataloader.test.mapper.augmentations[0].update(short_edge_length=128, max_size=128)
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

# SOLVER.STEPS (): a constant LR after 2 warmup iterations of 6
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0], milestones=[], num_updates=6),
    warmup_length=2 / 6,
    warmup_method="linear",
    warmup_factor=0.001,
)

train.init_checkpoint = ""
train.max_iter = 6
train.eval_period = 0  # evaluated once, after the last iteration
train.checkpointer.period = 100000
train.device = "cpu"
train.output_dir = "output/lazy_smoke"
