"""Shifted-window masked contextual attention: public entry point and dispatch."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import backend
from .reference import window_attention_reference

backend.register("window_attention", "reference", window_attention_reference)
# Fast kernels, imported on first use; a missing module means that backend runs the reference.
backend.register_lazy("window_attention", "triton", "mat_fast.ops.window_attention.triton:window_attention_triton")
backend.register_lazy("window_attention", "cpu", "mat_fast.ops.window_attention.native:window_attention_native")
backend.register_lazy("window_attention", "cuda", "mat_fast.ops.window_attention.native:window_attention_native")


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
    if L != H * W:
        raise ValueError(f"token count {L} does not match the grid {H}x{W}")
    if window_size <= 0 or H % window_size or W % window_size:
        raise ValueError(f"grid {H}x{W} is not a multiple of the window size {window_size}")
    if not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be in [0, {window_size}); got {shift_size}")
    if C % num_heads:
        raise ValueError(f"{C} channels do not split into {num_heads} heads")
    if mask is not None and tuple(mask.shape) != (B, L, 1):
        raise ValueError(f"mask must have shape {(B, L, 1)}; got {tuple(mask.shape)}")
    fn = backend.implementation("window_attention", q.device, backend_name)
    return fn(q, k, v, mask, (H, W), int(window_size), int(shift_size), int(num_heads))


__all__ = ["window_attention", "window_attention_reference"]
