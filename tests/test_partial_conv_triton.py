"""Triton partial convolution (mask update, conv epilogue, both fused) against the reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: shapes are small
(20 channels, 16x16 and odd 13x11 maps). With a GPU the same tests run on CUDA, and the
``gpu``-marked ones add MAT's real shapes and inductor. One test compiles the kernels for
sm_90 (PTX and ptxas, no GPU needed), which catches what the interpreter lets through.

The kernel module reads ``TRITON_INTERPRET`` once, when imported; it is imported here, at
collection, under the interpreter when no GPU is visible, and the variable is restored
afterwards (set again by a fixture only while these tests run, for the backend probe).
"""

from __future__ import annotations

import math

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.ops.bias_act.reference import bias_act_reference
from mat_fast.ops.partial_conv.reference import (partial_conv_epilogue_reference,
                                                partial_conv_fused_reference, partial_conv_mask_reference)

from .conftest import assert_close_verbose
from .sm90_compile import compile_for_sm90
from .triton_interpreter import DEVICE, import_kernels
from .triton_interpreter import INTERPRET as _INTERPRET

pct = import_kernels("mat_fast.ops.partial_conv.triton")
GAIN = math.sqrt(2)  # MAT's lrelu layers: gain sqrt(2), slope 0.2
ALPHA = 0.2
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


@pytest.fixture(autouse=True)
def _triton_env(monkeypatch):
    if _INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(pct, "POISON_OUTPUTS", True)  # unwritten outputs are NaN
    yield


# ---------------------------------------------------------------------------------------
# References (fp32 twins) and inputs


def epilogue_reference(x, bias, ratio, gain, alpha, clamp=None):
    """Upstream's composition: the inner Conv2dLayer's bias_act (clamp included), times the
    ratio. Written from bias_act_reference so it does not depend on the twin under test."""
    return bias_act_reference(x, bias, dim=1, act="lrelu", alpha=alpha, gain=gain, clamp=clamp) * ratio


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


def assert_lowp_close(actual, ref_lowp, ref32, what, floor):
    """flash-attention's rule: error vs fp32 at most 2x the reference's own low-precision
    error, plus ``floor`` x max|ref| for values where both round alike."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = float(ref32.abs().max())
    err = float((actual.double() - ref32.double()).abs().max())
    ref_err = float((ref_lowp.double() - ref32.double()).nan_to_num(0, 0, 0).abs().max())
    assert err <= 2 * ref_err + floor * scale, (
        f"{what}: max error {err:.3g} vs fp32 exceeds 2 x reference's {ref_err:.3g} + {floor * scale:.3g}")


def assert_rounded_from(actual, ref, what):
    """``actual`` is ``ref`` (fp32/fp64) rounded to actual's dtype: bit for bit, except that
    Triton's interpreter truncates fp32 -> bf16 (GPUs round to nearest even): 1 ulp there."""
    if _INTERPRET and actual.dtype == torch.bfloat16:
        ulp = torch.finfo(torch.bfloat16).eps * ref.abs().double()
        diff = (actual.double() - ref.double()).abs()
        assert (diff <= ulp).all(), f"{what}: {int((diff > ulp).sum())} values off by more than 1 bf16 ulp"
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


# ---------------------------------------------------------------------------------------
# The reference twins themselves


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_reference_twins_are_upstreams_composition(clamp):
    mask = make_mask("nonbinary", 2, 13, 11, seed=30)
    x, bias = make_x(2, 6, 7, 6, seed=31)
    update, ratio = partial_conv_mask_reference(mask, 3, 2, 1)
    y = epilogue_reference(x, bias, ratio, GAIN, ALPHA, clamp)
    assert torch.equal(partial_conv_epilogue_reference(x, bias, ratio, GAIN, ALPHA, clamp), y)
    f_y, f_update = partial_conv_fused_reference(x, bias, mask, 3, 2, 1, GAIN, ALPHA, clamp)
    assert torch.equal(f_y, y) and torch.equal(f_update, update)


