"""Modulated (style) convolution with demodulation, in plain PyTorch (upstream semantics).

StyleGAN2's trick: scale the conv weight per sample by the style, then normalise each output
filter to unit norm ("demodulation") instead of normalising activations. Upstream runs it as
one grouped convolution with a per-sample copy of the weights.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..resample.reference import conv2d_resample_reference


def modulated_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """x (B, Cin, H, W), weight (1, Cout, Cin, k, k) with its gain applied, styles (B, Cin)."""
    batch, in_channels, height, width = x.shape
    out_channels, kernel = weight.shape[1], weight.shape[-1]
    # Half inputs: weights are modulated and demodulated in fp32 (in fp16 the squares
    # underflow for small styles and their sum overflows for large ones), then cast once;
    # demodulated filters have unit norm, safely in range. fp32 runs exactly as upstream.
    half = x.dtype in (torch.float16, torch.bfloat16)
    w = (
        weight.float() * styles.float().view(batch, 1, in_channels, 1, 1)
        if half
        else weight * styles.view(batch, 1, in_channels, 1, 1)
    )  # (B, Cout, Cin, k, k)
    if demodulate:
        dcoefs = (w.pow(2).sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # (B, Cout)
        w = w * dcoefs.view(batch, out_channels, 1, 1, 1)
    w = w.to(x.dtype).view(batch * out_channels, in_channels, kernel, kernel)
    x = x.reshape(1, batch * in_channels, height, width)  # copies unless NCHW-contiguous
    x = conv2d_resample_reference(x, w, resample_filter, up=up, padding=padding, groups=batch)
    return x.view(batch, out_channels, *x.shape[2:])
