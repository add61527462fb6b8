"""FIR resampling and resampled convolution in plain PyTorch (upstream semantics).

MAT inherits StyleGAN2's resampling: a separable low-pass filter ([1, 3, 3, 1], normalised)
is applied around every up/down-sampling so that strided convolutions do not alias.

``upfirdn2d`` = upsample by zero insertion, pad (negative = crop), convolve with the FIR
filter, keep every ``down``-th pixel. ``conv2d_resample`` composes that with a convolution,
choosing the same order of operations as upstream so that numbers agree to float rounding.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .fir import depthwise_fir

Padding = Union[int, Sequence[int]]


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), device=None) -> torch.Tensor:
    """The 2-D filter used by MAT: outer product of ``taps`` normalised to sum 1 (float32),
    on ``device`` (default: torch's current default device)."""
    f = torch.as_tensor(taps, dtype=torch.float32, device=device)
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f / f.sum()


def padding_per_side(padding: Padding) -> Tuple[int, int, int, int]:
    """(x0, x1, y0, y1) from an int, [x, y] or [x0, x1, y0, y1]."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return tuple(padding)  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1]; got {padding!r}")


def upfirdn2d_reference(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample each channel of ``x`` (B, C, H, W).

    ``f`` is a 2-D float32 filter (or None for identity); ``padding`` is applied after
    upsampling; ``gain`` scales the filter (upsampling by ``up`` uses ``gain=up**2`` to keep
    the signal's magnitude).
    """
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    batch, channels, height, width = x.shape
    x0, x1, y0, y1 = padding_per_side(padding)

    if up > 1:  # zero insertion: one sample followed by up-1 zeros, both axes
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)

    # Positive padding pads with zeros, negative padding crops.
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]

    # conv2d is a correlation; a true convolution flips the filter.
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    weight = f[None, None].repeat(channels, 1, 1, 1)  # depthwise: one copy per channel
    x = depthwise_fir(x, weight, 1, (0, 0))  # F.conv2d(x, weight, groups=channels), see fir.py
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d_reference(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x (by default) FIR upsampling whose output is exactly ``up`` times the input."""
    fw = f.shape[-1]
    p = [(fw + up - 1) // 2, (fw - up) // 2] * 2
    return upfirdn2d_reference(x, f, up=up, padding=[p[0], p[1], p[0], p[1]], gain=up * up)


def conv2d_resample_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Convolution of ``x`` (B, Cin, H, W) with ``w`` (Cout, Cin/groups, kh, kw), fused with
    FIR up- or down-sampling by ``f``. ``padding`` is in terms of the upsampled image.

    The filter is applied where it is cheapest: before a strided conv when downsampling,
    after a transposed conv when upsampling, around a 1x1 conv on the small side.
    """
    return conv2d_resample_with(upfirdn2d_reference, x, w, f, up, down, padding, groups)


def conv2d_resample_with(
    upfirdn2d,
    x: torch.Tensor,
    w: torch.Tensor,
    f: Optional[torch.Tensor],
    up: int,
    down: int,
    padding: int,
    groups: int,
) -> torch.Tensor:
    """:func:`conv2d_resample_reference`'s order of operations around a given ``upfirdn2d``
    (the fast backends pass their own FIR; the convolutions are torch's either way)."""
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample supports up or down sampling, not both")
    out_channels, in_per_group, kh, kw = w.shape
    fw = 1 if f is None else f.shape[-1]
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0, py1 = px0, px1
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0, py1 = px0, px1

    if kh == 1 and kw == 1 and down > 1:  # 1x1: filter+downsample first, then convolve
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, groups=groups)

    if kh == 1 and kw == 1 and up > 1:  # 1x1: convolve at low resolution, then upsample
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)

    if down > 1:  # blur, then strided convolution
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, stride=down, groups=groups)

    if up > 1:  # transposed strided convolution, then blur
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw)
            w = w.transpose(1, 2).reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        # conv_transpose2d is already a true convolution, so the correlation weights are
        # flipped to keep conv2d_resample a correlation overall.
        x = F.conv_transpose2d(x, w.flip([2, 3]), stride=up, padding=[pyt, pxt], groups=groups)
        return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)

    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=[py0, px0], groups=groups)
    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1])
    return F.conv2d(x, w, groups=groups)
