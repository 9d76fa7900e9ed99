# Mask R-CNN R50-FPN, SN in backbone, FPN, 4conv1fc box head and mask head; 2x schedule.
# The LazyConfig version of configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_sn.yaml: the
# same model, optimizer groups and schedule at 16 images per batch (the YAML's
# SOLVER.REFERENCE_WORLD_SIZE rescaling has no LazyConfig counterpart: on other GPU counts set
# dataloader.train.total_batch_size, optimizer.lr and train.max_iter yourself).
# Train: tools/lazyconfig_train_net.py --config-file THIS_FILE --num-gpus 8
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from sn_detection.evaluation import build_sn_evaluator

from .common.models.mask_rcnn_fpn_sn import model, sn
from .common.optim import SGD as optimizer
from .common.train import train

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.image_format = "RGB"  # what the ImageNet SN checkpoints take
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)  # INPUT.MIN_SIZE_TRAIN
dataloader.evaluator = L(build_sn_evaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}/inference"
)

lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_2x  # 120k, 160k

train.max_iter = 180000
# ResNet50v1+SN (8,32), the official ImageNet checkpoint as released (README: "Pretrained
# weights"); SNCheckpointer converts it in memory
train.init_checkpoint = "pretrained/resnet50v1_sn_8x32.pth"
