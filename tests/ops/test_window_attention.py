"""Window attention on every backend against its reference twin, the backend a parametrised
axis: ``cpu`` (the C++ extension), ``triton`` (Triton's interpreter on CPU without a GPU:
small shapes, mostly 2 heads of 6 channels, plus MAT's real 6 heads of 30), ``cuda`` (the
CUDA extension, GPU only). Outputs, new masks and gradients (dq, dk, dv) over windows
3/8/16, shift 0/half, masks none/binary/fully invalid windows/non-binary, fp32/bf16/fp16,
B = 1/2, square and rectangular grids; every kernel output is NaN-poisoned first, so an
element a kernel forgets to write fails. Each backend has its own case table (the Triton
interpreter is slow; the C++ kernel runs MAT's real C = 180).

Tolerances (flash-attention's rule): fp32 within 1e-5 of max|ref| (Triton's gradients
2e-5); fp16/bf16 error against the fp32 reference at most twice the reference's own
low-precision error, plus a floor. The twin itself is checked against a brute-force
definition in test_window_attention_reference.py; the C++ kernel's instruction-set variants
and scratch reuse in test_window_attention_cpu_kernel.py; the Triton custom op (fake,
torch.compile, model level, GPU stage shapes, the sm_90 build) in
test_window_attention_triton_graph.py.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.ops.window_attention import window_attention
from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose, assert_lowp_close
from ..helpers.backends import CPU, TRITON, device_of, native_kernels
from ..helpers.triton_interpreter import INTERPRET
from ..helpers.window_attention_cases import (
    make_inputs,
    make_mask,
    run,
    triton_env,  # noqa: F401 (an autouse fixture: importing it turns it on here)
    up,
    wat,
)

pytestmark = pytest.mark.usefixtures("poison_outputs")

DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def kernel(backend_name: str):
    if backend_name == "triton":
        return wat.window_attention_triton
    wa_native, _ = native_kernels(backend_name)
    return wa_native.window_attention_native


def _table(backend_name, geometries, masks, dtypes, slow=False):
    """pytest params (backend, geometry, mask kind, dtype); geometries: {id: (B, H, W, C,
    heads, window, shift)}."""
    marks = [pytest.mark.gpu] if backend_name == "cuda" else []
    marks += [pytest.mark.slow] if slow else []
    return [
        pytest.param(
            backend_name,
            geo,
            mask,
            dtype,
            id=f"{backend_name}-{gid}-{mask}-{DTYPE_IDS[dtype]}",
            marks=marks,
        )
        for gid, geo in geometries.items()
        for mask in masks
        for dtype in dtypes
    ]


# The native kernels: (B, H, W, C, heads, window), each at shift 0 and half a window.
_NATIVE_WINDOWS = [
    (1, 16, 16, 180, 6, 8),  # MAT's stage shape, minimal grid
    (2, 16, 32, 180, 6, 8),  # rectangular, batch 2
    (1, 32, 32, 32, 2, 16),  # 256-token windows
    (2, 32, 16, 180, 6, 16),  # rectangular, 256-token windows, real C
    (1, 6, 9, 12, 2, 3),  # non-aligned: 9-token windows, head_dim 6
]
NATIVE_GEOMETRIES = {
    "B{}_{}x{}_C{}_h{}_w{}".format(*case) + f"_s{shift}": (*case, shift)
    for case in _NATIVE_WINDOWS
    for shift in (0, case[-1] // 2)
}
NATIVE_MASKS = ["none", "binary", "invalid_rows", "soft"]
ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Triton's interpreter: 2 heads of 6 channels, and MAT's 6 heads of 30 (padded to 32 inside)
TRITON_GEOMETRIES = {
    "w8-16x16-b1": (1, 16, 16, 12, 2, 8, 0),  # minimal: 4 windows
    "w8s4-16x24-b2": (2, 16, 24, 12, 2, 8, 4),  # rectangular, shifted, batch 2
    "w16-16x32-b1": (1, 16, 32, 12, 2, 16, 0),  # 256 tokens: 4x4 tiles, online softmax
}
# tall, shifted, 256 tokens, batch 2: ~10 s per case in the interpreter, so the quick run
# keeps its two hardest masks in fp32 and CI (slow) runs the rest
TRITON_LARGE = {"w16s8-32x16-b2": (2, 32, 16, 12, 2, 16, 8)}
PARITY_CASES = (
    _table("cpu", NATIVE_GEOMETRIES, NATIVE_MASKS, ALL_DTYPES)
    + _table(
        "triton", TRITON_GEOMETRIES, ["none", "binary", "invalid", "nonbinary"], [torch.float32]
    )
    + _table("triton", TRITON_LARGE, ["invalid", "nonbinary"], [torch.float32])
    + _table("triton", TRITON_LARGE, ["none", "binary"], [torch.float32], slow=True)
    + _table("triton", {"C180-w8s4": (1, 16, 16, 180, 6, 8, 4)}, ["binary"], [torch.float32])
    + _table("triton", {"C180-w16": (1, 16, 16, 180, 6, 16, 0)}, ["invalid"], [torch.float32])
    # random holes + fully invalid windows
    + _table("triton", TRITON_GEOMETRIES, ["invalid"], [torch.float16, torch.bfloat16])
    + _table("triton", TRITON_LARGE, ["invalid"], [torch.float16, torch.bfloat16], slow=True)
    + _table("cuda", NATIVE_GEOMETRIES, NATIVE_MASKS, ALL_DTYPES)
)
GRAD_RTOL = {"cpu": 1e-5, "cuda": 1e-5, "triton": 2e-5}
#: the floor of the low-precision rule, x max|ref|
FLOORS = {
    "cpu": {torch.float16: 2e-3, torch.bfloat16: 2e-3},
    "cuda": {torch.float16: 2e-3, torch.bfloat16: 2e-3},
    "triton": {torch.float16: 1e-3, torch.bfloat16: 8e-3},
}


@pytest.mark.parametrize("backend_name,geometry,mask_kind,dtype", PARITY_CASES)
def test_matches_reference(backend_name, geometry, mask_kind, dtype):
    B, H, W, C, heads, window, shift = geometry
    device = device_of(backend_name)
    q, k, v, mask = make_inputs(
        B, H, W, C, mask_kind, H * W + shift, dtype, window, shift, device=device
    )
    geo = ((H, W), window, shift, heads)
    out, new_mask, grads = run(kernel(backend_name), q, k, v, mask, geo)
    assert out.dtype == dtype and out.shape == q.shape
    # fp32 reference on the same (rounded) inputs
    r_out, r_mask, r_grads = run(window_attention_reference, up(q), up(k), up(v), up(mask), geo)
    if dtype == torch.float32:
        assert_close_verbose(out, r_out, rtol=1e-5, what="out")
        for name, g, rg in zip("qkv", grads, r_grads):
            assert_close_verbose(g, rg, rtol=GRAD_RTOL[backend_name], what=f"d{name}")
    else:
        lp_out, _, lp_grads = run(window_attention_reference, q, k, v, mask, geo)
        floor = FLOORS[backend_name][dtype]
        assert_lowp_close(out, lp_out, r_out, "out", floor)
        for name, g, lg, rg in zip("qkv", grads, lp_grads, r_grads):
            assert g.dtype == dtype
            assert_lowp_close(g, lg, rg, f"d{name}", floor)
    if mask is None:
        assert new_mask is None
        return
    assert new_mask.dtype == mask.dtype and new_mask.shape == mask.shape
    assert not new_mask.requires_grad
    if backend_name == "cuda":
        assert_close_verbose(new_mask.float(), r_mask, rtol=1e-2, what="new_mask")
    elif mask_kind == "soft":  # the C++ kernel's sums in another order
        rtol = 1e-6 if dtype == torch.float32 else 1e-2
        assert_close_verbose(new_mask, r_mask, rtol=rtol, what="new_mask")
    else:
        assert torch.equal(new_mask.float(), r_mask), "new_mask"


# ---------------------------------------------------------------------------------------
# Edge cases


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_zero_tokens_and_invalid_windows_are_finite(backend_name, dtype):
    # All-zero tokens in windows whose every key is a hole: uniform softmax, zero output.
    B, H, W, C, heads = 2, 16, 16, 12, 2
    q, k, v, mask = make_inputs(
        B, H, W, C, "invalid", 2, dtype, window=8, shift=4, device=device_of(backend_name)
    )
    q[0], k[0], v[0] = 0, 0, 0
    geo = ((H, W), 8, 4, heads)
    out, new_mask, grads = run(kernel(backend_name), q, k, v, mask, geo)
    r_out, r_mask, r_grads = run(window_attention_reference, up(q), up(k), up(v), up(mask), geo)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(out[0].float(), torch.zeros_like(r_out[0]))
    assert torch.equal(new_mask.float(), r_mask) and bool((new_mask[1] == 0).all())
    assert_close_verbose(
        out.float(), r_out, rtol=1e-2 if dtype != torch.float32 else 1e-5, what="out"
    )


@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_fp16_large_logits_stay_finite(backend_name):
    # |q.k| beyond fp16's range: the fp16 reference overflows to inf/NaN, fp32 accumulation doesn't.
    B, H, W, C, heads = 1, 8, 8, 60, 2
    q, k, v, mask = make_inputs(
        B, H, W, C, "binary", 3, torch.float16, device=device_of(backend_name)
    )
    q, k = q.abs() * 60, k.abs() * 60
    out, _ = kernel(backend_name)(q, k, v, mask, (H, W), 8, 0, heads)
    r_out, _ = window_attention_reference(up(q), up(k), up(v), up(mask), (H, W), 8, 0, heads)
    lp_out, _ = window_attention_reference(q, k, v, mask, (H, W), 8, 0, heads)
    assert not torch.isfinite(lp_out).all(), "case no longer overflows the fp16 reference"
    assert torch.isfinite(out).all()
    assert_close_verbose(out.float(), r_out, rtol=2e-3, what="out")


@pytest.mark.parametrize("backend_name", [TRITON])
def test_mask_dtype_kept_and_mask_gets_no_gradient(backend_name):
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(
        B, H, W, C, "nonbinary", 4, torch.float16, device=device_of(backend_name)
    )
    mask = mask.float().requires_grad_(True)
    q.requires_grad_(True)
    out, new_mask = kernel(backend_name)(q, k, v, mask, (H, W), 8, 0, heads)
    assert new_mask.dtype == torch.float32 and not new_mask.requires_grad
    out.float().sum().backward()
    assert mask.grad is None and q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("backend_name", [TRITON])
def test_non_contiguous_inputs_and_tf32_flag(backend_name):
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "binary", 6, device=device_of(backend_name))
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, channel-major strides
    assert not qt.is_contiguous()
    ref, _ = window_attention_reference(q, k, v, mask, (H, W), 8, 4, heads)
    out, _ = kernel(backend_name)(qt, k, v, mask, (H, W), 8, 4, heads)
    assert_close_verbose(out, ref, rtol=1e-5, what="non-contiguous q")
    out, _ = kernel(backend_name)(q, k, v, mask, (H, W), 8, 4, heads, allow_tf32=True)
    assert_close_verbose(out, ref, rtol=2e-2, what="allow_tf32")  # TF32 on GPU, IEEE otherwise


@pytest.mark.parametrize("backend_name", [CPU])
def test_strided_inputs_through_the_public_op(backend_name):
    """Non-contiguous q/k/v/mask (as the model's transposed feature views), through the
    public op with the backend forced per call."""
    native_kernels(backend_name)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 180, 256, generator=g).transpose(1, 2) for _ in range(3))
    mask = (torch.rand(2, 1, 256, generator=g) > 0.3).float().transpose(1, 2)
    out, new_mask = window_attention(q, k, v, mask, (16, 16), 8, 4, 6, backend_name=backend_name)
    ref_out, ref_mask = window_attention_reference(q, k, v, mask, (16, 16), 8, 4, 6)
    assert_close_verbose(out, ref_out, rtol=1e-5, what="out")
    assert torch.equal(new_mask, ref_mask)


@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_dispatcher_and_backend_reach_the_kernel(backend_name):
    device = device_of(backend_name)
    fn = kernel(backend_name)  # (builds or loads the native extension first)
    assert backend._PROBES[backend_name](device.type) is None
    B, H, W, C, heads = 1, 16, 16, 12, 2
    q, k, v, mask = make_inputs(B, H, W, C, "binary", 7, device=device)
    ref, ref_mask = window_attention_reference(q, k, v, mask, (H, W), 8, 0, heads)
    with mat_fast.use_backend(backend_name):
        assert backend.implementation("window_attention", device) is fn
        out, new_mask = window_attention(q, k, v, mask, (H, W), 8, 0, heads)
    assert_close_verbose(out, ref, rtol=1e-5, what="out")
    assert torch.equal(new_mask, ref_mask)


# ---------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("backend_name", [TRITON])
def test_kernel_rejects_bad_inputs_clearly(backend_name):
    q, k, v, mask = make_inputs(1, 16, 16, 12, "binary", 8, device=device_of(backend_name))
    f = kernel(backend_name)
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
    if INTERPRET:
        with pytest.raises(ValueError, match="do not run on meta"):
            f(q.to("meta"), k.to("meta"), v.to("meta"), None, (16, 16), 8, 0, 2)


@pytest.mark.parametrize("backend_name", [CPU])
def test_native_op_rejects_bad_arguments(backend_name):
    native_kernels(backend_name)
    ops = torch.ops.mat_fast_native
    q = torch.randn(1, 64, 12)
    with pytest.raises(RuntimeError, match="not a multiple of the window"):
        ops.window_attention(q, q, q, None, 8, 8, 3, 0, 2)
    with pytest.raises(RuntimeError, match="do not split into"):
        ops.window_attention(q, q, q, None, 8, 8, 4, 0, 5)
    # A negative grid passes the product and divisibility checks; it must not index memory.
    with pytest.raises(RuntimeError, match="not a multiple of the window"):
        ops.window_attention(q, q, q, None, -8, -8, 4, 0, 2)
    with pytest.raises(RuntimeError, match="bad window"):
        ops.window_mask_update(torch.ones(1, 16, 1), -4, -4, 4, 0)


# ---------------------------------------------------------------------------------------
# Gradients in fp64, second derivatives, custom ops


@pytest.mark.parametrize("backend_name", [CPU])
def test_gradcheck_fp64(backend_name):
    fn_ = kernel(backend_name)
    g = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(1, 32, 6, generator=g, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    )
    mask = make_mask("soft", 1, 4, 8, 4, 2, g).double()
    fn = lambda a, b, c: fn_(a, b, c, mask, (4, 8), 4, 2, 2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("backend_name", [CPU])
def test_second_derivative_is_the_references(backend_name):
    """Gradients taken with create_graph=True run through the reference (the backward
    kernel has no derivative), so differentiating them again gives the reference's second
    derivative; torch's fallback for a C++ op without a formula would give zeros."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 16, 4, generator=g, requires_grad=True) for _ in range(3))
    out, _ = kernel(backend_name)(q, k, v, None, (4, 4), 4, 0, 2)
    (dq,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    ref_out, _ = window_attention_reference(q, k, v, None, (4, 4), 4, 0, 2)
    (ref_dq,) = torch.autograd.grad(ref_out.pow(2).sum(), q, create_graph=True)
    assert_close_verbose(dq, ref_dq, rtol=1e-5, what="dq")
    second = torch.autograd.grad(dq.pow(2).sum(), (q, k, v))
    ref_second = torch.autograd.grad(ref_dq.pow(2).sum(), (q, k, v))
    for name, got, want in zip("qkv", second, ref_second):
        assert want.abs().max() > 0
        assert_close_verbose(got, want, rtol=1e-5, what=f"d(|dq|^2)/d{name}")


@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_opcheck(backend_name):
    """Schema, autograd registration, fake tensor and AOT dispatch checks on a tiny case."""
    if backend_name == "triton":
        q, k, v, mask = make_inputs(1, 8, 8, 32, "binary", 9, device=device_of(backend_name))
        q.requires_grad_(True)
        fwd = torch.ops.mat_fast.window_attention_fwd.default
        torch.library.opcheck(fwd, (q, k, v, mask, 8, 8, 8, 4, 2, False))
        out, _, lse = fwd(q, k, v, mask, 8, 8, 8, 4, 2, False)
        torch.library.opcheck(
            torch.ops.mat_fast.window_attention_bwd.default,
            (torch.randn_like(out), q.detach(), k, v, mask, out.detach(), lse)
            + (8, 8, 8, 4, 2, False),
            test_utils=("test_schema", "test_faketensor"),
        )
        return
    native_kernels(backend_name)
    ops = torch.ops.mat_fast_native
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 64, 12, generator=g, requires_grad=True) for _ in range(3))
    mask = make_mask("soft", 2, 8, 8, 4, 2, g)
    torch.library.opcheck(ops.window_attention.default, (q, k, v, mask, 8, 8, 4, 2, 2))
    torch.library.opcheck(ops.window_attention.default, (q, k, v, None, 8, 8, 4, 0, 2))
    torch.library.opcheck(
        ops.window_attention_backward.default,
        (torch.randn(2, 64, 12), q.detach(), k.detach(), v.detach(), mask, 8, 8, 4, 2, 2),
    )
    torch.library.opcheck(ops.window_mask_update.default, (mask, 8, 8, 4, 2))
