"""Fused Triton window attention against its reference twin.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (slow: shapes are
small, mostly 2 heads of 6 channels, plus cases with MAT's real 6 heads of 30). With a GPU
the same tests run on CUDA, and the ``gpu``-marked ones add real stage shapes, the whole
generator and torch.compile with CUDA graphs. One test compiles the kernels for sm_90 (PTX
and ptxas, no GPU needed), which catches what the interpreter lets through.

The kernel module reads ``TRITON_INTERPRET`` once, when it is imported; it is imported
here, at collection, under the interpreter when no GPU is visible. The variable is then
restored so other test modules see the environment they expect, and set again (by a
fixture) only while these tests run, for the backend probe.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.ops.window_attention import window_attention
from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose, assert_lowp_close
from ..helpers.sm90_compile import compile_for_sm90
from ..helpers.triton_interpreter import DEVICE, import_kernels, kernel_test_env
from ..helpers.triton_interpreter import INTERPRET as _INTERPRET

wat = import_kernels("mat_fast.ops.window_attention.triton")


_triton_env = kernel_test_env(wat)


# ---------------------------------------------------------------------------------------
# Inputs


def make_mask(kind, B, H, W, window, shift, gen):
    """(B, H*W, 1) fp32 mask of one kind, or None."""
    L = H * W
    if kind == "none":
        return None
    if kind == "binary":
        return (torch.rand(B, L, 1, generator=gen) > 0.5).float()
    if (
        kind == "invalid"
    ):  # fully invalid windows: every other (shifted) window of image 0, all of image 1
        m = (torch.rand(B, L, 1, generator=gen) > 0.5).float()
        rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        win = ((rows - shift) % H // window) * (W // window) + (cols - shift) % W // window
        m[0, (win.flatten() % 2 == 0)] = 0
        m[1:] = 0
        return m
    if kind == "nonbinary":  # upstream adds values other than 0 / 1 to the logits as is
        values = torch.tensor([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
        return values[torch.randint(0, len(values), (B, L, 1), generator=gen)]
    raise ValueError(kind)


def make_inputs(B, H, W, C, mask_kind, seed, dtype=torch.float32, window=8, shift=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H * W, C, generator=gen) for _ in range(3))
    mask = make_mask(mask_kind, B, H, W, window, shift, gen)
    to = dict(device=DEVICE, dtype=dtype)
    return (q.to(**to), k.to(**to), v.to(**to), None if mask is None else mask.to(**to))


def run(fn, q, k, v, mask, geo, grad_seed=1, **kwargs):
    """Forward and gradients of sum(out * g) w.r.t. q, k, v; returns (out, new_mask, grads)."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, new_mask = fn(q, k, v, mask, *geo, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    return out.detach(), new_mask, grads


def up(t):
    return None if t is None else t.float()


# (B, H, W, C, heads, window, shift)
GEOMETRIES = [
    pytest.param((1, 16, 16, 12, 2, 8, 0), id="w8-16x16-b1"),  # minimal: 4 windows
    pytest.param((2, 16, 24, 12, 2, 8, 4), id="w8s4-16x24-b2"),  # rectangular, shifted, batch 2
    pytest.param(
        (1, 16, 32, 12, 2, 16, 0), id="w16-16x32-b1"
    ),  # 256 tokens: 4x4 tiles, online softmax
    pytest.param((2, 32, 16, 12, 2, 16, 8), id="w16s8-32x16-b2"),  # tall, shifted, 256 tokens
]
MASKS = ["none", "binary", "invalid", "nonbinary"]


# ---------------------------------------------------------------------------------------
# Parity with the reference


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_fp32_matches_reference(geometry, mask_kind):
    B, H, W, C, heads, window, shift = geometry
    q, k, v, mask = make_inputs(
        B, H, W, C, mask_kind, seed=H * W + shift, window=window, shift=shift
    )
    geo = ((H, W), window, shift, heads)
    out, new_mask, grads = run(wat.window_attention_triton, q, k, v, mask, geo)
    r_out, r_mask, r_grads = run(window_attention_reference, q, k, v, mask, geo)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_close_verbose(out, r_out, rtol=1e-5, what="out")
    if mask is None:
        assert new_mask is None
    else:
        assert new_mask.dtype == mask.dtype and not new_mask.requires_grad
        assert torch.equal(new_mask, r_mask), "new_mask"
    for name, g, rg in zip("qkv", grads, r_grads):
        assert_close_verbose(g, rg, rtol=2e-5, what=f"d{name}")


