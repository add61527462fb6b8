"""Shared cases of the partial-convolution tests: the fp32 reference compositions,
inputs (masks of every kind, NCHW and channels_last activations), tolerances and MAT's
geometries, and the fixture that runs the kernels in Triton's interpreter without a GPU.

Imported by test_partial_conv.py and test_partial_conv_fused.py (parity, every backend) and
test_partial_conv_triton_graph.py (custom-op plumbing, GPU-only shapes, the sm_90 build).
The Triton kernel module reads
``TRITON_INTERPRET`` once, when imported; it is imported here, at collection, under the
interpreter when no GPU is visible, and the variable is restored afterwards (set again by
the fixture only while the tests run, for the backend probe).
"""

from __future__ import annotations

import math

import pytest
import torch

from mat_fast.ops.bias_act.reference import bias_act_reference
from mat_fast.ops.partial_conv.reference import partial_conv_fused_reference

from .triton_interpreter import DEVICE, import_kernels, kernel_test_env
from .triton_interpreter import INTERPRET as _INTERPRET

pct = import_kernels("mat_fast.ops.partial_conv.triton")
GAIN = math.sqrt(2)  # MAT's lrelu layers: gain sqrt(2), slope 0.2
ALPHA = 0.2
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]

triton_env = kernel_test_env(pct)  # autouse in the modules that import it


def epilogue_reference(x, bias, ratio, gain, alpha, clamp=None):
    """Upstream's composition: the inner Conv2dLayer's bias_act (clamp included), times the
    ratio. Written from bias_act_reference so it does not depend on the twin under test."""
    return (
        bias_act_reference(x, bias, dim=1, act="lrelu", alpha=alpha, gain=gain, clamp=clamp) * ratio
    )


fused_reference = partial_conv_fused_reference  # checked against the composition below


def make_mask(kind, B, H, W, seed, dtype=torch.float32):
    """(B, 1, H, W) mask of one kind on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "valid":
        m = torch.ones(B, 1, H, W)
    elif kind == "hole":
        m = torch.zeros(B, 1, H, W)
    elif kind == "binary":  # random holes, plus a large hole so whole windows are empty
        m = (torch.rand(B, 1, H, W, generator=gen) > 0.4).float()
        m[..., : H // 2, : W // 2] = 0
    elif kind == "nonbinary":  # soft masks: sums that are neither integers nor in [0, 1] only.
        # Dyadic values, so every box sum is exact in any order (sums near 0 are otherwise
        # ill-conditioned: k*k * S / (S + 1e-8) swings between 0 and k*k on rounding noise).
        values = torch.tensor([-0.5, 0.0, 0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5])
        m = values[torch.randint(0, len(values), (B, 1, H, W), generator=gen)]
    else:
        raise ValueError(kind)
    return m.to(device=DEVICE, dtype=dtype)


def make_x(B, C, H, W, seed, dtype=torch.float32, layout="nchw"):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, C, H, W, generator=gen) * 2).to(device=DEVICE, dtype=dtype)
    bias = (torch.randn(C, generator=gen) * 0.5).to(device=DEVICE, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    return x, bias


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def assert_rounded_from(actual, ref, what):
    """``actual`` is ``ref`` (fp32/fp64) rounded to actual's dtype: bit for bit, except that
    Triton's interpreter truncates fp32 -> bf16 (GPUs round to nearest even): 1 ulp there."""
    if _INTERPRET and actual.dtype == torch.bfloat16:
        ulp = torch.finfo(torch.bfloat16).eps * ref.abs().double()
        diff = (actual.double() - ref.double()).abs()
        assert (diff <= ulp).all(), (
            f"{what}: {int((diff > ulp).sum())} values off by more than 1 bf16 ulp"
        )
    else:
        assert torch.equal(actual, ref.to(actual.dtype)), what


FLOORS = {torch.float16: 1e-3, torch.bfloat16: 8e-3}

# (kernel, stride, padding, H, W): MAT's partial convs are 3x3 stride 1 (conv_first, every
# stage's conv) and 3x3 stride 2 (enc_conv, PatchMerging), both padding 1.
GEOMETRIES = [
    pytest.param((3, 1, 1, 16, 16), id="k3s1p1-16x16"),  # MAT: same-size partial conv
    pytest.param((3, 2, 1, 16, 16), id="k3s2p1-16x16"),  # MAT: downsampling partial conv
    pytest.param((3, 1, 1, 13, 11), id="k3s1p1-13x11"),  # odd, non-square
    pytest.param((3, 2, 1, 13, 11), id="k3s2p1-13x11"),  # odd sizes at stride 2
    pytest.param((4, 2, 0, 13, 11), id="k4s2p0-13x11"),  # even kernel, no padding (generic)
    pytest.param((5, 1, 2, 9, 7), id="k5s1p2-9x7"),  # wider window (generic)
]
MASKS = ["valid", "hole", "binary", "nonbinary"]


def run_fused(fn, x, bias, mask, geo, clamp, grad_seed=2):
    x = x.detach().clone().requires_grad_(True)
    bias = None if bias is None else bias.detach().clone().requires_grad_(True)
    y, update = fn(x, bias, mask, *geo, GAIN, ALPHA, clamp)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y)
    inputs = [t for t in (x, bias) if t is not None]
    return y.detach(), update, torch.autograd.grad(y, inputs, g)
