"""The partial-convolution reference twins on cases checked by hand, against upstream's
composition (bias_act, then the ratio), and the public epilogue's argument checks. Every
backend's kernels are checked against these twins in test_partial_conv.py."""

from __future__ import annotations

import math

import pytest
import torch

from mat_fast import ops
from mat_fast.ops.bias_act.reference import bias_act_reference
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_fused_reference,
    partial_conv_mask_reference,
)

from ..helpers.partial_conv_cases import ALPHA, GAIN, epilogue_reference, make_mask, make_x


def test_reference_mask_single_valid_pixel():
    mask = torch.zeros(1, 1, 5, 5)
    mask[0, 0, 2, 2] = 1
    update, ratio = partial_conv_mask_reference(mask, 3, stride=1, padding=1)
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1
    assert torch.equal(update[0, 0], expected)
    assert torch.allclose(ratio[0, 0], expected * 9 / (1 + 1e-8))


def test_reference_mask_border_counts_and_stride():
    mask = torch.ones(1, 1, 4, 4)
    update, ratio = partial_conv_mask_reference(mask, 3, stride=2, padding=1)
    assert update.shape == (1, 1, 2, 2) and torch.equal(update, torch.ones_like(update))
    # top-left output sees a 2x2 valid corner (4 of 9 inputs), the others see 2x3 or 3x3
    assert torch.allclose(ratio[0, 0], torch.tensor([[9 / 4, 9 / 6], [9 / 6, 9 / 9]]), rtol=1e-6)


def test_reference_mask_nonbinary_clamps_update():
    mask = torch.full((1, 1, 3, 3), 0.05)
    update, ratio = partial_conv_mask_reference(mask, 3, stride=1, padding=1)
    assert math.isclose(update[0, 0, 1, 1].item(), 0.45, rel_tol=1e-6)  # 9 x 0.05, below 1
    assert math.isclose(ratio[0, 0, 1, 1].item(), 9 / 0.45 * 0.45, rel_tol=1e-5)


def test_reference_epilogue_clamps_before_the_ratio():
    # Upstream's partial conv multiplies the output of a clamped Conv2dLayer by the ratio.
    x = torch.tensor([3.0, -3.0, 0.5]).view(1, 3, 1, 1)
    ratio = torch.full((1, 1, 1, 1), 2.0)
    out = partial_conv_epilogue_reference(x, None, ratio, 1.0, 0.5, clamp=1.0)
    assert out.flatten().tolist() == [2.0, -2.0, 1.0]
    ref = bias_act_reference(x, None, act="lrelu", alpha=0.5, gain=1.0, clamp=1.0) * ratio
    assert torch.equal(out, ref)


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_reference_twins_are_upstreams_composition(clamp):
    mask = make_mask("nonbinary", 2, 13, 11, seed=30).cpu()
    x, bias = (t.cpu() for t in make_x(2, 6, 7, 6, seed=31))
    update, ratio = partial_conv_mask_reference(mask, 3, 2, 1)
    y = epilogue_reference(x, bias, ratio, GAIN, ALPHA, clamp)
    assert torch.equal(partial_conv_epilogue_reference(x, bias, ratio, GAIN, ALPHA, clamp), y)
    f_y, f_update = partial_conv_fused_reference(x, bias, mask, 3, 2, 1, GAIN, ALPHA, clamp)
    assert torch.equal(f_y, y) and torch.equal(f_update, update)


def test_public_epilogue_validates_shapes():
    x, ratio = torch.randn(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    with pytest.raises(ValueError, match="x must have shape"):
        ops.partial_conv_epilogue(x[0], None, ratio, 1.0, 0.2)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.partial_conv_epilogue(x, torch.zeros(4), ratio, 1.0, 0.2)
    with pytest.raises(ValueError, match="ratio must have shape"):
        ops.partial_conv_epilogue(x, None, torch.rand(2, 3, 4, 5), 1.0, 0.2)
    with pytest.raises(ValueError, match="ratio must have shape"):
        ops.partial_conv_epilogue(x, None, torch.rand(1, 1, 4, 5), 1.0, 0.2)
