# detectron2's common/train.py for tools/lazyconfig_train_net.py, with:
# - DistributedDataParallel's arguments as tools/train_net.py gives them (buffers not broadcast in
#   every forward: each SN/BN layer keeps its own running statistics, SyncSN's are equal on every
#   process; forward_sync_buffers replaces the deprecated broadcast_buffers);
# - train.amp.precision, the autocast dtype with train.amp.enabled: "float16" (CUDA, with loss
#   scaling, as detectron2) or "bfloat16" (CUDA or CPU, no loss scaling);
# - train.precise_bn, the precise statistics pass (detectron2's TEST.PRECISE_BN of the YAML
#   configs): with enabled=True the BN-branch statistics of the SN layers (and any BatchNorm's)
#   are recomputed as the plain average over num_iter training batches, before each evaluation
#   and after the last iteration.
from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
train.ddp = dict(forward_sync_buffers=False, find_unused_parameters=False, fp16_compression=False)
train.amp.precision = "float16"
train.precise_bn = dict(enabled=False, num_iter=200)
