"""Shifted-window masked contextual attention: public entry point and dispatch."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ... import backend
from .checks import check_geometry, check_qkv_projection
from .reference import (
    normalize_tokens,
    shift_region_mask,
    window_attention_qkv_reference,
    window_attention_reference,
)

backend.register("window_attention", "reference", window_attention_reference)
# Fast kernels, imported on first use. The native ones need the C++/CUDA extension: where it
# cannot load, the 'cpu' backend runs the reference for them (see mat_fast.backend).
backend.register_lazy(
    "window_attention", "triton", "mat_fast.ops.window_attention.triton:window_attention_triton"
)
backend.register_lazy(
    "window_attention",
    "cpu",
    "mat_fast.ops.window_attention.native:window_attention_native",
    layer="native",
)
backend.register_lazy(
    "window_attention",
    "cuda",
    "mat_fast.ops.window_attention.native:window_attention_native",
    layer="native",
)
backend.register("window_attention_qkv", "reference", window_attention_qkv_reference)
backend.register_lazy(
    "window_attention_qkv",
    "triton",
    "mat_fast.ops.window_attention.triton:window_attention_qkv_triton",
)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
    *,
    backend_name: Optional[str] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """MAT's contextual attention over (shifted) windows with the window mask update.

    Args:
        q, k, v: (B, H*W, C) tokens in row-major grid order, already projected
            (q and k from the L2-normalised input, v from the raw input).
        mask: (B, H*W, 1) validity (1 = valid, 0 = hole; other values are added to the
            logits as upstream does) or None for plain (shifted) window attention.
        x_size: (H, W), multiples of ``window_size``.
        window_size: window side w (windows of w*w tokens).
        shift_size: 0 or w // 2 (cyclic shift of Swin's SW-MSA).
        num_heads: heads; C must be divisible by it.
        backend_name: force an implementation ('reference', ...) for this call.

    Returns:
        ``(out, new_mask)``: out (B, H*W, C) before the output projection; new_mask
        (B, H*W, 1) with every window valid if any of its tokens was, or None.
    """
    H, W = (int(s) for s in x_size)
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must share one (B, H*W, C) shape; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, L, C = q.shape
    check_geometry(B, L, C, mask, H, W, window_size, shift_size, num_heads)
    fn = backend.implementation("window_attention", q.device, backend_name)
    return fn(q, k, v, mask, (H, W), int(window_size), int(shift_size), int(num_heads))


def window_attention_qkv(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
    *,
    backend_name: Optional[str] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """MAT's WindowAttention up to its output projection, from the block input ``x``:
    q = W_q (x / ||x||) + b_q, k likewise, v = W_v x + b_v, then :func:`window_attention`.

    Fused backends run one GEMM on ``x`` for all three projections and apply 1/||x||
    (fp32) and the biases inside the attention kernel: W (x / ||x||) = (W x) / ||x||.
    Others normalise and project exactly as upstream, then call their attention kernel.

    Args:
        x: (B, H*W, C) tokens in row-major grid order.
        qkv_weight: (3C, C) effective q, k, v weights stacked in that order.
        qkv_bias: (3C,) stacked biases or None.
        mask, x_size, window_size, shift_size, num_heads, backend_name: as
            :func:`window_attention`.

    Returns:
        ``(out, new_mask)`` as :func:`window_attention`.
    """
    H, W = (int(s) for s in x_size)
    check_qkv_projection(x, qkv_weight, qkv_bias)
    B, L, C = x.shape
    check_geometry(B, L, C, mask, H, W, window_size, shift_size, num_heads)
    name = backend.resolve(x.device, backend_name)
    if not backend.has_kernel("window_attention_qkv", x.device, name):
        # no fused projection for this backend: project as upstream, attend with its kernel
        norm_x = normalize_tokens(x)
        w_q, w_k, w_v = qkv_weight.to(x.dtype).split(C)
        b_q, b_k, b_v = qkv_bias.to(x.dtype).split(C) if qkv_bias is not None else (None,) * 3
        q, k, v = F.linear(norm_x, w_q, b_q), F.linear(norm_x, w_k, b_k), F.linear(x, w_v, b_v)
        attend = backend.implementation("window_attention", x.device, name)
        return attend(q, k, v, mask, (H, W), int(window_size), int(shift_size), int(num_heads))
    fn = backend.implementation("window_attention_qkv", x.device, name)
    return fn(
        x, qkv_weight, qkv_bias, mask, (H, W), int(window_size), int(shift_size), int(num_heads)
    )


__all__ = [
    "shift_region_mask",
    "window_attention",
    "window_attention_qkv",
    "window_attention_qkv_reference",
    "window_attention_reference",
]
