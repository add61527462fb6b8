"""The FIR filter's depthwise convolution, differentiable to any order at one convolution
per order.

A FIR filter is a depthwise (groups = channels) convolution with a constant weight.
PyTorch's double backward of a grouped convolution runs one convolution per group (the
weight's gradient is formed group by group even when nobody asks for it): on CPU 10-30x
slower than the one convolution each order needs (measured on a 2x128x64x64 map).
Here the gradient of the convolution is its adjoint (a transposed depthwise convolution)
and the adjoint's gradient is the convolution again, each an autograd function: every order
of derivative is one depthwise convolution. Forward values and first gradients are the same
calls PyTorch makes (bit for bit).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["autocast_dtype", "depthwise_fir"]


def depthwise_fir(
    x: torch.Tensor, weight: torch.Tensor, stride: int, padding: Sequence[int]
) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` for a depthwise
    ``weight`` (C, 1, kh, kw) that needs no gradient; see the module docstring.

    Under autocast the operands are cast to autocast's dtype here, as F.conv2d's autocast
    would, and the convolutions run with autocast off: autocast does not reach the
    backward of an autograd function, where the gradient (in autocast's dtype) would meet
    the saved fp32 weight."""
    padding = (int(padding[0]), int(padding[1]))
    # autocast casts float32/16 operands, never float64
    dtype = autocast_dtype(x.device.type) if x.dtype != torch.float64 else None
    if dtype is not None:
        with torch.autocast(x.device.type, enabled=False):
            return depthwise_fir(x.to(dtype), weight.to(dtype), stride, padding)
    if torch.is_grad_enabled() and x.requires_grad and not weight.requires_grad:
        return _Conv.apply(x, weight, int(stride), padding)
    return F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs convolutions in on ``device_type``; None where it is off."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride: int, padding: Tuple[int, int]):
        ctx.save_for_backward(weight)
        ctx.conf = (tuple(x.shape[-2:]), stride, padding)
        return F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, dy):
        (weight,) = ctx.saved_tensors
        size, stride, padding = ctx.conf
        return _Adjoint.apply(dy, weight, size, stride, padding), None, None, None


class _Adjoint(torch.autograd.Function):
    """The input gradient of :class:`_Conv` for an input of spatial ``size``."""

    @staticmethod
    def forward(ctx, dy, weight, size: Tuple[int, int], stride: int, padding: Tuple[int, int]):
        ctx.save_for_backward(weight)
        ctx.conf = (stride, padding)
        # The rows/columns a strided convolution skipped at the end: output_padding.
        extra = [
            size[i] - ((dy.shape[2 + i] - 1) * stride - 2 * padding[i] + weight.shape[2 + i])
            for i in range(2)
        ]
        return F.conv_transpose2d(
            dy, weight, stride=stride, padding=padding, output_padding=extra, groups=dy.shape[1]
        )

    @staticmethod
    def backward(ctx, ddx):
        (weight,) = ctx.saved_tensors
        stride, padding = ctx.conf
        return _Conv.apply(ddx, weight, stride, padding), None, None, None, None
