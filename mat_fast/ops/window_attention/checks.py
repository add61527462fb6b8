"""The one validation of window-attention arguments: the public ops and the Triton entry
points (which can be called directly) share it, so each mistake has one message."""

from __future__ import annotations

from typing import Optional

import torch


def check_geometry(
    B: int,
    L: int,
    C: int,
    mask: Optional[torch.Tensor],
    H: int,
    W: int,
    window_size: int,
    shift_size: int,
    num_heads: int,
) -> None:
    """Raise ``ValueError`` unless L = H*W tokens of C channels in B images split into
    ``window_size`` windows, ``shift_size`` is a valid shift, C splits into ``num_heads``
    and ``mask`` is None or (B, L, 1)."""
    if L != H * W:
        raise ValueError(f"token count {L} does not match the grid {H}x{W}")
    if window_size <= 0 or H % window_size or W % window_size:
        raise ValueError(f"grid {H}x{W} is not a multiple of the window size {window_size}")
    if not 0 <= shift_size < window_size:
        raise ValueError(f"shift_size must be in [0, {window_size}); got {shift_size}")
    if num_heads <= 0 or C % num_heads:
        raise ValueError(f"{C} channels do not split into {num_heads} heads")
    if mask is not None and tuple(mask.shape) != (B, L, 1):
        raise ValueError(f"mask must have shape {(B, L, 1)}; got {tuple(mask.shape)}")


def check_qkv_projection(
    x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: Optional[torch.Tensor]
) -> None:
    """Raise ``ValueError`` unless x is (B, L, C) tokens, ``qkv_weight`` (3C, C) and
    ``qkv_bias`` (3C,) or None."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"x must be (B, H*W, C) tokens; got {getattr(x, 'shape', x)}")
    C = x.shape[-1]
    if tuple(qkv_weight.shape) != (3 * C, C):
        raise ValueError(
            f"qkv_weight must be (3C, C) = {(3 * C, C)} for {C} channels; "
            f"got {tuple(qkv_weight.shape)}"
        )
    if qkv_bias is not None and tuple(qkv_bias.shape) != (3 * C,):
        raise ValueError(f"qkv_bias must be (3C,) = {(3 * C,)}; got {tuple(qkv_bias.shape)}")
