# detectron2's common/optim.py SGD with SN-aware parameter groups, as tools/train_net.py builds it
# from SOLVER.* and MODEL.SN.WEIGHT_DECAY_LOGITS: SN weight and bias take weight_decay_norm
# (as BatchNorm/GroupNorm ones), the SN logits (mean_weight, var_weight) weight_decay_logits;
# sparse SN logits (norm "SSN"/"SyncSSN") their own group: lr * ssn_logits_lr_factor, no weight
# decay, gradient norm clipped to ssn_logits_clip_norm (0: none) by sn_sgd.
from detectron2.config import LazyCall as L

from sn_detection.solver import get_sn_optimizer_params, sn_sgd

SGD = L(sn_sgd)(
    params=L(get_sn_optimizer_params)(
        # params.model is set to the model by tools/lazyconfig_train_net.py before instantiating
        base_lr="${..lr}",
        weight_decay_norm=0.0,  # no weight decay on SN weight/bias, as in SN's detection code
        weight_decay_logits=0.0,
        ssn_logits_lr_factor=0.1,  # MODEL.SN.SSN_LOGITS_LR_FACTOR
        ssn_logits_clip_norm=1.0,  # MODEL.SN.SSN_LOGITS_CLIP_NORM
    ),
    lr=0.02,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    foreach=True,
)