# The real head_dim (30, padded to 32 inside) with 6 heads of C=180.
@pytest.mark.parametrize(
    "geometry,mask_kind",
    [
        pytest.param((1, 16, 16, 180, 6, 8, 4), "binary", id="C180-w8s4"),
        pytest.param((1, 16, 16, 180, 6, 16, 0), "invalid", id="C180-w16"),
    ],
)
def test_real_head_dim_matches_reference(geometry, mask_kind):
    B, H, W, C, heads, window, shift = geometry
    q, k, v, mask = make_inputs(B, H, W, C, mask_kind, seed=5, window=window, shift=shift)
    geo = ((H, W), window, shift, heads)
    out, new_mask, grads = run(wat.window_attention_triton, q, k, v, mask, geo)
    r_out, r_mask, r_grads = run(window_attention_reference, q, k, v, mask, geo)
    assert_close_verbose(out, r_out, rtol=1e-5, what="out")
    assert torch.equal(new_mask, r_mask)
    for name, g, rg in zip("qkv", grads, r_grads):
        assert_close_verbose(g, rg, rtol=2e-5, what=f"d{name}")


@pytest.mark.parametrize(
    "dtype,floor", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)], ids=["fp16", "bf16"]
)
@pytest.mark.parametrize("mask_kind", ["invalid"])  # random holes + fully invalid windows
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_low_precision_within_twice_reference_error(geometry, mask_kind, dtype, floor):
    B, H, W, C, heads, window, shift = geometry
    q, k, v, mask = make_inputs(
        B, H, W, C, mask_kind, seed=11 + shift, dtype=dtype, window=window, shift=shift
    )
    geo = ((H, W), window, shift, heads)
    out, new_mask, grads = run(wat.window_attention_triton, q, k, v, mask, geo)
    lp_out, lp_mask, lp_grads = run(window_attention_reference, q, k, v, mask, geo)
    r_out, _, r_grads = run(window_attention_reference, up(q), up(k), up(v), up(mask), geo)
    assert out.dtype == dtype and new_mask.dtype == dtype
    assert torch.equal(new_mask, lp_mask)
    assert_lowp_close(out, lp_out, r_out, "out", floor)
    for name, g, lg, rg in zip("qkv", grads, lp_grads, r_grads):
        assert g.dtype == dtype
        assert_lowp_close(g, lg, rg, f"d{name}", floor)


# ---------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"]
)
def test_zero_tokens_and_invalid_windows_are_finite(dtype):
    # All-zero tokens in windows whose every key is a hole: uniform softmax, zero output.
    B, H, W, C, heads = 2, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "invalid", seed=2, dtype=dtype, window=8, shift=4)
    q[0], k[0], v[0] = 0, 0, 0
    out, new_mask, grads = run(wat.window_attention_triton, q, k, v, mask, ((H, W), 8, 4, heads))
    r_out, r_mask, r_grads = run(
        window_attention_reference, up(q), up(k), up(v), up(mask), ((H, W), 8, 4, heads)
    )
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(out[0].float(), torch.zeros_like(r_out[0]))
    assert torch.equal(new_mask.float(), r_mask) and bool((new_mask[1] == 0).all())
    assert_close_verbose(
        out.float(), r_out, rtol=1e-2 if dtype != torch.float32 else 1e-5, what="out"
    )


def test_fp16_large_logits_stay_finite():
    # |q.k| beyond fp16's range: the fp16 reference overflows to inf/NaN, fp32 accumulation doesn't.
    B, H, W, C, heads = 1, 8, 8, 60, 2
    q, k, v, mask = make_inputs(B, H, W, C, "binary", seed=3, dtype=torch.float16)
    q, k = q.abs() * 60, k.abs() * 60
    out, _ = wat.window_attention_triton(q, k, v, mask, (H, W), 8, 0, heads)
    r_out, _ = window_attention_reference(up(q), up(k), up(v), up(mask), (H, W), 8, 0, heads)
    lp_out, _ = window_attention_reference(q, k, v, mask, (H, W), 8, 0, heads)
    assert not torch.isfinite(lp_out).all(), "case no longer overflows the fp16 reference"
    assert torch.isfinite(out).all()
    assert_close_verbose(out.float(), r_out, rtol=2e-3, what="out")


