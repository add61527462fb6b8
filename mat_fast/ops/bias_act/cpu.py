"""Bias + activation for the 'cpu' backend: at most one new tensor instead of one per step.

The reference writes a fresh tensor for the bias, the activation, the gain and the clamp.
On CPU the first touch of a fresh 100-200 MB activation (page faults) costs several times
the arithmetic, so here:

* :func:`bias_act_cpu` writes one new tensor (the bias add) and runs the rest in place on it;
* :func:`bias_act_cpu_` (``ops.bias_act.bias_act(..., inplace=True)``) overwrites x itself, when
  autograd does not need x; the model passes fresh convolution outputs.

Under autograd (x or b requires grad) both run the reference, which autograd differentiates
to any order.

The result keeps x's memory format (channels_last stays so).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .reference import bias_act_reference, resolve_defaults

__all__ = ["bias_act_cpu", "bias_act_cpu_"]

# Activations that run in place; the others take the reference.
_INPLACE = {
    "linear": None,
    "relu": lambda x, alpha: x.relu_(),
    "lrelu": lambda x, alpha: F.leaky_relu_(x, alpha),
}


def _finish_(y, act, alpha, gain, clamp):
    """Activation, gain and clamp of ``y`` in place."""
    if _INPLACE[act] is not None:
        _INPLACE[act](y, alpha)
    if gain != 1:
        y.mul_(gain)
    if clamp is not None:
        y.clamp_(-clamp, clamp)
    return y


def _tracked(x, b) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))


def _bias_view(b, x, dim):
    return b.to(x.dtype).reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])


def bias_act_cpu(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """Same contract as :func:`~mat_fast.ops.bias_act.reference.bias_act_reference`."""
    # Tracked by autograd (x or b): the reference, whose steps autograd differentiates to
    # any order (the in-place steps below would overwrite what leaky_relu saves).
    if act not in _INPLACE or _tracked(x, b):
        return bias_act_reference(x, b, dim, act, alpha, gain, clamp)
    alpha, gain, clamp = resolve_defaults(act, alpha, gain, clamp)
    if b is None and act == "linear" and gain == 1 and clamp is None:
        return x  # nothing to do (the reference returns x itself too)
    y = torch.add(x, _bias_view(b, x, dim)) if b is not None else x.clone()
    return _finish_(y, act, alpha, gain, clamp)


def bias_act_cpu_(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """:func:`bias_act_cpu` that writes the result into ``x`` (unless autograd needs x or
    the activation has no in-place form: then a new tensor)."""
    if act not in _INPLACE or _tracked(x, b):
        return bias_act_cpu(x, b, dim, act, alpha, gain, clamp)
    alpha, gain, clamp = resolve_defaults(act, alpha, gain, clamp)
    if b is not None:
        x.add_(_bias_view(b, x, dim))
    return _finish_(x, act, alpha, gain, clamp)
