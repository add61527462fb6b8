"""Triton partial convolution as custom ops (fake implementations, opcheck, graph capture
with torch.compile), MAT's real shapes on GPU (inductor and CUDA graphs included), and the
kernels built for sm_90 without a GPU. Parity against the reference over shapes, dtypes and
masks, every backend, is test_partial_conv.py and test_partial_conv_fused.py; shared inputs
are in helpers/partial_conv_cases.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mat_fast.ops.partial_conv.reference import partial_conv_mask_reference

from ..helpers.asserts import assert_close_verbose, assert_lowp_close
from ..helpers.partial_conv_cases import (
    ALPHA,
    DEVICE,
    DTYPE_IDS,
    DTYPES,
    FLOORS,
    GAIN,
    fused_reference,
    make_mask,
    make_x,
    out_size,
    pct,
    run_fused,
    triton_env,  # noqa: F401 (an autouse fixture: importing it turns it on here)
)
from ..helpers.sm90_compile import compile_for_sm90

# ---------------------------------------------------------------------------------------
# Custom ops: fake implementations, opcheck, graph capture


def test_fake_implementations_keep_shapes_dtypes_and_layout():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 180, 32, 32, dtype=torch.float16, device=DEVICE).contiguous(
            memory_format=torch.channels_last
        )
        mask = torch.empty(2, 1, 64, 64, dtype=torch.float32, device=DEVICE)
        update, ratio = torch.ops.mat_fast.partial_conv_mask(mask, 3, 2, 1)
        assert update.shape == ratio.shape == (2, 1, 32, 32) and ratio.dtype == torch.float32
        y = torch.ops.mat_fast.partial_conv_epilogue_fwd(x, None, ratio, GAIN, ALPHA, None)
        assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == x.stride()
        dx = torch.ops.mat_fast.partial_conv_epilogue_bwd(y, x, None, ratio, GAIN, ALPHA, 1.0)
        assert dx.stride() == x.stride()
        y, update = torch.ops.mat_fast.partial_conv_fused_fwd(
            x, None, mask, 3, 2, 1, GAIN, ALPHA, None
        )
        assert (
            y.stride() == x.stride()
            and update.shape == (2, 1, 32, 32)
            and update.dtype == mask.dtype
        )


def test_opcheck():
    mask = make_mask("binary", 1, 9, 8, seed=18)
    torch.library.opcheck(torch.ops.mat_fast.partial_conv_mask.default, (mask, 3, 2, 1))
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    for layout in ("nchw", "channels_last"):
        x, bias = make_x(1, 6, 9, 8, seed=19, layout=layout)
        torch.library.opcheck(
            torch.ops.mat_fast.partial_conv_epilogue_fwd.default,
            (
                x.requires_grad_(True),
                bias.requires_grad_(True),
                ratio.clone().requires_grad_(True),
                GAIN,
                ALPHA,
                1.0,
            ),
        )
    x, bias = make_x(1, 6, 9, 8, seed=19)
    torch.library.opcheck(
        torch.ops.mat_fast.partial_conv_epilogue_fwd.default,
        (x.requires_grad_(True), None, ratio, GAIN, ALPHA, None),
    )
    torch.library.opcheck(
        torch.ops.mat_fast.partial_conv_epilogue_bwd.default,
        (torch.randn_like(x), x.detach(), bias, ratio, GAIN, ALPHA, None),
    )
    x2, _ = make_x(1, 6, 5, 4, seed=20, layout="channels_last")
    torch.library.opcheck(
        torch.ops.mat_fast.partial_conv_fused_fwd.default,
        (x2.requires_grad_(True), bias.requires_grad_(True), mask, 3, 2, 1, GAIN, ALPHA, None),
    )


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
@pytest.mark.parametrize(
    "k,s,p,size", [(3, 1, 1, 512), (3, 2, 1, 512), (3, 2, 1, 64), (3, 1, 1, 33)]
)
def test_gpu_real_shapes(k, s, p, size, layout, dtype):
    B, C = 2, 180
    mask = make_mask("binary", B, size, size, seed=23, dtype=dtype)
    x, bias = make_x(
        B, C, out_size(size, k, s, p), out_size(size, k, s, p), seed=24, dtype=dtype, layout=layout
    )
    y, update, grads = run_fused(pct.partial_conv_fused_triton, x, bias, mask, (k, s, p), None)
    r_y, r_update, r_grads = run_fused(
        fused_reference, x.float(), bias.float(), mask.float(), (k, s, p), None
    )
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
    compile_for_sm90(Path(pct.__file__).with_name("triton_kernels.py"), _BUILD_LOOP)
