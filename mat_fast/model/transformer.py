"""MAT's mask-aware transformer (paper Sec. 3.2-3.3): Swin-style blocks whose attention
only looks at valid tokens and whose windows become valid once they hold a valid token.

Tokens are (B, H*W, C) in row-major grid order; masks are (B, H*W, 1).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .. import ops
from .layers import Conv2dLayerPartial, FullyConnectedLayer


def token2feature(x: torch.Tensor, x_size: Sequence[int]) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) feature map."""
    B, N, C = x.shape
    return x.permute(0, 2, 1).reshape(B, C, int(x_size[0]), int(x_size[1]))


def feature2token(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens (a transposed view, as upstream)."""
    B, C, H, W = x.shape
    return x.view(B, C, -1).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = FullyConnectedLayer(in_features, hidden_features, activation="lrelu")
        self.fc2 = FullyConnectedLayer(hidden_features, out_features)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class WindowAttention(nn.Module):
    """Multi-head contextual attention: q, k from L2-normalised tokens, v from raw tokens."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = FullyConnectedLayer(dim, dim)
        self.k = FullyConnectedLayer(dim, dim)
        self.v = FullyConnectedLayer(dim, dim)
        self.proj = FullyConnectedLayer(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        x_size: Tuple[int, int],
        mask: Optional[torch.Tensor],
        shift_size: int = 0,
    ):
        """x (B, H*W, C), mask (B, H*W, 1) or None -> (attended x, updated mask)."""
        # q, k, v and proj are per-token, so projecting before the window partition
        # (inside the op) gives the same numbers as upstream projecting after it. The op
        # normalises x for q and k itself; fused backends make q, k, v with one GEMM.
        projections = (self.q, self.k, self.v)
        weight = torch.cat([fc.weight * fc.weight_gain for fc in projections])  # (3C, C)
        bias = torch.cat([fc.bias * fc.bias_gain for fc in projections])  # (3C,)
        out, mask = ops.window_attention_qkv(
            x, weight, bias, mask, x_size, self.window_size, shift_size, self.num_heads
        )
        return self.proj(out), mask


class SwinTransformerBlock(nn.Module):
    """Contextual attention + fusion of the shortcut by concatenation + MLP (no LayerNorm:
    MAT drops it, paper Sec. 3.2).

    ``down_ratio`` and any other keyword (upstream's ``qkv_bias``, ``drop``, ``norm_layer``,
    ...) are accepted for upstream's signature only and have no effect here (MAT's generator
    leaves them at upstream's defaults)."""

    def __init__(
        self,
        dim,
        input_resolution,
        num_heads,
        down_ratio=1,
        window_size=7,
        shift_size=0,
        mlp_ratio=4.0,
        **_unused,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= self.window_size:
            # The grid fits in one window: no partition, no shift.
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.attn = WindowAttention(dim, self.window_size, num_heads)
        self.fuse = FullyConnectedLayer(dim * 2, dim, activation="lrelu")
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # Kept as a buffer only because upstream checkpoints carry it; the op derives the
        # shift regions from coordinates for any grid size.
        attn_mask = None
        if self.shift_size > 0:
            H, W = self.input_resolution
            attn_mask = ops.shift_region_mask(
                H, W, self.window_size, self.shift_size, "cpu", torch.float32
            ).clone()  # cached: never share
        self.register_buffer("attn_mask", attn_mask)

    def forward(self, x: torch.Tensor, x_size, mask: Optional[torch.Tensor] = None):
        H, W = (int(s) for s in x_size)
        if x.shape[1] != H * W:
            raise ValueError(f"{x.shape[1]} tokens do not form the grid {H}x{W}")
        attended, mask = self.attn(x, (H, W), mask, self.shift_size)
        x = self.fuse(torch.cat([x, attended], dim=-1))
        return self.mlp(x), mask


class PatchMerging(nn.Module):
    """Partial conv with stride 2 between token grids (halves H and W)."""

    def __init__(self, in_channels, out_channels, down=2):
        super().__init__()
        self.conv = Conv2dLayerPartial(
            in_channels, out_channels, kernel_size=3, activation="lrelu", down=down
        )
        self.down = down

    def forward(self, x, x_size, mask=None):
        x = token2feature(x, x_size)
        if mask is not None:
            mask = token2feature(mask, x_size)
        x, mask = self.conv(x, mask)
        x_size = (int(x_size[0]) // self.down, int(x_size[1]) // self.down)
        return feature2token(x), x_size, (feature2token(mask) if mask is not None else None)


class PatchUpsampling(nn.Module):
    """Partial conv with FIR 2x upsampling between token grids (doubles H and W)."""

    def __init__(self, in_channels, out_channels, up=2):
        super().__init__()
        self.conv = Conv2dLayerPartial(
            in_channels, out_channels, kernel_size=3, activation="lrelu", up=up
        )
        self.up = up

    def forward(self, x, x_size, mask=None):
        x = token2feature(x, x_size)
        if mask is not None:
            mask = token2feature(mask, x_size)
        x, mask = self.conv(x, mask)
        x_size = (int(x_size[0]) * self.up, int(x_size[1]) * self.up)
        return feature2token(x), x_size, (feature2token(mask) if mask is not None else None)


class BasicLayer(nn.Module):
    """One transformer stage: optional resampling, ``depth`` blocks alternating plain and
    shifted windows, then a partial conv with a residual connection. Other keywords
    (upstream's ``qkv_bias``, ``drop``, ``norm_layer``, ...) are accepted for upstream's
    signature only and have no effect here (MAT's generator leaves them at their defaults)."""

    def __init__(
        self,
        dim,
        input_resolution,
        depth,
        num_heads,
        window_size,
        down_ratio=1,
        mlp_ratio=2.0,
        downsample=None,
        **_unused,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.downsample = downsample
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim,
                    input_resolution,
                    num_heads,
                    down_ratio=down_ratio,
                    window_size=window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                )
                for i in range(depth)
            ]
        )
        self.conv = Conv2dLayerPartial(dim, dim, kernel_size=3, activation="lrelu")

    def forward(self, x, x_size, mask=None):
        if self.downsample is not None:
            x, x_size, mask = self.downsample(x, x_size, mask)
        identity = x
        for block in self.blocks:
            x, mask = block(x, x_size, mask)
        if mask is not None:
            mask = token2feature(mask, x_size)
        x, mask = self.conv(token2feature(x, x_size), mask)
        x = feature2token(x) + identity
        if mask is not None:
            mask = feature2token(mask)
        return x, x_size, mask
