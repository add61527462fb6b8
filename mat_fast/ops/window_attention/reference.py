"""Shifted-window masked contextual attention with mask update, in plain PyTorch.

This is MAT's "multi-head contextual attention" (paper Sec. 3.3), written as one op over
projected tokens so that fused kernels have a twin to be tested against:

1. roll the H x W token grid by -shift (Swin's cyclic shift),
2. cut it into w x w windows,
3. per window and head: logits = q k^T * head_dim^-0.5
   + -100 between tokens that came from different regions of the rolled grid (shift mask)
   + -100 on keys whose mask value is exactly 0 (invalid tokens; exact 1 adds 0 and any
     other value is added as is - upstream's masked_fill semantics),
   softmax, @ v,
4. the new mask of each window is clamp(sum of its token masks, 0, 1): one valid token
   makes the whole window valid,
5. undo the partition and the roll.

-100 rather than -inf keeps a fully invalid window finite: its softmax is uniform.

:func:`window_attention_qkv_reference` is the same op one step earlier, from the block's
input tokens and the stacked q/k/v weights (normalise, project, attend), the twin of the
kernels that fuse the projections' epilogue and the normalisation into the attention.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

MASK_PENALTY = -100.0


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, window * window, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


@functools.lru_cache(maxsize=64)
def _shift_region_mask(H: int, W: int, window: int, shift: int, device: str, dtype) -> torch.Tensor:
    # Label the rolled grid with 9 regions (3 row bands x 3 column bands); tokens of one
    # window attend freely within their region and get -100 across regions.
    labels = torch.zeros(1, H, W, 1, device="cpu")  # explicit: immune to torch.device() contexts
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            labels[:, rows, cols, :] = 3 * i + j
    windows = window_partition(labels, window).squeeze(-1)  # (nW, N)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)  # (nW, N, N)
    mask = torch.where(
        diff != 0, torch.tensor(MASK_PENALTY, device="cpu"), torch.tensor(0.0, device="cpu")
    )
    return mask.to(device=device, dtype=dtype)


def shift_region_mask(H: int, W: int, window: int, shift: int, device, dtype) -> torch.Tensor:
    """(nW, N, N) additive mask of the shifted windows: 0 within a region, -100 across.
    Cached per shape, device and dtype; treat the result as read-only."""
    key = (H, W, window, shift, str(torch.device(device)), dtype)
    if torch.compiler.is_compiling():  # build it in the graph (Dynamo cannot use the cache)
        return _shift_region_mask.__wrapped__(*key)
    return _shift_region_mask(*key)


def key_mask_bias(mask_windows: torch.Tensor) -> torch.Tensor:
    """Per-key additive bias from token masks (B_, N, 1): 0 -> -100, 1 -> 0, else value."""
    bias = mask_windows.squeeze(-1)[:, None, None, :]  # (B_, 1, 1, N)
    return bias.masked_fill(bias == 0, MASK_PENALTY).masked_fill(bias == 1, 0.0)


def window_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Contextual attention over (shifted) windows.

    Args:
        q, k, v: (B, H*W, C) projected tokens in grid (row-major) order; C = heads * head_dim.
        mask: (B, H*W, 1) token validity (1 valid, 0 hole, other values allowed) or None.
        x_size: (H, W) of the token grid; both multiples of ``window_size``.
        window_size: w; windows hold w*w tokens.
        shift_size: cyclic shift s (0 for W-MSA, w // 2 for SW-MSA).
        num_heads: number of heads.

    Returns:
        (out, new_mask): out (B, H*W, C) before the output projection; new_mask
        (B, H*W, 1) = clamp(window sum of mask, 0, 1) in grid order, or None.
    """
    H, W = x_size
    B, L, C = q.shape
    N = window_size * window_size
    head_dim = C // num_heads
    scale = head_dim**-0.5

    def to_windows(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(B, H, W, t.shape[-1])
        if shift_size:
            t = torch.roll(t, shifts=(-shift_size, -shift_size), dims=(1, 2))
        return window_partition(t, window_size)

    def to_heads(t: torch.Tensor) -> torch.Tensor:  # (B_, N, C) -> (B_, heads, N, head_dim)
        return t.reshape(t.shape[0], N, num_heads, head_dim).permute(0, 2, 1, 3)

    qw, kw, vw = (to_heads(to_windows(t)) for t in (q, k, v))
    attn = (qw @ kw.transpose(-2, -1)) * scale  # (B_, heads, N, N)

    if shift_size:
        region = shift_region_mask(H, W, window_size, shift_size, q.device, attn.dtype)
        nW = region.shape[0]
        attn = (attn.view(B, nW, num_heads, N, N) + region[None, :, None]).view(-1, num_heads, N, N)

    new_mask = None
    if mask is not None:
        mask_windows = to_windows(mask)  # (B_, N, 1)
        attn = attn + key_mask_bias(mask_windows)
        with torch.no_grad():
            window_valid = torch.clamp(mask_windows.sum(dim=1, keepdim=True), 0, 1)
            new_mask = window_valid.expand(-1, N, -1)

    # Under autocast the softmax runs in fp32 and the product in autocast's dtype; the
    # cast makes the same product outside autocast too (a double backward re-runs this
    # composition there, on the half-precision q, k, v the forward saved).
    attn = attn.softmax(dim=-1).to(vw.dtype)
    out = (attn @ vw).transpose(1, 2).reshape(-1, N, C)  # (B_, N, C)

    def from_windows(t: torch.Tensor) -> torch.Tensor:
        t = window_reverse(t, window_size, H, W)
        if shift_size:
            t = torch.roll(t, shifts=(shift_size, shift_size), dims=(1, 2))
        return t.reshape(B, L, t.shape[-1])

    out = from_windows(out)
    if new_mask is not None:
        new_mask = from_windows(new_mask)
    return out, new_mask


def normalize_tokens(x: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1)`` (x / max(||x||, 1e-12)), computed in fp32 for half inputs.

    Upstream normalises in the input dtype; in fp16 its 1e-12 floor underflows to 0, so an
    all-zero token becomes 0/0 = NaN. fp32 inputs give upstream's numbers bit for bit."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), p=2.0, dim=-1).to(x.dtype)
    return F.normalize(x, p=2.0, dim=-1)


def window_attention_qkv_reference(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """MAT's WindowAttention from block input tokens: q and k project the L2-normalised
    tokens, v the raw ones, then :func:`window_attention_reference`.

    Args:
        x: (B, H*W, C) block input tokens in grid order.
        qkv_weight: (3C, C) the q, k and v weights stacked (effective weights, gains applied).
        qkv_bias: (3C,) the three biases stacked, or None.
        mask, x_size, window_size, shift_size, num_heads: as :func:`window_attention_reference`.

    Returns:
        (out, new_mask) as :func:`window_attention_reference` (out before the output projection).
    """
    C = x.shape[-1]
    w_q, w_k, w_v = qkv_weight.to(x.dtype).split(C)
    b_q, b_k, b_v = qkv_bias.to(x.dtype).split(C) if qkv_bias is not None else (None,) * 3

    def linear(t, w, b):  # written as upstream's FullyConnectedLayer computes it
        t = t.matmul(w.t())
        return t if b is None else t + b

    norm_x = normalize_tokens(x)
    q, k, v = linear(norm_x, w_q, b_q), linear(norm_x, w_k, b_k), linear(x, w_v, b_v)
    return window_attention_reference(q, k, v, mask, x_size, window_size, shift_size, num_heads)
