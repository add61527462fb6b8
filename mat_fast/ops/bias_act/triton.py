"""Bias + activation + gain + clamp in one Triton pass (the 'triton' backend of
:func:`mat_fast.ops.bias_act`): launchers, ``torch.library`` custom ops with fake
implementations and autograd, and the entry point :func:`bias_act_triton`.

Device code in ``triton_kernels.py``. Runs on CUDA tensors, or on CPU tensors when this
module was imported with ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton

from ..double_backward import creating_graph, reference_grads
from ..triton_support import alloc_like, check_device, device_context, kernels_interpreted
from .reference import bias_act_reference, resolve_defaults
from .triton_kernels import bias_act_bwd_kernel, bias_act_fwd_kernel

__all__ = ["bias_act_triton"]

_ACT_CODES = {"linear": 0, "relu": 1, "lrelu": 2, "tanh": 3, "sigmoid": 4}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK = 1024
# Triton's interpreter runs each program as numpy operations over its block: elementwise
# work costs the same per element, but every program costs ~1 ms of Python, so on CPU
# tensors the kernels take blocks 32x as long (feature maps of a million elements: 32
# programs, not 1000). The same kernel and masks; whole-generator tests run ~2x faster.
_INTERPRETER_BLOCK = 1 << 15
_OP = "bias_act (triton)"


def _layout(x: torch.Tensor, dim: int) -> Tuple[torch.Tensor, int]:
    """x in a dense layout and ``inner``: elements between consecutive channels in memory
    (channels_last maps with the bias on dim 1 stay as they are, inner = 1)."""
    if (
        dim == 1
        and x.ndim == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    ):
        return x, 1
    x = x.contiguous()
    return x, math.prod(x.shape[dim + 1 :])


def _launch(kernel, x, bias, extra, dim, act, alpha, gain, clamp):
    x, inner = _layout(x, dim)
    n = x.numel()
    if n == 0:
        return x, [t.contiguous() for t in extra], alloc_like(x)
    extra = [
        t.contiguous(memory_format=torch.channels_last)
        if inner == 1 and x.ndim == 4
        else t.contiguous()
        for t in extra
    ]
    out = alloc_like(x)
    block = _INTERPRETER_BLOCK if kernels_interpreted(kernel) else _BLOCK
    with device_context(x.device):
        kernel[(triton.cdiv(n, block),)](
            x,
            bias if bias is not None else x,
            *extra,
            out,
            n,
            x.shape[dim],
            inner,
            float(alpha),
            float(gain),
            float(clamp if clamp is not None else 0.0),
            ACT=_ACT_CODES[act],
            HAS_BIAS=bias is not None,
            HAS_CLAMP=clamp is not None,
            BLOCK=block,
        )
    return x, extra, out


@torch.library.custom_op("mat_fast::bias_act_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    dim: int,
    act: str,
    alpha: float,
    gain: float,
    clamp: Optional[float],
) -> torch.Tensor:
    return _launch(bias_act_fwd_kernel, x, bias, [], dim, act, alpha, gain, clamp)[2]


@_fwd_op.register_fake
def _fwd_fake(x, bias, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


@torch.library.custom_op("mat_fast::bias_act_bwd", mutates_args=())
def _bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    dim: int,
    act: str,
    alpha: float,
    gain: float,
    clamp: Optional[float],
) -> torch.Tensor:
    # dy goes in the kernel's argument list after bias (the kernel reads x, bias, dy)
    return _launch(bias_act_bwd_kernel, x, bias, [dy], dim, act, alpha, gain, clamp)[2]


@_bwd_op.register_fake
def _bwd_fake(dy, x, bias, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, bias, dim, act, alpha, gain, clamp = inputs
    ctx.save_for_backward(x, bias)
    ctx.args = (dim, act, alpha, gain, clamp)


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    if creating_graph():  # the kernel's gradient has no derivative: the twin's has
        grads = reference_grads(
            _OP, bias_act_reference, (x, bias, *ctx.args), ctx.needs_input_grad, (dy,)
        )
        return grads[:2] + (None,) * 5
    dim = ctx.args[0]
    dx = _bwd_op(dy, x, bias, *ctx.args)
    dbias = None
    if bias is not None and ctx.needs_input_grad[1]:
        dbias = dx.float().sum([i for i in range(dx.ndim) if i != dim]).to(bias.dtype)
    return dx, dbias, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def bias_act_triton(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """Same contract as :func:`~mat_fast.ops.bias_act.reference.bias_act_reference`, in one
    pass (fp32 math, output in x's dtype and layout); gradients to x and b (the
    reference's when taken with ``create_graph=True``: see :mod:`mat_fast.ops.double_backward`)."""
    if act not in _ACT_CODES:
        raise ValueError(f"{_OP}: unknown activation {act!r}; choose one of {sorted(_ACT_CODES)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{_OP}: dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    dim = dim % x.ndim
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(
            f"{_OP}: bias of shape {tuple(b.shape)} does not fit dim {dim} of {tuple(x.shape)}"
        )
    check_device(_OP, bias_act_fwd_kernel, x, b)
    alpha, gain, clamp = resolve_defaults(act, alpha, gain, clamp)
    return _fwd_op(x, b.contiguous() if b is not None else None, dim, act, alpha, gain, clamp)
