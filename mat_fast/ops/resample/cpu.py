"""FIR resampling and resampled convolution for the 'cpu' backend.

Same numbers as :mod:`.reference` (up to float rounding), arranged for oneDNN on CPU:

* activations in channels_last: oneDNN's convolutions, transposed convolutions and above
  all its depthwise convolutions (the FIR) are 1.5-4x faster on NHWC than on NCHW, and a
  channels_last feature map flattens to contiguous (B, H*W, C) tokens for free;
* the FIR's zero padding is the convolution's own padding (no padded copy of a 100-200 MB
  activation) and downsampling is the convolution's stride (no discarded outputs);
* except where autograd records a convolution for a backward (training): oneDNN's NHWC
  backward of a dense convolution is 1.6-2.8x slower than its NCHW one (fp32, 3x3, 128-512
  channels at 256-64 px, on a 2-core AMD EPYC), which costs more than the NHWC forward saves
  (1.0-1.6x). There the dense convolutions take NCHW and only the depthwise FIR, faster on
  NHWC in both directions, runs channels_last (:func:`conv2d_resample_cpu`).

Zero-insertion upsampling (``up > 1`` in :func:`upfirdn2d_cpu`) runs the reference: in MAT
only the 3-channel image skips of the decoder take it.

Half precision on CPUs without oneDNN's bf16/fp16 kernels (no AVX512-BF16/AMX: most AMD
and older Intel CPUs): torch falls back to generic half convolutions there, 5-300x slower
than fp32 (a 180-channel 3x3 conv at 64x64: 0.27-9 s in bf16 vs 0.05 s in fp32 on one
core; a 256 generator forward took 110 s in bf16 vs ~1 s in fp32). So on such CPUs the
convolutions widen their half operands to fp32 (exact), compute in fp32 and round the
result back to the input's dtype once; activations between layers stay half, so memory
stays half's. That is at least as accurate as a native half kernel, which accumulates in
fp32 too. Under CPU autocast to such a dtype (``mat-fast train --precision bf16``) autocast
would cast the operands and call torch's half kernel itself; here the operands are rounded
to that dtype as autocast would, and the convolution runs in fp32 with autocast off, its
result rounded back: autocast's numbers (up to fp32 summation order) without the slow
kernel.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .fir import autocast_dtype, depthwise_fir
from .reference import Padding, conv2d_resample_with, padding_per_side, upfirdn2d_reference

__all__ = ["conv2d_resample_cpu", "half_convolutions_in_fp32", "upfirdn2d_cpu"]


@functools.lru_cache(maxsize=None)
def half_convolutions_in_fp32(dtype: torch.dtype) -> bool:
    """Whether this CPU's convolutions in ``dtype`` run widened to fp32 (see the module
    docstring): for bf16/fp16 when oneDNN has no fast kernel for them on this CPU."""
    probes = {
        torch.bfloat16: "_is_mkldnn_bf16_supported",
        torch.float16: "_is_mkldnn_fp16_supported",
    }
    if dtype not in probes:
        return False
    probe = getattr(torch.ops.mkldnn, probes[dtype], None)
    if probe is None:  # an older or newer torch without the probe: keep its own kernels
        return False
    return not bool(probe())


def _autocast_widened_dtype() -> Optional[torch.dtype]:
    """The half dtype CPU autocast runs convolutions in, where this CPU widens them (see
    the module docstring); else None."""
    dtype = autocast_dtype("cpu")
    return dtype if dtype is not None and half_convolutions_in_fp32(dtype) else None


def _widening_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The half dtype a convolution of ``x`` computes in fp32 and rounds back to: autocast's
    where autocast is on and widened, else x's own where widened; None: no widening."""
    return _autocast_widened_dtype() or (x.dtype if half_convolutions_in_fp32(x.dtype) else None)


def _in_fp32(fn: Callable[..., torch.Tensor], dtype: torch.dtype, *args) -> torch.Tensor:
    """``fn`` on its floating operands rounded to ``dtype`` (what a half kernel, or autocast,
    is fed) and widened to fp32 (exact), run with autocast off, the result rounded back to
    ``dtype`` once."""
    wide = [
        a.to(dtype).float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args
    ]
    with torch.autocast("cpu", enabled=False):
        return fn(*wide).to(dtype)


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
    dtype = _widening_dtype(x)
    if dtype is not None:
        return _in_fp32(upfirdn2d_cpu, dtype, x, f, up, down, padding, flip_filter, gain)
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
    activations (converted here if needed) with :func:`upfirdn2d_cpu` as the FIR; NCHW
    where autograd records it for a backward (see the module docstring)."""
    dtype = _widening_dtype(x)
    if dtype is not None:
        return _in_fp32(conv2d_resample_cpu, dtype, x, w, f, up, down, padding, groups)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        # a backward follows: NCHW for the dense convolutions (see the module docstring)
        return conv2d_resample_with(
            _fir_nchw_result, x.contiguous(), w, f, up, down, padding, groups
        )
    x = x.contiguous(memory_format=torch.channels_last)
    return conv2d_resample_with(upfirdn2d_cpu, x, w, f, up, down, padding, groups)


def _fir_nchw_result(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """:func:`upfirdn2d_cpu` (channels_last inside) with its result made NCHW for the dense
    convolution that takes it in training."""
    return upfirdn2d_cpu(x, f, up, down, padding, flip_filter, gain).contiguous()
