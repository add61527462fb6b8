"""FIR resampling and resampled convolution for the 'cpu' backend.

Same numbers as :mod:`.reference` (up to float rounding), arranged for oneDNN on CPU:

* activations in channels_last: oneDNN's convolutions, transposed convolutions and above
  all its depthwise convolutions (the FIR) are 1.5-4x faster on NHWC than on NCHW, and a
  channels_last feature map flattens to contiguous (B, H*W, C) tokens for free;
* the FIR's zero padding is the convolution's own padding (no padded copy of a 100-200 MB
  activation) and downsampling is the convolution's stride (no discarded outputs).

Zero-insertion upsampling (``up > 1`` in :func:`upfirdn2d_cpu`) runs the reference: in MAT
only the 3-channel image skips of the decoder take it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .fir import depthwise_fir
from .reference import Padding, conv2d_resample_with, padding_per_side, upfirdn2d_reference

__all__ = ["conv2d_resample_cpu", "upfirdn2d_cpu"]


def upfirdn2d_cpu(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """:func:`~mat_fast.ops.resample.reference.upfirdn2d_reference` as one depthwise,
    padded, strided convolution over a channels_last ``x``; the result is channels_last."""
    if up > 1:
        return upfirdn2d_reference(x, f, up, down, padding, flip_filter, gain)
    x = x.contiguous(memory_format=torch.channels_last)
    x0, x1, y0, y1 = padding_per_side(padding)
    if min(x0, x1, y0, y1) < 0:  # negative padding crops: a view
        x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
        x0, x1, y0, y1 = max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)
    if f is None:  # padding (and downsampling) only
        x = F.pad(x, [x0, x1, y0, y1])
        return x[:, :, ::down, ::down] if down > 1 else x
    channels = x.shape[1]
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    weight = f[None, None].repeat(channels, 1, 1, 1)  # (C, 1, fh, fw): depthwise
    if x0 != x1 or y0 != y1:  # asymmetric: the conv's padding is symmetric
        x = F.pad(x, [x0, x1, y0, y1])
        x0 = y0 = 0
    return depthwise_fir(x, weight, down, (y0, x0))


def conv2d_resample_cpu(
    x: torch.Tensor,
    w: torch.Tensor,
    f: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """:func:`~mat_fast.ops.resample.reference.conv2d_resample_reference` on channels_last
    activations (converted here if needed) with :func:`upfirdn2d_cpu` as the FIR."""
    x = x.contiguous(memory_format=torch.channels_last)
    return conv2d_resample_with(upfirdn2d_cpu, x, w, f, up, down, padding, groups)
