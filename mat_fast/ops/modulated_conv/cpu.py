"""Modulated convolution for the 'cpu' backend: channels_last activations, no grouped conv.

The reference runs all samples as one grouped convolution over ``x.view(1, B*Cin, H, W)``,
which needs NCHW memory. Here:

* B = 1: the modulated weights are an ordinary (Cout, Cin, k, k) convolution;
* B > 1: the style scales the input channels instead of the weights and demodulation scales
  the output channels (StyleGAN2's non-fused form; equal up to float rounding), so every
  sample shares one weight and the batch stays one channels_last convolution.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..resample.cpu import conv2d_resample_cpu

__all__ = ["modulated_conv2d_cpu"]


def modulated_conv2d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Same contract as :func:`~mat_fast.ops.modulated_conv.reference.modulated_conv2d_reference`;
    the result is channels_last."""
    batch, in_channels = x.shape[:2]
    out_channels = weight.shape[1]
    w = weight[0]  # (Cout, Cin, k, k)
    dcoefs = None
    # Demodulation coefficients in fp32 at least (fp64 stays fp64): in fp16 the squares
    # underflow for small styles and their sums overflow for large ones.
    work = torch.promote_types(x.dtype, torch.float32)
    if demodulate:  # (B, Cout): 1 / ||w * style|| per output filter
        ww = w.to(work).square().sum(dim=[2, 3])  # (Cout, Cin)
        dcoefs = (styles.to(work).square() @ ww.t() + 1e-8).rsqrt()
    if batch == 1:
        # Style and demodulation in one pass over the weights (not one copy each).
        scale = styles.to(work).reshape(1, in_channels)
        if dcoefs is not None:
            scale = dcoefs.reshape(out_channels, 1) * scale  # (Cout, Cin)
        w = (w.to(work) * scale[..., None, None]).to(x.dtype)
        return conv2d_resample_cpu(x, w, resample_filter, up=up, padding=padding)
    dcoefs = dcoefs.to(x.dtype) if dcoefs is not None else None
    x = x * styles.to(x.dtype).reshape(batch, in_channels, 1, 1)
    out = conv2d_resample_cpu(x, w, resample_filter, up=up, padding=padding)
    if dcoefs is not None:
        dcoefs = dcoefs.reshape(batch, out_channels, 1, 1)
        # In place on the fresh conv output, unless autograd needs that output.
        out = out * dcoefs if torch.is_grad_enabled() and out.requires_grad else out.mul_(dcoefs)
    return out
