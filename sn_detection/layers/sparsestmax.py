"""SparsestMax (Shao et al., CVPR 2019): the mix weights of Sparse Switchable Normalization.

``sparsestmax(logits, radius)`` is sparsemax (the Euclidean projection onto the probability
simplex) followed by a push away from the uniform point u: a sparsemax point closer to u than
``radius`` is moved along its direction from u onto the circle of that radius; where that circle
leaves the simplex, onto the simplex edge at that distance from u. ``radius`` grows from 0 (plain
sparsemax) to 1 (beyond every vertex: one-hot) over training. Everything stays on the device:
no branch reads a tensor value, so a training step has no host sync; the functions are
TorchScript-scriptable (a scripted SSN layer uses them).

Caveat: at exactly equal logits the direction from u is undefined; the point then stays at u
(finite gradient: sparsemax's). The first gradient step breaks the tie.
"""

import math

import torch
from torch import Tensor


def sparsemax(logits: Tensor) -> Tensor:
    """The Euclidean projection of each row of ``logits`` (..., K) onto the probability simplex
    (Martins & Astudillo, 2016): max(z - tau, 0) with tau chosen so that each row sums to 1."""
    z, _ = torch.sort(logits, dim=-1, descending=True)
    k = torch.arange(1, logits.shape[-1] + 1, device=logits.device, dtype=logits.dtype)
    cumulative = z.cumsum(-1)
    in_support = 1 + k * z > cumulative  # true for a prefix of the sorted entries
    support = in_support.sum(-1, keepdim=True)
    tau = (cumulative.gather(-1, support - 1) - 1) / support.to(logits.dtype)
    return torch.clamp(logits - tau, min=0)


def _edge_point(p: Tensor, radius: Tensor) -> Tensor:
    """For 3 entries: the point on the simplex edge opposite the smallest entry of ``p`` at
    distance ``radius`` from u, the larger of the two other entries of ``p`` getting the larger
    share; a vertex beyond the edge's end (radius > sqrt(2/3)). Constant in ``p`` otherwise."""
    # on the edge (1/2 + t, 1/2 - t, 0): |. - u|^2 = 2 t^2 + 1/6
    t = torch.sqrt(torch.clamp((radius * radius - 1.0 / 6.0) / 2.0, min=0.0)).clamp(max=0.5)
    order = torch.argsort(p, dim=-1, descending=True)
    sorted_point = torch.stack([0.5 + t, 0.5 - t, torch.zeros_like(t)], dim=-1)
    sorted_point = sorted_point.expand_as(p)
    return torch.empty_like(p).scatter(-1, order, sorted_point)


def sparsestmax(logits: Tensor, radius: Tensor) -> Tensor:
    """SparsestMax of each row of ``logits`` (..., K), K = 2 or 3, for a ``radius`` (a scalar
    tensor in [0, 1], or one broadcastable to ``logits[..., 0]``); see the module docstring."""
    num = logits.shape[-1]
    if num not in (2, 3):
        raise ValueError(f"sparsestmax mixes 2 or 3 statistics, got logits of shape {logits.shape}")
    radius = torch.as_tensor(radius, dtype=logits.dtype, device=logits.device)
    radius = radius.unsqueeze(-1) if radius.dim() > 0 else radius
    w = sparsemax(logits)
    offset = w - 1.0 / num
    distance = torch.linalg.vector_norm(offset, dim=-1, keepdim=True)
    at_uniform = distance < 1e-9  # counts as u itself: its direction is undefined
    direction = offset / torch.where(at_uniform, torch.ones_like(distance), distance)
    pushed = 1.0 / num + radius * direction
    if num == 3:
        # the circle leaves the simplex: onto the edge at that distance instead
        outside = (pushed < 0).any(-1, keepdim=True)
        pushed = torch.where(outside, _edge_point(pushed, radius.squeeze(-1)), pushed)
    else:
        # the simplex is a segment: beyond its ends, the end
        pushed = pushed.clamp(0.0, 1.0)
    keep = at_uniform | (distance >= radius)
    return torch.where(keep, w, pushed).clamp(0.0, 1.0)


def is_one_hot(weights: Tensor) -> Tensor:
    """Whether each row of ``weights`` (..., K) is one-hot (max - min >= 1, as the authors test),
    as a bool tensor on the device (no host sync)."""
    return weights.amax(-1) - weights.amin(-1) >= 1.0 - 1e-6


VERTEX_DISTANCE = {2: math.sqrt(1 / 2), 3: math.sqrt(2 / 3)}  # from u to a vertex, per K


def saved_weights(logits: Tensor, radius: Tensor, fixed: Tensor) -> Tensor:
    """The mix weights a saved sparse SN layer stands for, from its state: each row of ``logits``
    (R, K) gives sparsestmax(row, radius), or, where ``fixed`` (R,) is set, the one-hot of its
    largest logit (the choice a fixed layer's logits hold)."""
    branches = torch.arange(logits.shape[-1], device=logits.device)
    one_hot = (branches == logits.argmax(-1, keepdim=True)).to(logits.dtype)
    weights = sparsestmax(logits, radius.reshape(()).to(logits.dtype))
    return torch.where(fixed.reshape(-1, 1) != 0, one_hot, weights)


# a logit whose softmax share is exactly 0 in float16 and wider types
ZERO_SHARE_LOGIT = -1e4


def weights_as_logits(weights: Tensor) -> Tensor:
    """Logits whose softmax is ``weights`` (each row on the simplex): log(weights), with a weight
    of 0 as a logit of -1e4, whose share is exactly 0. What a softmax (SN) layer holds for them."""
    return torch.log(weights).clamp(min=ZERO_SHARE_LOGIT)
