"""FIR resampling and resampled convolution: the reference against definitions written
from scratch (loops, the generic pad/upsample/filter chain), and the 'cpu' backend's
channels_last arrangement (depthwise FIR, conv padding/stride instead of pad/slice) against
the reference, with the backend a parametrised axis (only ``cpu`` has resampling kernels;
the other backends run the reference).

Tolerance: fp32 within 1e-5 of max|ref| (the same arithmetic in another order); bf16/fp16
within 2x the reference's own low-precision error against fp32, plus a small floor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mat_fast.ops.resample import cpu as resample_cpu
from mat_fast.ops.resample.reference import (
    conv2d_resample_reference,
    setup_filter,
    upfirdn2d_reference,
)

from ..helpers.asserts import DTYPES, LAYOUTS, assert_close_verbose, check, layout
from ..helpers.backends import CPU

# The fast kernels of each backend that has them (Triton and CUDA run the reference here).
UPFIRDN2D = {"cpu": resample_cpu.upfirdn2d_cpu}
CONV2D_RESAMPLE = {"cpu": resample_cpu.conv2d_resample_cpu}

# ---------------------------------------------------------------------------------------
# Resampling

UPFIRDN_CASES = [
    dict(padding=2),  # MAT's blur before a stride-2 conv
    dict(padding=1, gain=4),  # MAT's blur after a transposed conv
    dict(padding=[1, 2, 0, 3]),  # asymmetric
    dict(padding=[-1, 2, 1, -2]),  # negative = crop
    dict(down=2, padding=[2, 1, 2, 1]),  # downsampling by stride
    dict(padding=1, flip_filter=True),
    dict(up=2, padding=[2, 1, 2, 1], gain=4),  # zero insertion (runs the reference)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=str)
@pytest.mark.parametrize("backend", [CPU])
def test_upfirdn2d_matches_reference(backend, case, fmt, dtype):
    g = torch.Generator().manual_seed(0)
    x = layout(torch.randn(2, 5, 17, 19, generator=g), fmt)  # batch > 1, odd sizes
    f = setup_filter()
    check(
        lambda x: UPFIRDN2D[backend](x, f, **case),
        lambda x: upfirdn2d_reference(x, f, **case),
        [x],
        dtype,
        f"upfirdn2d {case}",
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize(
    "kernel,up,down,groups",
    [
        (3, 1, 1, 1),
        (3, 2, 1, 1),
        (3, 1, 2, 1),  # MAT's 3x3 convs
        (1, 1, 1, 1),
        (1, 2, 1, 1),
        (1, 1, 2, 1),  # 1x1 (ToRGB, EncFromRGB, discriminator skip)
        (3, 2, 1, 2),
        (3, 1, 2, 2),  # grouped
    ],
)
@pytest.mark.parametrize("backend", [CPU])
def test_conv2d_resample_matches_reference(backend, kernel, up, down, groups, fmt, dtype):
    g = torch.Generator().manual_seed(1)
    x = layout(torch.randn(2, 6, 13, 11, generator=g), fmt)
    w = torch.randn(4, 6 // groups, kernel, kernel, generator=g) * 0.3
    f = setup_filter()
    args = dict(up=up, down=down, padding=kernel // 2, groups=groups)
    out = CONV2D_RESAMPLE[backend](x, w, f, **args)
    assert out.is_contiguous(memory_format=torch.channels_last) or up > 1 and kernel == 1
    check(
        lambda x, w: CONV2D_RESAMPLE[backend](x, w, f, **args),
        lambda x, w: conv2d_resample_reference(x, w, f, **args),
        [x, w],
        dtype,
        f"conv2d_resample k{kernel} up{up} down{down} g{groups}",
    )


@pytest.mark.parametrize("kernel,up,down", [(3, 1, 1), (3, 2, 1), (3, 1, 2), (1, 1, 2), (1, 2, 1)])
def test_cpu_conv2d_resample_runs_nchw_where_a_backward_follows(kernel, up, down):
    """Inference keeps channels_last; where autograd records the op (training), the dense
    convolutions take NCHW instead (oneDNN's NHWC backward is slower: resample/cpu.py), with
    the same values."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 12, 10, generator=g).to(memory_format=torch.channels_last)
    w = torch.randn(4, 6, kernel, kernel, generator=g) * 0.3
    args = dict(f=setup_filter(), up=up, down=down, padding=kernel // 2)
    with torch.no_grad():
        inference = resample_cpu.conv2d_resample_cpu(x, w, **args)
    training = resample_cpu.conv2d_resample_cpu(x.clone().requires_grad_(), w, **args)
    if not (kernel == 1 and up > 1):  # (that path ends in the FIR's zero-insertion reference)
        assert inference.is_contiguous(memory_format=torch.channels_last)
    assert training.is_contiguous() and training.requires_grad
    assert_close_verbose(training, inference, rtol=1e-5, what="training vs inference layout")


def upfirdn_brute(x, f, up, down, p):
    """scipy-style upfirdn by explicit loops (float64): zero-insert, pad, convolve, keep."""
    x, f = x.double(), f.double()
    B, C, H, W = x.shape
    px0, px1, py0, py1 = p
    u = torch.zeros(B, C, H * up, W * up, dtype=torch.float64)
    u[:, :, ::up, ::up] = x
    full = torch.zeros(
        B,
        C,
        H * up + max(py0, 0) + max(py1, 0),
        W * up + max(px0, 0) + max(px1, 0),
        dtype=torch.float64,
    )
    full[:, :, max(py0, 0) : max(py0, 0) + H * up, max(px0, 0) : max(px0, 0) + W * up] = u
    full = full[
        :,
        :,
        max(-py0, 0) : full.shape[2] - max(-py1, 0),
        max(-px0, 0) : full.shape[3] - max(-px1, 0),
    ]
    fh, fw = f.shape
    oh, ow = full.shape[2] - fh + 1, full.shape[3] - fw + 1
    out = torch.zeros(B, C, oh, ow, dtype=torch.float64)
    for i in range(oh):
        for j in range(ow):
            patch = full[:, :, i : i + fh, j : j + fw]
            out[:, :, i, j] = (patch * f.flip([0, 1])).sum(dim=(2, 3))  # true convolution
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize(
    "up,down,pad",
    [(1, 1, (1, 2, 1, 2)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)), (2, 1, (-1, 0, 1, -2))],
)
def test_upfirdn2d_matches_loops(up, down, pad):
    g = torch.Generator().manual_seed(up * 10 + down)
    x = torch.randn(1, 2, 6, 5, generator=g)
    f = torch.rand(4, 4, generator=g)  # asymmetric, so a flip error shows
    out = upfirdn2d_reference(x, f, up=up, down=down, padding=pad)
    assert_close_verbose(out, upfirdn_brute(x, f, up, down, pad), rtol=1e-6, what="upfirdn2d")


def test_filter_is_normalised_outer_product():
    f = setup_filter([1, 3, 3, 1])
    assert torch.allclose(
        f, torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    )


@pytest.mark.parametrize(
    "k,up,down,groups",
    [(3, 1, 2, 1), (1, 1, 2, 1), (3, 2, 1, 1), (3, 2, 1, 2), (1, 2, 1, 1), (3, 1, 1, 2)],
)
def test_conv2d_resample_fast_paths_equal_generic_chain(k, up, down, groups):
    """Each fast path (filter before/after, transposed conv) equals the definition: pad +
    upsample + filter, then convolve, then filter + downsample."""
    g = torch.Generator().manual_seed(k * 100 + up * 10 + down)
    x = torch.randn(2, 4, 8, 8, generator=g)
    w = torch.randn(6, 4 // groups, k, k, generator=g)
    f = setup_filter([1, 3, 3, 1])
    out = conv2d_resample_reference(x, w, f, up=up, down=down, padding=k // 2, groups=groups)
    p = k // 2
    if up > 1:
        p0, p1 = p + (4 + up - 1) // 2, p + (4 - up) // 2
        y = upfirdn2d_reference(x, f, up=up, padding=[p0, p1, p0, p1], gain=up * up)
        expected = F.conv2d(y, w, groups=groups)
    else:
        p0, p1 = (p + (4 - down + 1) // 2, p + (4 - down) // 2) if down > 1 else (p, p)
        y = upfirdn2d_reference(x, None, padding=[p0, p1, p0, p1])
        expected = F.conv2d(y, w, groups=groups)
        if down > 1:
            expected = upfirdn2d_reference(expected, f, down=down)
    assert_close_verbose(out, expected, rtol=1e-5, what="conv2d_resample")
    assert out.shape[-1] == 8 * up // down
