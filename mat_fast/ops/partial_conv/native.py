"""Native (C++ / CUDA) partial-convolution ops: the 'cpu' and 'cuda' backends.

* :func:`partial_conv_mask_native` - the mask update (``torch.ops.mat_fast_native.
  partial_conv_mask``; kernels in ``kernels/partial_conv_{cpu.cpp,cuda.cu}``), with the
  signature of :func:`mat_fast.ops.partial_conv.reference.partial_conv_mask_reference`.
* :func:`partial_conv_epilogue_native` - the fused epilogue of a partial convolution,
  ``leaky_relu(x + bias, alpha) * gain`` (clamped if asked) ``* ratio`` in one pass, with
  the signature of :func:`mat_fast.ops.partial_conv.reference.partial_conv_epilogue_reference`.
  Gradients flow to x, bias and ratio (with ``create_graph=True``, the reference's).
  :func:`partial_conv_epilogue_native_` writes it into x instead (CPU, no autograd).

Fake implementations and the epilogue's autograd formula are registered here, once the
library is loaded. Without the library the entry points raise
:class:`mat_fast.BackendUnavailableError` saying why.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import native_build
from ..double_backward import creating_graph, reference_grads
from .reference import partial_conv_epilogue_reference

__all__ = [
    "partial_conv_epilogue_native",
    "partial_conv_epilogue_native_",
    "partial_conv_mask_native",
]

_OPS = "mat_fast_native::"


# ----------------------------------------------------------------------------------------
# torch.library registrations (fake implementations, autograd)


def _fake_mask(mask, kernel_size, stride, padding):
    B, _, H, W = mask.shape
    Ho = (H + 2 * padding - kernel_size) // stride + 1
    Wo = (W + 2 * padding - kernel_size) // stride + 1
    return mask.new_empty(B, 1, Ho, Wo), mask.new_empty(B, 1, Ho, Wo)


def _fake_epilogue(x, bias, ratio, gain, alpha):
    # The kernels keep a channels_last x channels_last and make anything else contiguous.
    nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _fake_epilogue_(x, bias, ratio, gain, alpha):
    return None


def _epilogue_setup_context(ctx, inputs, output):
    x, bias, ratio, gain, alpha = inputs
    ctx.save_for_backward(x, bias, ratio)
    ctx.gain, ctx.alpha = gain, alpha


def _epilogue_backward(ctx, grad):
    x, bias, ratio = ctx.saved_tensors
    if creating_graph():
        # The formula below is differentiable, but it leaves dx off the graph where the
        # twin's is on it (a zero second derivative): the twin's gradients match exactly.
        return reference_grads(
            "partial_conv_epilogue (native)",
            partial_conv_epilogue_reference,
            (x, bias, ratio, ctx.gain, ctx.alpha),
            ctx.needs_input_grad,
            (grad,),
        )
    pre = x if bias is None else x + bias.to(x.dtype).view(1, -1, 1, 1)
    # In grad's dtype from the start: Python scalars would make an fp32 slope (fp64 loses).
    slope = torch.where(pre > 0, grad.new_ones(()), grad.new_full((), ctx.alpha))
    needs = ctx.needs_input_grad
    d_pre = grad * slope * (ratio * ctx.gain).to(grad.dtype) if needs[0] or needs[1] else None
    dx = d_pre if needs[0] else None
    dbias = d_pre.sum((0, 2, 3)).to(bias.dtype) if bias is not None and needs[1] else None
    dratio = None
    if needs[2]:
        dratio = (
            (grad * F.leaky_relu(pre, ctx.alpha) * ctx.gain).sum(1, keepdim=True).to(ratio.dtype)
        )
    return dx, dbias, dratio, None, None


def _register_python_side() -> None:
    """Fake implementations and the epilogue's autograd; once, after the library loaded."""
    torch.library.register_fake(_OPS + "partial_conv_mask")(_fake_mask)
    torch.library.register_fake(_OPS + "partial_conv_epilogue")(_fake_epilogue)
    torch.library.register_fake(_OPS + "partial_conv_epilogue_")(_fake_epilogue_)
    torch.library.register_autograd(
        _OPS + "partial_conv_epilogue", _epilogue_backward, setup_context=_epilogue_setup_context
    )


def _ops(device_type: str):
    return native_build.operators(device_type, _register_python_side)


# ----------------------------------------------------------------------------------------
# Entry points


def partial_conv_mask_native(
    mask: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(update, ratio)`` of a partial convolution; same contract as the reference.

    Args:
        mask: (B, 1, H, W) validity (non-binary values allowed), any floating dtype.
        kernel_size, stride, padding: the convolution's (zero padding).

    Returns:
        update = clamp(S, 0, 1) and ratio = k*k / (S + 1e-8) * update, both
        (B, 1, H_out, W_out) in the mask's dtype, S the k x k box sum; no gradient.
    """
    ops = _ops(mask.device.type)
    with torch.no_grad():
        return ops.partial_conv_mask(mask, int(kernel_size), int(stride), int(padding))


def partial_conv_epilogue_native(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """Fused :func:`partial_conv_epilogue_reference` (fp32 math inside, output in x's dtype;
    a channels_last x gives a channels_last result)."""
    if clamp is not None and clamp >= 0:
        # The kernel has no clamp (MAT's partial convs never clamp); the composite is exact.
        return partial_conv_epilogue_reference(x, bias, ratio, gain, alpha, clamp)
    return _ops(x.device.type).partial_conv_epilogue(x, bias, ratio, float(gain), float(alpha))


def partial_conv_epilogue_native_(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """:func:`partial_conv_epilogue_native` written into ``x`` when it can be (a CPU tensor,
    contiguous or channels_last, that autograd does not need); else a new tensor."""
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, bias, ratio)
    )
    layout_ok = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if tracked or not layout_ok or x.device.type != "cpu" or (clamp is not None and clamp >= 0):
        return partial_conv_epilogue_native(x, bias, ratio, gain, alpha, clamp)
    _ops(x.device.type).partial_conv_epilogue_(x, bias, ratio, float(gain), float(alpha))
    if not torch.compiler.is_compiling() and not x.is_inference():  # (Dynamo rejects is_inference)
        # A C++ op's in-place write does not bump x's version: without this, autograd would
        # not notice when an earlier op saved x for its backward.
        torch.autograd.graph.increment_version(x)
    return x


# Registered now if the backend probe already loaded the library (see window_attention).
if native_build.is_loaded():  # library loaded before this module: register now
    native_build.register_python_side_once(_register_python_side)