# ---------------------------------------------------------------------------------------
# Mask update


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_mask_update_matches_reference(geometry, mask_kind, dtype):
    k, s, p, H, W = geometry
    B = 2
    mask = make_mask(mask_kind, B, H, W, seed=H * W + k, dtype=dtype)
    update, ratio = pct.partial_conv_mask_triton(mask, k, s, p)
    # fp32 reference on the same values, rounded once to the mask's dtype
    r_update, r_ratio = partial_conv_mask_reference(mask if dtype == torch.float64 else mask.float(), k, s, p)
    shape = (B, 1, out_size(H, k, s, p), out_size(W, k, s, p))
    assert update.shape == shape and ratio.shape == shape
    assert update.dtype == dtype and ratio.dtype == dtype
    assert not update.requires_grad and not ratio.requires_grad
    # exact box sums: bit for bit the fp32 (fp64) reference rounded once to the mask's dtype
    assert_rounded_from(update, r_update, "update")
    assert_rounded_from(ratio, r_ratio, "ratio")
    if mask_kind == "hole":
        assert not update.any() and not ratio.any()


@pytest.mark.parametrize("mask_kind", ["binary", "nonbinary"])
def test_fp64_mask_sums_and_divides_in_fp64(mask_kind):
    mask = make_mask(mask_kind, 2, 13, 11, seed=36, dtype=torch.float64)
    update, ratio = pct.partial_conv_mask_triton(mask, 3, 2, 1)
    r_update, r_ratio = partial_conv_mask_reference(mask, 3, 2, 1)
    assert update.dtype == ratio.dtype == torch.float64
    assert torch.equal(update, r_update) and torch.equal(ratio, r_ratio)


def test_fp16_fully_hole_windows_give_zero_ratio():
    # 1e-8 underflows in fp16, so a box sum of 0 in fp16 gives k*k/0 * 0 = NaN; the kernel
    # sums and divides in fp32 and rounds once.
    mask = make_mask("binary", 1, 16, 16, seed=1, dtype=torch.float16)
    update, ratio = pct.partial_conv_mask_triton(mask, 3, 1, 1)
    assert torch.isfinite(ratio).all()
    empty = update == 0
    assert empty.any() and not ratio[empty].any()


def test_mask_any_strides_and_batch_one():
    mask = make_mask("binary", 1, 16, 24, seed=2).transpose(2, 3)  # (1, 1, 24, 16), non-contiguous
    assert not mask.is_contiguous()
    update, ratio = pct.partial_conv_mask_triton(mask, 3, 2, 1)
    r_update, r_ratio = partial_conv_mask_reference(mask.contiguous(), 3, 2, 1)
    assert torch.equal(update, r_update) and torch.equal(ratio, r_ratio)


# ---------------------------------------------------------------------------------------
# Epilogue


