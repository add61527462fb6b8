"""Triton window attention as a custom op (fake implementation, graph capture with
torch.compile), at model level (a transformer stage; the whole generator, slow), MAT's real
stage shapes on a GPU (with the generator, inductor and CUDA graphs), and the kernels built
for sm_90 without a GPU, which catches what the interpreter lets through. Parity with the
reference over shapes, masks and dtypes, every backend, is test_window_attention.py.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose, assert_lowp_close
from ..helpers.sm90_compile import compile_for_sm90
from ..helpers.triton_interpreter import DEVICE
from ..helpers.window_attention_cases import (
    make_inputs as _make_inputs,
)
from ..helpers.window_attention_cases import (
    run,
    triton_env,  # noqa: F401 (an autouse fixture: importing it turns it on here)
    up,
    wat,
)


def make_inputs(B, H, W, C, mask_kind, seed, dtype=torch.float32, window=8, shift=0):
    return _make_inputs(B, H, W, C, mask_kind, seed, dtype, window, shift, device=DEVICE)


# ---------------------------------------------------------------------------------------
# Custom op: fake implementation, graph capture (opcheck: test_window_attention.py)


def test_fake_implementation_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 256, 180, dtype=torch.float16, device=DEVICE)
        mask = torch.empty(2, 256, 1, dtype=torch.float32, device=DEVICE)
        out, new_mask, lse = torch.ops.mat_fast.window_attention_fwd(
            q, q, q, mask, 16, 16, 8, 4, 6, False
        )
        assert out.shape == q.shape and out.dtype == q.dtype
        assert new_mask.shape == (2, 256, 1) and new_mask.dtype == torch.float32
        assert lse.shape == (2, 6, 256) and lse.dtype == torch.float32
        _, no_mask, _ = torch.ops.mat_fast.window_attention_fwd(
            q, q, q, None, 16, 16, 8, 4, 6, False
        )
        assert no_mask.numel() == 0
        grads = torch.ops.mat_fast.window_attention_bwd(
            q, q, q, q, mask, q, lse, 16, 16, 8, 4, 6, False
        )
        assert all(g.shape == q.shape and g.dtype == q.dtype for g in grads)


def test_torch_compile_captures_the_op():
    # aot_eager traces through the fake implementation (no C++ compiler needed on CPU)
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "binary", seed=10)

    def f(q, k, v, mask):
        out, new_mask = wat.window_attention_triton(q, k, v, mask, (H, W), 8, 4, heads)
        return out * 2, new_mask

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager, compiled_out = run(f, q, k, v, mask, ()), run(compiled, q, k, v, mask, ())
    assert torch.equal(eager[0], compiled_out[0]) and torch.equal(eager[1], compiled_out[1])
    for g, cg in zip(eager[2], compiled_out[2]):
        assert torch.equal(g, cg)


# ---------------------------------------------------------------------------------------
# Model level


def test_basic_layer_triton_matches_reference():
    # One transformer stage (2 blocks: W-MSA then SW-MSA, real C=180 / 6 heads) with
    # gradients; the whole generator (forward) is the slow test below.
    from mat_fast.model.transformer import BasicLayer

    torch.manual_seed(0)
    layer = BasicLayer(dim=180, input_resolution=(16, 16), depth=2, num_heads=6, window_size=8).to(
        DEVICE
    )
    x, _, _, mask = make_inputs(1, 16, 16, 180, "invalid", seed=12)
    x.requires_grad_(True)
    outs = {}
    for name in ("reference", "triton"):
        with mat_fast.use_backend(name):
            y, size, m = layer(x, (16, 16), mask)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        outs[name] = (y.detach(), m, gx)
    assert_close_verbose(outs["triton"][0], outs["reference"][0], rtol=1e-5, what="layer out")
    assert torch.equal(outs["triton"][1], outs["reference"][1]), "layer mask"
    assert_close_verbose(outs["triton"][2], outs["reference"][2], rtol=1e-4, what="layer dx")


@pytest.mark.slow
def test_whole_generator_triton_matches_reference():
    """The whole generator (128 input: every stage, w8 and w16, shifted, masked, both
    attention passes of MAT) with backend 'triton' vs 'reference', same seeds. About
    2 minutes under the interpreter on 2 cores; seconds on a GPU."""
    from mat_fast import Generator

    torch.manual_seed(0)
    G = (
        Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=128, img_channels=3)
        .eval()
        .to(DEVICE)
    )
    gen = torch.Generator().manual_seed(21)
    img = (torch.rand(1, 3, 128, 128, generator=gen) * 2 - 1).to(DEVICE)
    mask = (torch.rand(1, 1, 128, 128, generator=gen) > 0.3).float().to(DEVICE)
    mask[..., 32:96, 16:112] = 0  # a large hole: fully invalid windows at the first stages
    z = torch.randn(1, 512, generator=gen).to(DEVICE)
    outs = {}
    with torch.no_grad():
        for name in ("reference", "triton"):
            torch.manual_seed(1)  # the dropout maps and noise are drawn from the global RNG
            with mat_fast.use_backend(name):
                outs[name] = G(img * mask, mask, z, None, noise_mode="random")
    assert torch.isfinite(outs["triton"]).all()
    assert_close_verbose(outs["triton"], outs["reference"], rtol=1e-4, what="generator output")


# ---------------------------------------------------------------------------------------
# GPU only: real stage shapes, the whole generator, inductor + CUDA graphs


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype,floor", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3), (torch.float32, None)]
)
@pytest.mark.parametrize(
    "grid,window,shift", [((64, 64), 8, 4), ((32, 32), 16, 8), ((16, 16), 16, 0)]
)
def test_gpu_stage_shapes(grid, window, shift, dtype, floor):
    H, W = grid
    q, k, v, mask = make_inputs(
        2, H, W, 180, "invalid", seed=13, dtype=dtype, window=window, shift=shift
    )
    geo = ((H, W), window, shift, 6)
    out, new_mask, grads = run(wat.window_attention_triton, q, k, v, mask, geo)
    r_out, r_mask, r_grads = run(window_attention_reference, up(q), up(k), up(v), up(mask), geo)
    assert torch.equal(new_mask.float(), r_mask)
    if dtype == torch.float32:
        assert_close_verbose(out, r_out, rtol=1e-5, what="out")
        for g, rg in zip(grads, r_grads):
            assert_close_verbose(g, rg, rtol=2e-5, what="grad")
        return
    lp_out, _, lp_grads = run(window_attention_reference, q, k, v, mask, geo)
    assert_lowp_close(out, lp_out, r_out, "out", floor)
    for g, lg, rg in zip(grads, lp_grads, r_grads):
        assert_lowp_close(g, lg, rg, "grad", floor)


@pytest.mark.gpu
def test_gpu_generator_triton_matches_reference():
    from mat_fast.inpaint import random_generator

    G = random_generator(seed=1, resolution=128).to(DEVICE)
    img = torch.randn(1, 3, 128, 128, device=DEVICE)
    m = torch.ones(1, 1, 128, 128, device=DEVICE)
    m[..., 32:96, 16:80] = 0
    z = torch.randn(1, 512, device=DEVICE)
    outs = {}
    for name in ("reference", "triton"):
        torch.manual_seed(0)  # the generator draws dropout maps
        with torch.no_grad(), mat_fast.use_backend(name):
            outs[name] = G(img, m, z, None, noise_mode="const")
    assert_close_verbose(outs["triton"], outs["reference"], rtol=1e-3, what="generator")


@pytest.mark.gpu
def test_gpu_inductor_and_cuda_graphs():
    q, k, v, mask = make_inputs(2, 64, 64, 180, "binary", seed=14, dtype=torch.float16)

    def f(q, k, v, mask):
        return wat.window_attention_triton(q, k, v, mask, (64, 64), 8, 4, 6)

    compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        out, new_mask = compiled(q, k, v, mask)
    ref, ref_mask = f(q, k, v, mask)
    assert torch.equal(out, ref) and torch.equal(new_mask, ref_mask)


# ---------------------------------------------------------------------------------------
# Compiler check without a GPU: the interpreter accepts code the real compiler rejects
# (e.g. non-constexpr globals), so build the kernels for sm_90 through PTX and ptxas, in a
# subprocess without TRITON_INTERPRET (one process cannot hold both kinds of kernels).

_BUILD_LOOP = r"""
for dtype, window, shift, precision in (("fp16", 8, 4, "ieee"), ("bf16", 16, 8, "ieee"), ("fp32", 16, 0, "tf32")):
    types = {n: "*fp32" for n in ("mask", "new_mask", "lse", "delta", "inv_norm")}
    types.update({n: f"*{dtype}" for n in ("q", "k", "v", "o", "do", "dq", "dk", "dv", "bias")}, scale="fp32")
    block = min(64, window * window)
    consts = dict(HEAD_DIM=30, WINDOW=window, SHIFT=shift, HAS_MASK=True, BLOCK_M=block, BLOCK_N=block,
                  BLOCK_D=32, DOT_PRECISION=precision)
    for packed in (False, True):  # q, k, v given / finished from W x in the kernel
        build(kernels.window_attention_fwd_kernel, types, dict(consts, PACKED=packed, HAS_BIAS=packed))
    build(kernels.window_attention_bwd_dkdv_kernel, types, dict(consts, WITH_DQ=window == 8))
    if window == 16:
        build(kernels.window_attention_bwd_dq_kernel, types, consts)
"""


def test_kernels_compile_for_cuda_target():
    from pathlib import Path

    compile_for_sm90(Path(wat.__file__).with_name("triton_kernels.py"), _BUILD_LOOP)