def test_mask_dtype_kept_and_mask_gets_no_gradient():
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "nonbinary", seed=4, dtype=torch.float16)
    mask = mask.float().requires_grad_(True)
    q.requires_grad_(True)
    out, new_mask = wat.window_attention_triton(q, k, v, mask, (H, W), 8, 0, heads)
    assert new_mask.dtype == torch.float32 and not new_mask.requires_grad
    out.float().sum().backward()
    assert mask.grad is None and q.grad is not None and torch.isfinite(q.grad).all()


def test_non_contiguous_inputs_and_tf32_flag():
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "binary", seed=6)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, channel-major strides
    assert not qt.is_contiguous()
    ref, _ = window_attention_reference(q, k, v, mask, (H, W), 8, 4, heads)
    out, _ = wat.window_attention_triton(qt, k, v, mask, (H, W), 8, 4, heads)
    assert_close_verbose(out, ref, rtol=1e-5, what="non-contiguous q")
    out, _ = wat.window_attention_triton(q, k, v, mask, (H, W), 8, 4, heads, allow_tf32=True)
    assert_close_verbose(out, ref, rtol=2e-2, what="allow_tf32")  # TF32 on GPU, IEEE otherwise


def test_dispatcher_and_backend_reach_the_kernel():
    assert backend._PROBES["triton"](DEVICE.type) is None  # (other backends' probes may build code)
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "binary", seed=7)
    ref, ref_mask = window_attention_reference(q, k, v, mask, (H, W), 8, 0, heads)
    with mat_fast.use_backend("triton"):
        assert backend.implementation("window_attention", DEVICE) is wat.window_attention_triton
        out, new_mask = window_attention(q, k, v, mask, (H, W), 8, 0, heads)
    assert_close_verbose(out, ref, rtol=1e-5, what="out")
    assert torch.equal(new_mask, ref_mask)


def test_invalid_inputs_raise_clear_errors():
    q, k, v, mask = make_inputs(1, 16, 16, 12, "binary", seed=8)
    f = wat.window_attention_triton
    with pytest.raises(ValueError, match="share shape and dtype"):
        f(q, k.half(), v, mask, (16, 16), 8, 0, 2)
    with pytest.raises(ValueError, match="not supported"):
        f(q.double(), k.double(), v.double(), mask, (16, 16), 8, 0, 2)
    with pytest.raises(ValueError, match="not a multiple of the window size"):
        f(q, k, v, mask, (16, 16), 6, 0, 2)
    with pytest.raises(ValueError, match="shift_size"):
        f(q, k, v, mask, (16, 16), 8, 8, 2)
    with pytest.raises(ValueError, match="heads"):
        f(q, k, v, mask, (16, 16), 8, 0, 5)
    with pytest.raises(ValueError, match="mask must have shape"):
        f(q, k, v, mask[:, :10], (16, 16), 8, 0, 2)
    with pytest.raises(ValueError, match="floating point"):
        f(q, k, v, mask.bool(), (16, 16), 8, 0, 2)
    if _INTERPRET:
        with pytest.raises(ValueError, match="do not run on meta"):
            f(q.to("meta"), k.to("meta"), v.to("meta"), None, (16, 16), 8, 0, 2)


# ---------------------------------------------------------------------------------------
# Custom op: fake implementation, opcheck, graph capture


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


def test_opcheck():
    # schema, autograd registration, fake tensor and AOT dispatch checks on a tiny case
    q, k, v, mask = make_inputs(1, 8, 8, 32, "binary", seed=9)
    q.requires_grad_(True)
    torch.library.opcheck(
        torch.ops.mat_fast.window_attention_fwd.default, (q, k, v, mask, 8, 8, 8, 4, 2, False)
    )
    out, _, lse = torch.ops.mat_fast.window_attention_fwd(q, k, v, mask, 8, 8, 8, 4, 2, False)
    torch.library.opcheck(
        torch.ops.mat_fast.window_attention_bwd.default,
        (torch.randn_like(out), q.detach(), k, v, mask, out.detach(), lse, 8, 8, 8, 4, 2, False),
        test_utils=("test_schema", "test_faketensor"),
    )


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