def run_epilogue(fn, x, bias, ratio, clamp, grad_seed=1):
    """Output and gradients of sum(y * g) w.r.t. x, bias (if any) and ratio."""
    x = x.detach().clone().requires_grad_(True)
    bias = None if bias is None else bias.detach().clone().requires_grad_(True)
    ratio = ratio.detach().clone().requires_grad_(True)
    y = fn(x, bias, ratio, GAIN, ALPHA, clamp)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y)
    inputs = [t for t in (x, bias, ratio) if t is not None]
    return y.detach(), torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("clamp", [None, 1.0], ids=["noclamp", "clamp1"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("B,H,W", [(1, 16, 16), (2, 13, 11)], ids=["b1-16x16", "b2-13x11"])
def test_epilogue_fp32_matches_reference(B, H, W, layout, with_bias, clamp):
    x, bias = make_x(B, 20, H, W, seed=3, layout=layout)
    bias = bias if with_bias else None
    _, ratio = partial_conv_mask_reference(make_mask("binary", B, H + 2, W + 2, seed=4), 3, 1, 0)
    y, grads = run_epilogue(pct.partial_conv_epilogue_triton, x, bias, ratio, clamp)
    r_y, r_grads = run_epilogue(epilogue_reference, x, bias, ratio, clamp)
    assert y.dtype == x.dtype and y.stride() == x.stride(), "dtype and memory format are kept"
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")
    assert grads[0].stride() == x.stride()
    names = ["dx", "dbias", "dratio"] if with_bias else ["dx", "dratio"]
    for name, g, rg in zip(names, grads, r_grads):
        assert_close_verbose(g, rg, rtol=1e-5, what=name)
    if clamp is not None:  # the case exercises the clamp (and its zero gradient)
        assert (x.abs() * GAIN > 2 * clamp).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_epilogue_low_precision_within_twice_reference_error(layout, dtype):
    B, C, H, W = 2, 20, 13, 11
    x, bias = make_x(B, C, H, W, seed=5, dtype=dtype, layout=layout)
    _, ratio = partial_conv_mask_reference(make_mask("nonbinary", B, H + 2, W + 2, seed=6), 3, 1, 0)
    ratio = ratio.to(dtype)
    y, grads = run_epilogue(pct.partial_conv_epilogue_triton, x, bias, ratio, 2.0)
    lp_y, lp_grads = run_epilogue(epilogue_reference, x, bias, ratio, 2.0)
    r_y, r_grads = run_epilogue(epilogue_reference, x.float(), bias.float(), ratio.float(), 2.0)
    assert y.dtype == dtype and y.stride() == x.stride()
    assert_lowp_close(y, lp_y, r_y, "y", FLOORS[dtype])
    for name, g, lg, rg in zip(("dx", "dbias", "dratio"), grads, lp_grads, r_grads):
        assert g.dtype == dtype
        assert_lowp_close(g, lg, rg, name, FLOORS[dtype])


def test_epilogue_non_dense_x_and_mixed_dtypes():
    x, bias = make_x(1, 8, 12, 12, seed=7)
    x_strided = x[:, :, ::2, ::2]  # pixels are not one strided run: copied first
    _, ratio = partial_conv_mask_reference(make_mask("binary", 1, 6, 6, seed=8), 3, 1, 1)
    y = pct.partial_conv_epilogue_triton(x_strided, bias.double(), ratio.half(), GAIN, ALPHA)
    ref = epilogue_reference(x_strided, bias, ratio.half().float(), GAIN, ALPHA)
    assert y.dtype == torch.float32
    assert_close_verbose(y, ref, rtol=1e-6, what="y")


# ---------------------------------------------------------------------------------------
# Fused: mask update + epilogue in one launch


def run_fused(fn, x, bias, mask, geo, clamp, grad_seed=2):
    x = x.detach().clone().requires_grad_(True)
    bias = None if bias is None else bias.detach().clone().requires_grad_(True)
    y, update = fn(x, bias, mask, *geo, GAIN, ALPHA, clamp)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed)).to(y)
    inputs = [t for t in (x, bias) if t is not None]
    return y.detach(), update, torch.autograd.grad(y, inputs, g)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_fused_fp32_matches_reference(geometry, mask_kind):
    k, s, p, H, W = geometry
    B, C = 2, 20
    mask = make_mask(mask_kind, B, H, W, seed=9 + k)
    layout = "channels_last" if s == 2 else "nchw"
    x, bias = make_x(B, C, out_size(H, k, s, p), out_size(W, k, s, p), seed=10, layout=layout)
    bias = None if k == 5 else bias
    clamp = 1.5 if k == 4 else None
    y, update, grads = run_fused(pct.partial_conv_fused_triton, x, bias, mask, (k, s, p), clamp)
    r_y, r_update, r_grads = run_fused(fused_reference, x, bias, mask, (k, s, p), clamp)
    assert y.stride() == x.stride() and update.dtype == mask.dtype and not update.requires_grad
    assert torch.equal(update, r_update), "update"
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")
    for name, g, rg in zip(("dx", "dbias"), grads, r_grads):
        assert_close_verbose(g, rg, rtol=1e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mask_kind", ["binary", "nonbinary"])
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[3]])
def test_fused_low_precision_within_twice_reference_error(geometry, mask_kind, dtype):
    k, s, p, H, W = geometry
    B, C = 2, 20
    mask = make_mask(mask_kind, B, H, W, seed=11, dtype=dtype)
    x, bias = make_x(B, C, out_size(H, k, s, p), out_size(W, k, s, p), seed=12, dtype=dtype,
                     layout="channels_last" if mask_kind == "binary" else "nchw")
    y, update, grads = run_fused(pct.partial_conv_fused_triton, x, bias, mask, (k, s, p), None)
    lp_y, lp_update, lp_grads = run_fused(fused_reference, x, bias, mask, (k, s, p), None)
    r_y, r_update, r_grads = run_fused(fused_reference, x.float(), bias.float(), mask.float(), (k, s, p), None)
    assert y.dtype == dtype and update.dtype == dtype
    assert_rounded_from(update, r_update, "update")
    assert_lowp_close(y, lp_y, r_y, "y", FLOORS[dtype])
    for name, g, lg, rg in zip(("dx", "dbias"), grads, lp_grads, r_grads):
        assert_lowp_close(g, lg, rg, name, FLOORS[dtype])


