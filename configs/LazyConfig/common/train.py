# detectron2's common/train.py for tools/lazyconfig_train_net.py, with DistributedDataParallel's
# arguments as tools/train_net.py gives them: buffers are not broadcast in every forward (each
# SN/BN layer keeps its own running statistics; SyncSN's are equal on every process by
# construction; forward_sync_buffers replaces the deprecated broadcast_buffers).
from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
train.ddp = dict(forward_sync_buffers=False, find_unused_parameters=False, fp16_compression=False)
# The precise statistics pass (detectron2's TEST.PRECISE_BN of the YAML configs, which its
# LazyConfig train.py has no key for): with enabled=True, tools/lazyconfig_train_net.py recomputes
# the BN-branch statistics of the SN layers (and any BatchNorm's) as the plain average over
# num_iter training batches, before each evaluation and after the last iteration (PreciseSN).
train.precise_bn = dict(enabled=False, num_iter=200)
