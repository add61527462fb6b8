"""Native (C++ / CUDA) shifted-window attention: the 'cpu' and 'cuda' backends.

Layers:

* kernels: ``kernels/window_attention_cpu.cpp`` (+ ``window_attention_cpu_window.h``,
  ``window_attention_cpu_core.inc``) and ``kernels/window_attention_cuda.cu``, built by
  :mod:`mat_fast.ops.native_build`;
* custom ops ``torch.ops.mat_fast_native.window_attention`` / ``window_attention_backward``
  / ``window_mask_update`` (schemas in ``kernels/mat_fast_ops.cpp``), given fake
  implementations and an autograd formula here, so ``torch.compile`` can trace them and
  gradients flow to q, k and v (the backward kernel recomputes each window's softmax; the
  mask gets no gradient, as upstream updates it under ``no_grad``); gradients taken with
  ``create_graph=True`` run through the reference (:mod:`mat_fast.ops.double_backward`);
* :func:`window_attention_native`, with the signature of the reference twin.

Without the library the entry point raises :class:`mat_fast.BackendUnavailableError`
saying why (the backend switch normally never calls it then).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import native_build
from ..double_backward import creating_graph, reference_grads
from .reference import window_attention_reference

__all__ = ["window_attention_native"]

_OPS = "mat_fast_native::"
_NAME = "window_attention (native)"


def _fake_forward(q, k, v, mask, height, width, window, shift, heads):
    return q.new_empty(q.shape)


def _fake_backward(grad_out, q, k, v, mask, height, width, window, shift, heads):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _fake_mask_update(mask, height, width, window, shift):
    return mask.new_empty(mask.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, height, width, window, shift, heads = inputs
    ctx.save_for_backward(q, k, v, mask)
    ctx.geometry = (height, width, window, shift, heads)


def _backward(ctx, grad_out):
    q, k, v, mask = ctx.saved_tensors
    if creating_graph():  # the backward kernel has no derivative: the twin's gradients have
        H, W, window, shift, heads = ctx.geometry

        def twin(q, k, v):
            return window_attention_reference(q, k, v, mask, (H, W), window, shift, heads)[0]

        grads = reference_grads(_NAME, twin, (q, k, v), ctx.needs_input_grad[:3], (grad_out,))
        return (*grads, None, None, None, None, None, None)
    dq, dk, dv = torch.ops.mat_fast_native.window_attention_backward(
        grad_out, q, k, v, mask, *ctx.geometry
    )
    needs = ctx.needs_input_grad
    return (
        dq if needs[0] else None,
        dk if needs[1] else None,
        dv if needs[2] else None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


def _no_second_derivative(ctx, *grads):
    # Only a direct call of the backward op gets here: window_attention's own formula
    # never calls it when a graph is being created (see _backward).
    raise RuntimeError(
        "mat_fast_native::window_attention_backward has no derivative; differentiate "
        "window_attention itself (its gradients taken with create_graph=True are "
        "differentiable)"
    )


def _register_python_side() -> None:
    """Fake implementations and the autograd formula; once, after the library loaded."""
    torch.library.register_fake(_OPS + "window_attention")(_fake_forward)
    torch.library.register_fake(_OPS + "window_attention_backward")(_fake_backward)
    torch.library.register_fake(_OPS + "window_mask_update")(_fake_mask_update)
    torch.library.register_autograd(
        _OPS + "window_attention", _backward, setup_context=_setup_context
    )
    # Without a formula torch's fallback warns and then differentiates it as zero.
    torch.library.register_autograd(_OPS + "window_attention_backward", _no_second_derivative)


def _ops(device_type: str):
    return native_build.operators(device_type, _register_python_side)


def window_attention_native(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Contextual attention over (shifted) windows; same contract as
    :func:`mat_fast.ops.window_attention.reference.window_attention_reference`.

    Args:
        q, k, v: (B, H*W, C) projected tokens in grid (row-major) order; C = heads * head_dim;
            float32, bfloat16, float16 (fp32 math inside) or float64.
        mask: (B, H*W, 1) token validity (1 valid, 0 hole, other values added to the
            logits) or None.
        x_size: (H, W), multiples of ``window_size``.
        window_size: w; windows hold w*w tokens.
        shift_size: cyclic shift, 0 <= shift_size < w.
        num_heads: number of heads.

    Returns:
        (out, new_mask): out (B, H*W, C) in q's dtype; new_mask (B, H*W, 1) in the mask's
        dtype (every token of a window gets clamp(sum of the window's mask, 0, 1)), or None.
    """
    ops = _ops(q.device.type)
    H, W = (int(s) for s in x_size)
    geometry = (H, W, int(window_size), int(shift_size), int(num_heads))
    out = ops.window_attention(q, k, v, mask, *geometry)
    new_mask = None
    if mask is not None:
        with torch.no_grad():
            new_mask = ops.window_mask_update(mask, *geometry[:4])
    return out, new_mask


# The library may already be loaded (the backend probe loads it before importing this
# module): register now, so torch.compile sees the fake implementations from the start.
if native_build.is_loaded():  # library loaded before this module: register now
    native_build.register_python_side_once(_register_python_side)