@pytest.mark.parametrize("C", [20, 40])
def test_fused_channel_split_on_large_nchw_maps(C):
    # NCHW maps of >= 512 pixels get narrow channel tiles: several per program (C_SPLIT),
    # the last program's tiles partly or wholly past C
    mask = make_mask("binary", 1, 32, 24, seed=37)
    x, bias = make_x(1, C, 32, 24, seed=38)
    y, update, grads = run_fused(pct.partial_conv_fused_triton, x, bias, mask, (3, 1, 1), None)
    r_y, r_update, r_grads = run_fused(fused_reference, x, bias, mask, (3, 1, 1), None)
    assert torch.equal(update, r_update)
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")
    for name, g, rg in zip(("dx", "dbias"), grads, r_grads):
        assert_close_verbose(g, rg, rtol=1e-5, what=name)


def test_fused_equals_the_two_kernel_path():
    # same numbers as partial_conv_mask_triton then partial_conv_epilogue_triton, bit for bit
    for dtype in DTYPES:
        mask = make_mask("nonbinary", 2, 13, 11, seed=13, dtype=dtype)
        x, bias = make_x(2, 20, 7, 6, seed=14, dtype=dtype)
        y, update = pct.partial_conv_fused_triton(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
        u2, ratio = pct.partial_conv_mask_triton(mask, 3, 2, 1)
        y2 = pct.partial_conv_epilogue_triton(x, bias, ratio, GAIN, ALPHA)
        assert torch.equal(update, u2) and torch.equal(y, y2), dtype


# ---------------------------------------------------------------------------------------
# Errors, dispatch, model layer


def test_invalid_inputs_raise_clear_errors():
    x, bias = make_x(1, 4, 8, 8, seed=15)
    mask = make_mask("binary", 1, 8, 8, seed=15)
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, 1, H, W\)"):
        pct.partial_conv_mask_triton(mask.expand(1, 2, 8, 8), 3, 1, 1)
    with pytest.raises(ValueError, match="dtype"):
        pct.partial_conv_mask_triton(mask.bool(), 3, 1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        pct.partial_conv_mask_triton(mask, 11, 1, 0)
    with pytest.raises(ValueError, match="stride >= 1"):
        pct.partial_conv_mask_triton(mask, 3, 0, 1)
    with pytest.raises(ValueError, match="bias must have shape"):
        pct.partial_conv_epilogue_triton(x, bias[:3], ratio, GAIN, ALPHA)
    with pytest.raises(ValueError, match="ratio must have shape"):
        pct.partial_conv_epilogue_triton(x, bias, ratio[..., :4], GAIN, ALPHA)
    with pytest.raises(ValueError, match="not supported"):
        pct.partial_conv_epilogue_triton(x.double(), bias, ratio, GAIN, ALPHA)
    with pytest.raises(ValueError, match="is not the output"):
        pct.partial_conv_fused_triton(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
    if _INTERPRET:
        with pytest.raises(ValueError, match="do not run on meta"):
            pct.partial_conv_mask_triton(mask.to("meta"), 3, 1, 1)


def test_dispatcher_and_backend_reach_the_kernels():
    from mat_fast import ops

    assert backend._PROBES["triton"](DEVICE.type) is None
    mask = make_mask("binary", 1, 16, 16, seed=16)
    x, bias = make_x(1, 4, 16, 16, seed=16)
    r_update, r_ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    with mat_fast.use_backend("triton"):
        assert backend.implementation("partial_conv_mask", DEVICE) is pct.partial_conv_mask_triton
        update, ratio = ops.partial_conv_mask(mask, 3, 1, 1)
        if "partial_conv_epilogue" in backend._REGISTRY:
            assert backend.implementation("partial_conv_epilogue", DEVICE) is pct.partial_conv_epilogue_triton
            y = ops.partial_conv_epilogue(x, bias, ratio, GAIN, ALPHA)
            assert_close_verbose(y, epilogue_reference(x, bias, r_ratio, GAIN, ALPHA), rtol=1e-6, what="y")
    assert torch.equal(update, r_update) and torch.equal(ratio, r_ratio)


@pytest.mark.parametrize("name", ["reference", "triton"])
def test_fused_dispatcher(name):
    from mat_fast.ops.partial_conv import partial_conv_fused

    mask = make_mask("binary", 2, 13, 11, seed=32)
    x, bias = make_x(2, 6, 7, 6, seed=33)
    r_y, r_update = partial_conv_fused_reference(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
    with mat_fast.use_backend(name):
        y, update = partial_conv_fused(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
        expected = pct.partial_conv_fused_triton if name == "triton" else partial_conv_fused_reference
        assert backend.implementation("partial_conv_fused", DEVICE) is expected
    assert torch.equal(update, r_update)
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")


def test_fused_dispatcher_composes_the_two_ops_without_a_fused_kernel(monkeypatch):
    # a backend with mask and epilogue kernels but no fused one runs those two kernels
    from mat_fast.ops.partial_conv import partial_conv_fused

    calls = []
    monkeypatch.setitem(backend._REGISTRY["partial_conv_mask"], "triton",
                        lambda *a: calls.append("mask") or pct.partial_conv_mask_triton(*a))
    monkeypatch.setitem(backend._REGISTRY["partial_conv_epilogue"], "triton",
                        lambda *a: calls.append("epilogue") or pct.partial_conv_epilogue_triton(*a))
    # triton without a fused kernel: neither registered nor lazily importable
    monkeypatch.delitem(backend._REGISTRY["partial_conv_fused"], "triton", raising=False)
    monkeypatch.setitem(backend._LAZY, "partial_conv_fused", {})
    mask = make_mask("binary", 1, 8, 8, seed=34)
    x, bias = make_x(1, 4, 8, 8, seed=35)
    y, update = partial_conv_fused(x, bias, mask, 3, 1, 1, GAIN, ALPHA, backend_name="triton")
    assert calls == ["mask", "epilogue"]
    r_y, r_update = partial_conv_fused_reference(x, bias, mask, 3, 1, 1, GAIN, ALPHA)
    assert torch.equal(update, r_update)
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")


@pytest.mark.parametrize("down", [1, 2])
def test_partial_conv_layer_triton_matches_reference(down):
    # MAT's Conv2dLayerPartial at its real width (180 channels) on a 16x16 map
    from mat_fast.model.layers import Conv2dLayerPartial

    torch.manual_seed(0)
    layer = Conv2dLayerPartial(180, 180, kernel_size=3, activation="lrelu", down=down).to(DEVICE)
    with torch.no_grad():
        layer.conv.bias.normal_()
    x = torch.randn(1, 180, 16, 16, device=DEVICE, requires_grad=True)
    mask = make_mask("binary", 1, 16, 16, seed=17)
    outs = {}
    for name in ("reference", "triton"):
        with mat_fast.use_backend(name):
            y, m = layer(x, mask)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        outs[name] = (y.detach(), m, gx)
    assert_close_verbose(outs["triton"][0], outs["reference"][0], rtol=1e-5, what="layer out")
    assert torch.equal(outs["triton"][1], outs["reference"][1]), "layer mask"
    assert_close_verbose(outs["triton"][2], outs["reference"][2], rtol=1e-5, what="layer dx")


# ---------------------------------------------------------------------------------------
# Custom ops: fake implementations, opcheck, graph capture


def test_fake_implementations_keep_shapes_dtypes_and_layout():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 180, 32, 32, dtype=torch.float16, device=DEVICE).contiguous(
            memory_format=torch.channels_last)
        mask = torch.empty(2, 1, 64, 64, dtype=torch.float32, device=DEVICE)
        update, ratio = torch.ops.mat_fast.partial_conv_mask(mask, 3, 2, 1)
        assert update.shape == ratio.shape == (2, 1, 32, 32) and ratio.dtype == torch.float32
        y = torch.ops.mat_fast.partial_conv_epilogue_fwd(x, None, ratio, GAIN, ALPHA, None)
        assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()
        dx = torch.ops.mat_fast.partial_conv_epilogue_bwd(y, x, None, ratio, GAIN, ALPHA, 1.0)
        assert dx.stride() == x.stride()
        y, update = torch.ops.mat_fast.partial_conv_fused_fwd(x, None, mask, 3, 2, 1, GAIN, ALPHA, None)
        assert y.stride() == x.stride() and update.shape == (2, 1, 32, 32) and update.dtype == mask.dtype


def test_opcheck():
    mask = make_mask("binary", 1, 9, 8, seed=18)
    torch.library.opcheck(torch.ops.mat_fast.partial_conv_mask.default, (mask, 3, 2, 1))
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    for layout in ("nchw", "channels_last"):
        x, bias = make_x(1, 6, 9, 8, seed=19, layout=layout)
        torch.library.opcheck(torch.ops.mat_fast.partial_conv_epilogue_fwd.default,
                              (x.requires_grad_(True), bias.requires_grad_(True),
                               ratio.clone().requires_grad_(True), GAIN, ALPHA, 1.0))
    x, bias = make_x(1, 6, 9, 8, seed=19)
    torch.library.opcheck(torch.ops.mat_fast.partial_conv_epilogue_fwd.default,
                          (x.requires_grad_(True), None, ratio, GAIN, ALPHA, None))
    torch.library.opcheck(torch.ops.mat_fast.partial_conv_epilogue_bwd.default,
                          (torch.randn_like(x), x.detach(), bias, ratio, GAIN, ALPHA, None))
    x2, _ = make_x(1, 6, 5, 4, seed=20, layout="channels_last")
    torch.library.opcheck(torch.ops.mat_fast.partial_conv_fused_fwd.default,
                          (x2.requires_grad_(True), bias.requires_grad_(True), mask, 3, 2, 1, GAIN, ALPHA, None))


def test_torch_compile_captures_the_ops():
    # aot_eager traces through the fake implementations (no C++ compiler needed on CPU)
    mask = make_mask("binary", 2, 13, 11, seed=21)
    x, bias = make_x(2, 20, 7, 6, seed=22)

    def f(x, bias, mask):
        update, ratio = pct.partial_conv_mask_triton(mask, 3, 2, 1)
        y = pct.partial_conv_epilogue_triton(x, bias, ratio, GAIN, ALPHA)
        y2, update2 = pct.partial_conv_fused_triton(x, bias, mask, 3, 2, 1, GAIN, ALPHA, 1.0)
        return y * 2 + y2, update + update2

    def run(fn):
        xg, bg = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
        y, update = fn(xg, bg, mask)
        return (y.detach(), update) + torch.autograd.grad(y.square().sum(), (xg, bg))

    eager = run(f)
    compiled = run(torch.compile(f, backend="aot_eager", fullgraph=True))
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# GPU only: MAT's real shapes, inductor + CUDA graphs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("k,s,p,size", [(3, 1, 1, 512), (3, 2, 1, 512), (3, 2, 1, 64), (3, 1, 1, 33)])
def test_gpu_real_shapes(k, s, p, size, layout, dtype):
    B, C = 2, 180
    mask = make_mask("binary", B, size, size, seed=23, dtype=dtype)
    x, bias = make_x(B, C, out_size(size, k, s, p), out_size(size, k, s, p), seed=24, dtype=dtype, layout=layout)
    y, update, grads = run_fused(pct.partial_conv_fused_triton, x, bias, mask, (k, s, p), None)
    r_y, r_update, r_grads = run_fused(fused_reference, x.float(), bias.float(), mask.float(), (k, s, p), None)
    assert torch.equal(update.float(), r_update)
    if dtype == torch.float32:
        assert_close_verbose(y, r_y, rtol=1e-6, what="y")
        for g, rg in zip(grads, r_grads):
            assert_close_verbose(g, rg, rtol=1e-5, what="grad")
        return
    lp_y, _, lp_grads = run_fused(fused_reference, x, bias, mask, (k, s, p), None)
    assert_lowp_close(y, lp_y, r_y, "y", FLOORS[dtype])
    for g, lg, rg in zip(grads, lp_grads, r_grads):
        assert_lowp_close(g, lg, rg, "grad", FLOORS[dtype])


@pytest.mark.gpu
def test_gpu_inductor_and_cuda_graphs():
    mask = make_mask("binary", 2, 128, 128, seed=25, dtype=torch.float16)
    x, bias = make_x(2, 180, 64, 64, seed=26, dtype=torch.float16, layout="channels_last")

    def f(x, bias, mask):
        y, update = pct.partial_conv_fused_triton(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
        _, ratio = pct.partial_conv_mask_triton(mask, 3, 2, 1)
        return y + pct.partial_conv_epilogue_triton(x, bias, ratio, GAIN, ALPHA), update

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        out, update = compiled(x, bias, mask)
    ref, ref_update = f(x, bias, mask)
    assert torch.equal(out, ref) and torch.equal(update, ref_update)


# ---------------------------------------------------------------------------------------
# Compiler check without a GPU: the interpreter accepts code the real compiler rejects, so
# build the kernels for sm_90 through PTX and ptxas, in a subprocess without TRITON_INTERPRET.

_BUILD_LOOP = r"""
for dtype, mask_dtype, clamp in (("fp16", "fp16", False), ("bf16", "fp32", True), ("fp32", "fp64", False)):
    types = {n: f"*{dtype}" for n in ("x", "y", "dy", "dx", "bias")}
    types.update({n: f"*{mask_dtype}" for n in ("mask", "update", "ratio")})
    types.update({n: "fp32" for n in ("gain", "alpha", "clamp")})
    act = dict(HAS_BIAS=True, HAS_CLAMP=clamp, BLOCK_C=16, BLOCK_P=256)
    acc = tl.float64 if mask_dtype == "fp64" else tl.float32
    build(kernels.partial_conv_mask_kernel, types, dict(K=3, STRIDE=2, PAD=1, BLOCK_P=256, ACC=acc))
    build(kernels.partial_conv_epilogue_fwd_kernel, types, act)
    build(kernels.partial_conv_epilogue_bwd_kernel, types, act)
    build(kernels.partial_conv_fused_fwd_kernel, types, dict(act, K=3, STRIDE=1, PAD=1, ACC=acc, C_SPLIT=2))
"""


def test_kernels_compile_for_cuda_target():
    from pathlib import Path

    compile_for_sm90(Path(pct.__file__).with_name("triton_kernels.py"), _BUILD_LOOP)
