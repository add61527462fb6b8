"""Partial convolution (mask update, epilogue, fused) on every backend against the reference."""

from __future__ import annotations

import math

import pytest
import torch

from mat_fast import ops
from mat_fast.ops.bias_act.reference import bias_act_reference
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_mask_reference,
)

from ..helpers.asserts import DTYPES, LAYOUTS, assert_close_verbose, layout, rel_err


def test_partial_conv_mask_single_valid_pixel():
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 1
    update, ratio = partial_conv_mask_reference(mask, 3, stride=1, padding=1)
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1
    assert torch.equal(update[0, 0], expected)
    assert torch.allclose(ratio[0, 0], expected * 9 / (1 + 1e-8))


def test_partial_conv_mask_border_counts_and_stride():
    mask = torch.ones(1, 1, 4, 4)
    update, ratio = partial_conv_mask_reference(mask, 3, stride=2, padding=1)
    assert update.shape == (1, 1, 2, 2) and torch.equal(update, torch.ones_like(update))
    # top-left output sees a 2x2 valid corner (4 of 9 inputs), the others see 2x3 or 3x3
    assert torch.allclose(ratio[0, 0], torch.tensor([[9 / 4, 9 / 6], [9 / 6, 9 / 9]]), rtol=1e-6)


def test_partial_conv_mask_nonbinary_clamps_update():
    mask = torch.full((1, 1, 3, 3), 0.05)
    update, ratio = partial_conv_mask_reference(mask, 3, stride=1, padding=1)
    assert math.isclose(update[0, 0, 1, 1].item(), 0.45, rel_tol=1e-6)  # 9 x 0.05, below 1
    assert math.isclose(ratio[0, 0, 1, 1].item(), 9 / 0.45 * 0.45, rel_tol=1e-5)


def test_partial_conv_epilogue_validates_shapes():
    x, ratio = torch.randn(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    with pytest.raises(ValueError, match="x must have shape"):
        ops.partial_conv_epilogue(x[0], None, ratio, 1.0, 0.2)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.partial_conv_epilogue(x, torch.zeros(4), ratio, 1.0, 0.2)
    with pytest.raises(ValueError, match="ratio must have shape"):
        ops.partial_conv_epilogue(x, None, torch.rand(2, 3, 4, 5), 1.0, 0.2)
    with pytest.raises(ValueError, match="ratio must have shape"):
        ops.partial_conv_epilogue(x, None, torch.rand(1, 1, 4, 5), 1.0, 0.2)


def test_partial_conv_epilogue_reference_clamps_before_the_ratio():
    # Upstream's partial conv multiplies the output of a clamped Conv2dLayer by the ratio.
    x = torch.tensor([3.0, -3.0, 0.5]).view(1, 3, 1, 1)
    ratio = torch.full((1, 1, 1, 1), 2.0)
    out = partial_conv_epilogue_reference(x, None, ratio, 1.0, 0.5, clamp=1.0)
    assert out.flatten().tolist() == [2.0, -2.0, 1.0]
    ref = bias_act_reference(x, None, act="lrelu", alpha=0.5, gain=1.0, clamp=1.0) * ratio
    assert torch.equal(out, ref)


@pytest.mark.parametrize("clamp", [None, 0.7])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["functional", "inplace"])
def test_partial_conv_epilogue_cpu_matches_reference(native_ops, inplace, dtype, fmt, clamp):
    g = torch.Generator().manual_seed(6)
    x = layout(torch.randn(2, 5, 7, 9, generator=g), fmt)
    bias = torch.randn(5, generator=g)
    ratio = torch.rand(2, 1, 7, 9, generator=g) * 2  # non-binary
    ref = partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2, clamp)
    low = x.to(dtype)
    before = low.clone()
    out = ops.partial_conv_epilogue(
        low, bias.to(dtype), ratio.to(dtype), 1.41, 0.2, clamp, inplace=inplace, backend_name="cpu"
    )
    if not inplace:
        assert torch.equal(low, before), "the functional op overwrote its input"
    if fmt == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    ref_low = partial_conv_epilogue_reference(
        low, bias.to(dtype), ratio.to(dtype), 1.41, 0.2, clamp
    )
    tol = 1e-6 if dtype == torch.float32 else 2 * rel_err(ref_low, ref) + 2e-3
    assert out.dtype == dtype and rel_err(out, ref) <= tol


def test_partial_conv_epilogue_inplace_keeps_autograd_inputs(native_ops):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 5, 5, generator=g, requires_grad=True)
    ratio = torch.rand(1, 1, 5, 5, generator=g)
    out = ops.partial_conv_epilogue(x, None, ratio, 1.41, 0.2, inplace=True, backend_name="cpu")
    (grad,) = torch.autograd.grad(out.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(
        partial_conv_epilogue_reference(x2, None, ratio, 1.41, 0.2).sum(), x2
    )
    assert_close_verbose(grad, ref, rtol=1e-6, what="grad")
