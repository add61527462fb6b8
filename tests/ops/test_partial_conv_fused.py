"""The fused partial convolution (mask update + epilogue in one launch) on every backend
against the reference, the backend a parametrised axis: ``triton`` has the one fused kernel
(Triton's interpreter on CPU without a GPU; small shapes); the other backends compose their
mask-update and epilogue kernels (test_partial_conv.py), which the dispatcher tests check.
Also MAT's partial-conv layer on each backend against the reference backend.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.ops.partial_conv.reference import partial_conv_fused_reference

from ..helpers.asserts import assert_close_verbose, assert_lowp_close
from ..helpers.backends import TRITON, device_of
from ..helpers.partial_conv_cases import (
    ALPHA,
    DTYPES,
    FLOORS,
    GAIN,
    GEOMETRIES,
    MASKS,
    assert_rounded_from,
    fused_reference,
    make_mask,
    make_x,
    out_size,
    pct,
    run_fused,
    triton_env,  # noqa: F401 (an autouse fixture: importing it turns it on here)
)

#: The backends with a fused kernel of their own.
FUSED = {"triton": pct.partial_conv_fused_triton}


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("backend_name", [TRITON])
def test_fused_fp32_matches_reference(backend_name, geometry, mask_kind):
    k, s, p, H, W = geometry
    B, C = 2, 20
    mask = make_mask(mask_kind, B, H, W, seed=9 + k)
    layout = "channels_last" if s == 2 else "nchw"
    x, bias = make_x(B, C, out_size(H, k, s, p), out_size(W, k, s, p), seed=10, layout=layout)
    bias = None if k == 5 else bias
    clamp = 1.5 if k == 4 else None
    y, update, grads = run_fused(FUSED[backend_name], x, bias, mask, (k, s, p), clamp)
    r_y, r_update, r_grads = run_fused(fused_reference, x, bias, mask, (k, s, p), clamp)
    assert y.stride() == x.stride() and update.dtype == mask.dtype and not update.requires_grad
    assert torch.equal(update, r_update), "update"
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")
    for name, g, rg in zip(("dx", "dbias"), grads, r_grads):
        assert_close_verbose(g, rg, rtol=1e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mask_kind", ["binary", "nonbinary"])
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[3]])
@pytest.mark.parametrize("backend_name", [TRITON])
def test_fused_low_precision_within_twice_reference_error(backend_name, geometry, mask_kind, dtype):
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
    y, update, grads = run_fused(FUSED[backend_name], x, bias, mask, (k, s, p), None)
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
@pytest.mark.parametrize("backend_name", [TRITON])
def test_fused_channel_split_on_large_nchw_maps(backend_name, C):
    # NCHW maps of >= 512 pixels get narrow channel tiles: several per program (C_SPLIT),
    # the last program's tiles partly or wholly past C
    mask = make_mask("binary", 1, 32, 24, seed=37)
    x, bias = make_x(1, C, 32, 24, seed=38)
    y, update, grads = run_fused(FUSED[backend_name], x, bias, mask, (3, 1, 1), None)
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
        assert backend.implementation("partial_conv_fused", device_of(name)) is expected
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
@pytest.mark.parametrize("backend_name", [TRITON])
def test_partial_conv_layer_matches_reference(backend_name, down):
    # MAT's Conv2dLayerPartial at its real width (180 channels) on a 16x16 map
    from mat_fast.model.layers import Conv2dLayerPartial

    torch.manual_seed(0)
    device = device_of(backend_name)
    layer = Conv2dLayerPartial(180, 180, kernel_size=3, activation="lrelu", down=down).to(device)
    with torch.no_grad():
        layer.conv.bias.normal_()
    x = torch.randn(1, 180, 16, 16, device=device, requires_grad=True)
    mask = make_mask("binary", 1, 16, 16, seed=17)
    outs = {}
    for name in ("reference", backend_name):
        with mat_fast.use_backend(name):
            y, m = layer(x, mask)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        outs[name] = (y.detach(), m, gx)
    assert_close_verbose(outs[backend_name][0], outs["reference"][0], rtol=1e-5, what="layer out")
    assert torch.equal(outs[backend_name][1], outs["reference"][1]), "layer mask"
    assert_close_verbose(outs[backend_name][2], outs["reference"][2], rtol=1e-5, what="layer dx")
