# detectron2's common/train.py for tools/lazyconfig_train_net.py, with DistributedDataParallel's
# arguments as tools/train_net.py gives them: buffers are not broadcast in every forward (each
# SN/BN layer keeps its own running statistics; SyncSN's are equal on every process by
# construction; forward_sync_buffers replaces the deprecated broadcast_buffers).
from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
train.ddp = dict(forward_sync_buffers=False, find_unused_parameters=False, fp16_compression=False)
