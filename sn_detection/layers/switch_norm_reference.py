"""A plainly written SN with the official semantics, for tests and benchmarks only.

It follows the formulas of the original implementation line by line (full-size intermediate
tensors, autograd through every op), including its keep-ratio running-statistics update. It has
the original's defects too: NaN for H*W = 1 and for empty batches. Use ``SwitchNorm2d``.
"""
from typing import Optional

import torch
from torch import Tensor


def switch_norm_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    running_mean: Optional[Tensor] = None,
    running_var: Optional[Tensor] = None,
    training: bool = True,
    momentum: float = 0.01,
    eps: float = 1e-5,
) -> Tensor:
    """SN of a 4-D ``x``; the BN branch is used when running statistics are given.

    ``momentum`` is PyTorch's (share of the batch statistic); in training the running statistics
    are updated in place, as in the official code.
    """
    n, c, h, w = x.shape
    x = x.view(n, c, -1)
    mean_in = x.mean(-1, keepdim=True)
    var_in = x.var(-1, keepdim=True)  # unbiased, as the official code

    mean_ln = mean_in.mean(1, keepdim=True)
    temp = var_in + mean_in**2
    var_ln = temp.mean(1, keepdim=True) - mean_ln**2

    using_bn = running_mean is not None
    if using_bn:
        if training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = temp.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                keep = 1.0 - momentum
                running_mean.mul_(keep).add_(momentum * mean_bn.view(c))
                running_var.mul_(keep).add_(momentum * var_bn.view(c))
        else:
            mean_bn = running_mean.view(1, c, 1)
            var_bn = running_var.view(1, c, 1)

    softmax = torch.nn.Softmax(0)
    mw = softmax(mean_weight)
    vw = softmax(var_weight)
    if using_bn:
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
    else:
        mean = mw[0] * mean_in + mw[1] * mean_ln
        var = vw[0] * var_in + vw[1] * var_ln

    x = (x - mean) / (var + eps).sqrt()
    x = x.view(n, c, h, w)
    return x * weight.view(1, c, 1, 1) + bias.view(1, c, 1, 1)
