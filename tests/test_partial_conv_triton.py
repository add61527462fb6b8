"""Triton partial convolution (mask update, conv epilogue, both fused) against the reference.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: shapes are small
(20 channels, 16x16 and odd 13x11 maps). With a GPU the same tests run on CUDA. Inputs,
tolerances and the interpreter fixture live in partial_conv_cases.py; the custom-op
plumbing (fakes, opcheck, torch.compile), MAT's real shapes on GPU and the sm_90 build are
in test_partial_conv_triton_graph.py.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_fused_reference,
    partial_conv_mask_reference,
)

from .conftest import assert_close_verbose, assert_lowp_close
from .partial_conv_cases import (
    _INTERPRET,
    ALPHA,
    DEVICE,
    DTYPE_IDS,
    DTYPES,
    FLOORS,
    GAIN,
    GEOMETRIES,
    MASKS,
    assert_rounded_from,
    epilogue_reference,
    fused_reference,
    make_mask,
    make_x,
    out_size,
    pct,
    run_fused,
    triton_env,  # noqa: F401  (autouse: pytest finds it by name)
)

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
    r_update, r_ratio = partial_conv_mask_reference(
        mask if dtype == torch.float64 else mask.float(), k, s, p
    )
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
    x, bias = make_x(
        B,
        C,
        out_size(H, k, s, p),
        out_size(W, k, s, p),
        seed=12,
        dtype=dtype,
        layout="channels_last" if mask_kind == "binary" else "nchw",
    )
    y, update, grads = run_fused(pct.partial_conv_fused_triton, x, bias, mask, (k, s, p), None)
    lp_y, lp_update, lp_grads = run_fused(fused_reference, x, bias, mask, (k, s, p), None)
    r_y, r_update, r_grads = run_fused(
        fused_reference, x.float(), bias.float(), mask.float(), (k, s, p), None
    )
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
            assert (
                backend.implementation("partial_conv_epilogue", DEVICE)
                is pct.partial_conv_epilogue_triton
            )
            y = ops.partial_conv_epilogue(x, bias, ratio, GAIN, ALPHA)
            assert_close_verbose(
                y, epilogue_reference(x, bias, r_ratio, GAIN, ALPHA), rtol=1e-6, what="y"
            )
    assert torch.equal(update, r_update) and torch.equal(ratio, r_ratio)


@pytest.mark.parametrize("name", ["reference", "triton"])
def test_fused_dispatcher(name):
    from mat_fast.ops.partial_conv import partial_conv_fused

    mask = make_mask("binary", 2, 13, 11, seed=32)
    x, bias = make_x(2, 6, 7, 6, seed=33)
    r_y, r_update = partial_conv_fused_reference(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
    with mat_fast.use_backend(name):
        y, update = partial_conv_fused(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
        expected = (
            pct.partial_conv_fused_triton if name == "triton" else partial_conv_fused_reference
        )
        assert backend.implementation("partial_conv_fused", DEVICE) is expected
    assert torch.equal(update, r_update)
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")


def test_fused_dispatcher_composes_the_two_ops_without_a_fused_kernel(monkeypatch):
    # a backend with mask and epilogue kernels but no fused one runs those two kernels
    from mat_fast.ops.partial_conv import partial_conv_fused

    calls = []
    monkeypatch.setitem(
        backend._REGISTRY["partial_conv_mask"],
        "triton",
        lambda *a: calls.append("mask") or pct.partial_conv_mask_triton(*a),
    )
    monkeypatch.setitem(
        backend._REGISTRY["partial_conv_epilogue"],
        "triton",
        lambda *a: calls.append("epilogue") or pct.partial_conv_epilogue_triton(*a),
    )
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
