"""Comparisons of kernel outputs with their reference twins (shared by the op tests)."""

from __future__ import annotations

import torch

#: Dtypes and memory layouts the CPU fast paths are checked in.
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]


def rel_err(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.double(), e.double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))


def check(fast_fn, ref_fn, inputs, dtype, what):
    """fast(inputs in dtype) vs ref(inputs in fp32), with flash-attention's low-precision rule."""
    low = [t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs]
    ref = ref_fn(*inputs)
    out = fast_fn(*low)
    assert out.dtype == dtype and out.shape == ref.shape, what
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    if dtype == torch.float32:
        assert_close_verbose(out, ref, rtol=1e-5, what=what)
    else:
        ref_low = ref_fn(*low)
        assert rel_err(out, ref) <= 2 * rel_err(ref_low, ref) + 2e-3, what


def layout(x, name):
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x


def assert_finite(t: torch.Tensor, what: str):
    bad = ~torch.isfinite(t)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {t.numel()} elements not finite "
        f"(unwritten?), first at {bad.nonzero()[:5].tolist()}"
    )


def assert_close_verbose(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, what: str = ""
):
    """Relative check scaled by the reference's magnitude, with a readable failure report."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, e = actual.double(), expected.double()
    scale = e.abs().max().clamp_min(1e-30)
    diff = (a - e).abs()
    bad = diff > rtol * scale
    if bad.any() or not torch.isfinite(a).all():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ by more than "
            f"{rtol:g} x max|ref| = {rtol * float(scale):.3g}; max diff {float(diff.max()):.3g}; "
            f"first at {idx}; finite={bool(torch.isfinite(a).all())}"
        )


def assert_lowp_close(
    actual: torch.Tensor, ref_lowp: torch.Tensor, ref32: torch.Tensor, what: str, floor: float
):
    """flash-attention's rule for half-precision kernels: max error vs the fp32 reference at
    most 2x the reference's own low-precision error, plus ``floor`` x max|ref| for values
    where both round alike. Where the low-precision reference itself is non-finite it
    counts as exact, so the kernel must be within the floor there."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = float(ref32.abs().max())
    err = float((actual.double() - ref32.double()).abs().max())
    ref_err = float((ref_lowp.double() - ref32.double()).nan_to_num(0, 0, 0).abs().max())
    assert err <= 2 * ref_err + floor * scale, (
        f"{what}: max error {err:.3g} vs fp32 exceeds 2 x reference's {ref_err:.3g} + {floor * scale:.3g}"
    )
