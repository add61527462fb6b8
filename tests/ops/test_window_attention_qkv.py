"""Window attention from block input tokens (normalise + q/k/v projections + attention):
the fused kernels (Triton's: one GEMM, 1/||x|| and biases applied inside the kernel) with
the backend a parametrised axis, and the composition that backends without a fused kernel
run (their own attention kernel after upstream's projections), against the reference twin.

Triton runs in its interpreter on CPU without a GPU (small shapes); the module import
under the interpreter is shared through helpers/window_attention_cases.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mat_fast
from mat_fast.ops.window_attention import window_attention_qkv
from mat_fast.ops.window_attention.reference import (
    window_attention_qkv_reference,
    window_attention_reference,
)

from ..helpers.asserts import assert_close_verbose
from ..helpers.backends import TRITON
from ..helpers.triton_interpreter import DEVICE
from ..helpers.window_attention_cases import (
    make_mask,
    triton_env,  # noqa: F401 (an autouse fixture: importing it turns it on here)
    wat,
)

#: The backends with a fused projection + attention kernel (the others compose, below).
KERNELS = {"triton": wat.window_attention_qkv_triton}


def make_inputs(B, H, W, C, mask_kind, seed, dtype=torch.float32, window=8, shift=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H * W, C, generator=gen) * 3
    weight = torch.randn(3 * C, C, generator=gen) / C**0.5
    b = torch.randn(3 * C, generator=gen) if bias else None
    mask = make_mask(mask_kind, B, H, W, window, shift, gen)
    to = dict(device=DEVICE)
    return (
        x.to(dtype=dtype, **to),
        weight.to(**to),
        None if b is None else b.to(**to),
        None if mask is None else mask.to(dtype=dtype, **to),
    )


def run(fn, x, weight, bias, mask, geo, grad_seed=1):
    """Forward and gradients of sum(out * g) w.r.t. x, weight and bias."""
    leaves = [
        t.detach().clone().requires_grad_(True)
        for t in (x, weight) + ((bias,) if bias is not None else ())
    ]
    out, new_mask = fn(leaves[0], leaves[1], leaves[2] if bias is not None else None, mask, *geo)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    grads = torch.autograd.grad(out, leaves, g)
    return out.detach(), new_mask, grads


# (B, H, W, C, heads, window, shift)
GEOMETRIES = [
    pytest.param((1, 16, 16, 12, 2, 8, 0), id="w8-16x16-b1"),
    pytest.param((2, 16, 24, 12, 2, 8, 4), id="w8s4-16x24-b2"),  # rectangular, shifted, batch 2
    pytest.param((2, 16, 16, 12, 2, 16, 8), id="w16s8-16x16-b2"),  # 256 tokens in 64-token tiles
]


@pytest.mark.parametrize("mask_kind", ["none", "binary", "invalid", "nonbinary"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("backend_name", [TRITON])
def test_fused_fp32_matches_reference(backend_name, geometry, mask_kind):
    B, H, W, C, heads, window, shift = geometry
    x, weight, bias, mask = make_inputs(
        B, H, W, C, mask_kind, seed=H * W + shift, window=window, shift=shift
    )
    geo = ((H, W), window, shift, heads)
    out, new_mask, grads = run(KERNELS[backend_name], x, weight, bias, mask, geo)
    r_out, r_mask, r_grads = run(window_attention_qkv_reference, x, weight, bias, mask, geo)
    assert out.shape == (B, H * W, C) and out.dtype == x.dtype
    assert_close_verbose(out, r_out, rtol=1e-5, what="out")
    if mask is None:
        assert new_mask is None
    else:
        assert torch.equal(new_mask, r_mask)
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, r_grads):
        assert_close_verbose(got, want, rtol=1e-4, what=name)


@pytest.mark.parametrize("backend_name", [TRITON])
def test_fused_real_head_dim_without_bias(backend_name):
    """MAT's 6 heads of 30 (head_dim padded to 32 in the kernel), no bias."""
    B, H, W, C, heads, window, shift = 1, 16, 16, 180, 6, 8, 4
    x, weight, _, mask = make_inputs(
        B, H, W, C, "binary", seed=7, window=window, shift=shift, bias=False
    )
    geo = ((H, W), window, shift, heads)
    out, _, grads = run(KERNELS[backend_name], x, weight, None, mask, geo)
    r_out, _, r_grads = run(window_attention_qkv_reference, x, weight, None, mask, geo)
    assert_close_verbose(out, r_out, rtol=1e-5, what="out")
    for name, got, want in zip(("dx", "dweight"), grads, r_grads):
        assert_close_verbose(got, want, rtol=1e-4, what=name)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize(
    "dtype,floor", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)], ids=["fp16", "bf16"]
)
@pytest.mark.parametrize("geometry", GEOMETRIES[1:])
@pytest.mark.parametrize("backend_name", [TRITON])
def test_fused_low_precision_within_twice_reference_error(backend_name, geometry, dtype, floor):
    """Error vs the fp32 reference at most twice the reference's own error in ``dtype``
    (forward and gradients), plus a small floor for near-exact cases."""
    B, H, W, C, heads, window, shift = geometry
    x, weight, bias, mask = make_inputs(B, H, W, C, "invalid", seed=5, window=window, shift=shift)
    geo = ((H, W), window, shift, heads)
    gold = run(window_attention_qkv_reference, x, weight, bias, mask, geo)
    mask_lp = mask.to(dtype)
    ref_lp = run(window_attention_qkv_reference, x.to(dtype), weight, bias, mask_lp, geo)
    fused = run(KERNELS[backend_name], x.to(dtype), weight, bias, mask_lp, geo)
    assert fused[0].dtype == dtype
    pairs = [("out", fused[0], ref_lp[0], gold[0])]
    pairs += [
        (n, f, r, g) for n, f, r, g in zip(("dx", "dweight", "dbias"), fused[2], ref_lp[2], gold[2])
    ]
    for name, got, ref, want in pairs:
        assert torch.isfinite(got).all(), name
        err, ref_err = _rel(got, want), _rel(ref, want)
        assert err <= 2 * ref_err + floor, (
            f"{name}: fused error {err:.2e} vs reference {ref_err:.2e} in {dtype}"
        )
    assert torch.equal(fused[1], ref_lp[1])


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize("backend_name", [TRITON])
def test_all_zero_tokens_stay_finite(backend_name, dtype):
    """Upstream normalises in the input dtype, so fp16 turns all-zero tokens into 0/0 = NaN;
    the fused path (fp32 norms) and our reference give q = b_q, k = b_k there."""
    B, H, W, C, heads, window = 2, 16, 16, 12, 2, 8
    x, weight, bias, mask = make_inputs(B, H, W, C, "invalid", seed=3, dtype=dtype, window=window)
    x[0, : H * W // 2] = 0  # top half of image 0: whole windows of zero tokens
    x[1] = 0
    out, new_mask = KERNELS[backend_name](x, weight, bias, mask, (H, W), window, 0, heads)
    ref, ref_mask = window_attention_qkv_reference(x, weight, bias, mask, (H, W), window, 0, heads)
    gold, _ = window_attention_qkv_reference(
        x.float(), weight, bias, mask.float(), (H, W), window, 0, heads
    )
    assert torch.isfinite(out).all() and torch.isfinite(ref).all()
    assert torch.equal(new_mask, ref_mask)
    if dtype == torch.float32:
        assert_close_verbose(out, ref, rtol=1e-5, what="out")
    else:  # half: within twice the reference's own error against fp32
        assert _rel(out, gold) <= 2 * _rel(ref, gold) + 1e-3
    # a zero token's v is its bias: image 1 is all zero, so its output is b_v everywhere
    b_v = bias[2 * C :].to(dtype).float()
    assert_close_verbose(
        out[1].float(),
        b_v.expand(H * W, C),
        rtol=1e-2 if dtype != torch.float32 else 1e-6,
        what="zero image",
    )


def test_upstream_fp16_normalise_is_the_nan_we_avoid():
    """Documents why the reference normalises half inputs in fp32: upstream's exact
    expression gives NaN on an all-zero fp16 token."""
    x = torch.zeros(1, 4, dtype=torch.float16)
    upstream = x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
    assert torch.isnan(upstream).all()
    from mat_fast.ops.window_attention.reference import normalize_tokens

    assert torch.equal(normalize_tokens(x), torch.zeros_like(x))


@pytest.mark.parametrize("backend_name", [TRITON])
def test_public_op_dispatches_and_validates(backend_name):
    B, H, W, C, heads, window = 1, 16, 16, 12, 2, 8
    x, weight, bias, mask = make_inputs(B, H, W, C, "binary", seed=11)
    geo = ((H, W), window, 4, heads)
    out, new_mask = window_attention_qkv(x, weight, bias, mask, *geo, backend_name=backend_name)
    ref, ref_mask = window_attention_qkv(x, weight, bias, mask, *geo, backend_name="reference")
    assert_close_verbose(out, ref, rtol=1e-5, what="out")
    assert torch.equal(new_mask, ref_mask)
    with pytest.raises(ValueError, match=r"qkv_weight must be \(3C, C\)"):
        window_attention_qkv(x, weight[:C], bias, mask, *geo)
    with pytest.raises(ValueError, match=r"qkv_bias must be \(3C,\)"):
        window_attention_qkv(x, weight, bias[:C], mask, *geo)
    with pytest.raises(ValueError, match="does not match the grid"):
        window_attention_qkv(x, weight, bias, mask, (H, W + 8), window, 0, heads)
    with pytest.raises(ValueError, match="mask must have shape"):
        window_attention_qkv(x, weight, bias, mask[:, :-1], *geo)
    with pytest.raises(ValueError, match="do not split"):
        window_attention_qkv(x, weight, bias, mask, (H, W), window, 0, 5)


def test_backends_without_fused_projection_compose_with_their_attention(monkeypatch):
    """A backend with an attention kernel but no fused projection normalises and projects
    as upstream, then calls its own attention kernel."""
    B, H, W, C, heads, window = 2, 16, 16, 12, 2, 8
    x, weight, bias, mask = make_inputs(B, H, W, C, "nonbinary", seed=13)
    calls = []

    def spy(q, k, v, m, *geo):
        calls.append(q.shape)
        return window_attention_reference(q, k, v, m, *geo)

    monkeypatch.setitem(mat_fast.backend._REGISTRY["window_attention"], "cpu", spy)
    monkeypatch.setitem(mat_fast.backend._PROBES, "cpu", lambda device_type: None)
    out, new_mask = window_attention_qkv(
        x, weight, bias, mask, (H, W), window, 4, heads, backend_name="cpu"
    )
    ref, ref_mask = window_attention_qkv_reference(x, weight, bias, mask, (H, W), window, 4, heads)
    assert calls == [(B, H * W, C)]
    assert_close_verbose(out, ref, rtol=1e-5, what="out")
    assert torch.equal(new_mask, ref_mask)


def test_reference_is_upstreams_block_chain():
    """The twin is upstream's WindowAttention arithmetic: F.normalize, then the three
    equalised-lr linears (x @ W^T + b), then the attention; bit for bit in fp32."""
    B, H, W, C, heads, window = 1, 16, 16, 12, 2, 8
    x, weight, bias, mask = make_inputs(B, H, W, C, "binary", seed=17)
    norm_x = F.normalize(x, p=2.0, dim=-1)
    wq, wk, wv = weight.split(C)
    bq, bk, bv = bias.split(C)
    q, k, v = norm_x.matmul(wq.t()) + bq, norm_x.matmul(wk.t()) + bk, x.matmul(wv.t()) + bv
    want = window_attention_reference(q, k, v, mask, (H, W), window, 4, heads)
    got = window_attention_qkv_reference(x, weight, bias, mask, (H, W), window, 4, heads)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fused_op_fake_and_opcheck():
    B, H, W, C, heads, window = 1, 16, 16, 12, 2, 8
    x, weight, bias, mask = make_inputs(B, H, W, C, "binary", seed=19)
    qkv = F.linear(x, weight).contiguous()
    inv = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12).reciprocal()
    args = (qkv, inv, bias, mask, H, W, window, 4, heads, False)
    torch.library.opcheck(
        torch.ops.mat_fast.window_attention_qkv_fwd.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args]
        out, new_mask, lse = torch.ops.mat_fast.window_attention_qkv_fwd(*fake)
    assert (
        out.shape == (B, H * W, C)
        and new_mask.shape == (B, H * W, 1)
        and lse.shape == (B, heads, H * W)
    )


def test_torch_compile_captures_the_fused_path():
    """GEMM + fp32 norms + the custom op trace into one graph (aot_eager: no C++ compiler
    needed on CPU), forward and backward, with the eager numbers."""
    B, H, W, C, heads = 1, 16, 16, 12, 2
    x, weight, bias, mask = make_inputs(B, H, W, C, "binary", seed=23)

    def f(x, weight, bias, mask, *geo):
        out, new_mask = wat.window_attention_qkv_triton(x, weight, bias, mask, (H, W), 8, 4, heads)
        return out * 2, new_mask

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager, traced = run(f, x, weight, bias, mask, ()), run(compiled, x, weight, bias, mask, ())
    assert torch.equal(eager[0], traced[0]) and torch.equal(eager[1], traced[1])
    for g, cg in zip(eager[2], traced[2]):
        assert_close_verbose(cg, g, rtol=1e-6, what="grad")
