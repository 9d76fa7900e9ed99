"""Helpers shared by the kernel tests: one training (or eval) step of an SN layer, through its
kernels and through the plain reference, with everything a step produces."""

import torch

from sn_detection.layers import SwitchNorm2d
from sn_detection.layers.switch_norm_reference import switch_norm_reference


PARAMETER_NAMES = ("weight", "bias", "mean_weight", "var_weight")


def random_sn(channels=6, using_bn=True, dtype=torch.float64, seed=0):
    """A SwitchNorm2d (momentum 0.1) with random parameters and running statistics."""
    torch.manual_seed(seed)
    m = SwitchNorm2d(channels, using_bn=using_bn, momentum=0.1).to(dtype)
    with torch.no_grad():
        for p in (m.weight, m.bias, m.mean_weight, m.var_weight):
            p.normal_()
        if using_bn:
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return m


def forward_backward(m, x, dy, fast):
    """Output, gradients (x and parameters) and running statistics of one step of ``m``."""
    m.use_fast_kernels = fast
    x = x.detach().clone().requires_grad_()
    y = m(x)
    grads = torch.autograd.grad(y, [x, m.weight, m.bias, m.mean_weight, m.var_weight], dy)
    stats = [m.running_mean.clone(), m.running_var.clone()] if m.using_bn else []
    return [y.detach(), *grads, *stats]


def reference_step(m, x, dy, training):
    """The same as ``forward_backward`` through ``switch_norm_reference``."""
    x = x.detach().clone().requires_grad_()
    params = [
        p.detach().clone().requires_grad_() for p in (m.weight, m.bias, m.mean_weight, m.var_weight)
    ]
    rm = m.running_mean.clone() if m.using_bn else None
    rv = m.running_var.clone() if m.using_bn else None
    y = switch_norm_reference(x, *params, rm, rv, training=training, momentum=m.momentum, eps=m.eps)
    grads = torch.autograd.grad(y, [x, *params], dy)
    return [y.detach(), *grads, *([rm, rv] if m.using_bn else [])]


def gradcheck_layer(m, x, **gradcheck_options):
    """``torch.autograd.gradcheck`` of ``m`` with respect to ``x`` and its four parameters."""

    def fn(x, *params):
        return torch.func.functional_call(m, dict(zip(PARAMETER_NAMES, params)), (x,))

    params = tuple(getattr(m, name).detach().clone().requires_grad_() for name in PARAMETER_NAMES)
    return torch.autograd.gradcheck(fn, (x, *params), **gradcheck_options)
