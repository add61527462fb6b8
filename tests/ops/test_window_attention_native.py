"""Native (C++ / CUDA) window attention against its reference twin.

* outputs, new masks and gradients (dq, dk, dv) vs the reference op and
  its autograd, over window 8/16, shift 0/half, mask none/binary/fully-invalid windows/
  non-binary, fp32/bf16/fp16, B = 1/2, square and rectangular grids, MAT's real C = 180 / 6 heads;
* every kernel output is NaN-poisoned before the kernel runs (MAT_FAST_POISON_OUTPUTS=1),
  so an element a kernel forgets to write fails the finiteness checks;

Tolerances (flash-attention's rule): fp32 within 1e-5 of max|ref|; bf16 error against the
fp32 reference at most twice the reference's own bf16 error, plus a small floor.
CUDA variants are marked ``gpu``. The first test builds the extension (about a minute on
two cores; cached afterwards in ~/.cache/mat_fast/ext or $MAT_FAST_CACHE/ext); the build
itself is tested in test_native_build.py.
"""

from __future__ import annotations

import pytest
import torch

from mat_fast.ops import native_build
from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose, assert_finite, rel_err

pytestmark = pytest.mark.usefixtures("poison_outputs")


# ---------------------------------------------------------------------------------------
# Window attention

WINDOW_CASES = [
    # (B, H, W, C, heads, window)
    (1, 16, 16, 180, 6, 8),  # MAT's stage shape, minimal grid
    (2, 16, 32, 180, 6, 8),  # rectangular, batch 2
    (1, 32, 32, 32, 2, 16),  # 256-token windows
    (2, 32, 16, 180, 6, 16),  # rectangular, 256-token windows, real C
    (1, 6, 9, 12, 2, 3),  # non-aligned: 9-token windows, head_dim 6
]
MASKS = ["none", "binary", "invalid_windows", "non_binary"]


def make_mask(kind: str, B: int, H: int, W: int, generator: torch.Generator):
    if kind == "none":
        return None
    if kind == "non_binary":  # exact 0s and 1s mixed with values added as logit bias
        m = torch.rand(B, H * W, 1, generator=generator)
        m[m < 0.2] = 0
        m[m > 0.8] = 1
        return m
    m = (torch.rand(B, H * W, 1, generator=generator) > 0.5).float()
    if kind == "invalid_windows":
        # Rows [0, H - H//4) all holes: whole windows are invalid for shift 0 and w/2.
        m.view(B, H, W)[:, : H - H // 4] = 0
    return m


def window_inputs(B, H, W, C, dtype, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H * W, C, generator=g).to(dtype) for _ in range(3))
    grad = torch.randn(B, H * W, C, generator=g).to(dtype)
    mask = make_mask(mask_kind, B, H, W, g)
    return q, k, v, (None if mask is None else mask.to(dtype)), grad


def run_with_grads(fn, q, k, v, mask, grad, *geometry):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, new_mask = fn(q, k, v, mask, *geometry)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out.detach(), new_mask, (dq, dk, dv)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shifted", [False, True], ids=["shift0", "shifthalf"])
@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: "B{}_{}x{}_C{}_h{}_w{}".format(*c))
def test_window_attention_matches_reference(native_ops, case, shifted, mask_kind, dtype):
    wa_native, _ = native_ops
    B, H, W, C, heads, window = case
    geometry = ((H, W), window, window // 2 if shifted else 0, heads)
    q, k, v, mask, grad = window_inputs(B, H, W, C, dtype, mask_kind)

    out, new_mask, grads = run_with_grads(
        wa_native.window_attention_native, q, k, v, mask, grad, *geometry
    )
    assert out.dtype == dtype and out.shape == q.shape
    assert_finite(out, "out")
    for name, g in zip("qkv", grads):
        assert_finite(g, f"d{name}")

    # fp32 reference on the same (rounded) inputs
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref_out, ref_mask, ref_grads = run_with_grads(
        window_attention_reference, f32(q), f32(k), f32(v), f32(mask), f32(grad), *geometry
    )
    if dtype == torch.float32:
        assert_close_verbose(out, ref_out, rtol=1e-5, what="out")
        for name, g, r in zip("qkv", grads, ref_grads):
            assert_close_verbose(g, r, rtol=1e-5, what=f"d{name}")
    else:
        low_out, _, low_grads = run_with_grads(
            window_attention_reference, q, k, v, mask, grad, *geometry
        )
        for name, mine, low, ref in [("out", out, low_out, ref_out)] + [
            (f"d{n}", a, b, c) for n, a, b, c in zip("qkv", grads, low_grads, ref_grads)
        ]:
            mine_err, low_err = rel_err(mine, ref), rel_err(low, ref)
            assert mine_err <= 2 * low_err + 2e-3, (
                f"{name}: native {dtype} error {mine_err:.3g} vs reference-in-{dtype} error {low_err:.3g}"
            )

    if mask is None:
        assert new_mask is None
    else:
        assert new_mask.dtype == mask.dtype and new_mask.shape == mask.shape
        assert_finite(new_mask, "new_mask")
        if mask_kind == "non_binary":
            assert_close_verbose(
                new_mask, ref_mask, rtol=1e-6 if dtype == torch.float32 else 1e-2, what="new_mask"
            )
        else:
            assert torch.equal(new_mask.float(), ref_mask), "new_mask differs"


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_cpu_instruction_set_variant(native_ops, monkeypatch, isa, dtype):
    """The tile math is compiled per instruction set; MAT_FAST_CPU_ISA caps the choice (a
    CPU without the set runs the best one it has, which is checked just the same)."""
    wa_native, _ = native_ops
    monkeypatch.setenv("MAT_FAST_CPU_ISA", isa)
    q, k, v, mask, grad = window_inputs(2, 16, 16, 180, dtype, "non_binary", seed=1)
    geometry = ((16, 16), 8, 4, 6)
    out, _, grads = run_with_grads(
        wa_native.window_attention_native, q, k, v, mask, grad, *geometry
    )
    ref_out, _, ref_grads = run_with_grads(
        window_attention_reference, q, k, v, mask, grad, *geometry
    )
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close_verbose(out, ref_out, rtol=rtol, what=f"out ({isa})")
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_close_verbose(g, r, rtol=rtol, what=f"d{name} ({isa})")


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_softmax_underflow_and_nan_follow_the_reference(native_ops, monkeypatch, isa):
    """The fp32 kernels' exp skips clamping and drops lanes below -87.3 at the end: logits
    thousands apart must give exact zeros there (no garbage from the exponent bits), and a
    NaN key must poison exactly its window's rows, as in the reference."""
    wa_native, _ = native_ops
    monkeypatch.setenv("MAT_FAST_CPU_ISA", isa)
    g = torch.Generator().manual_seed(3)
    # Integer-valued q and k: logits are exact whatever the summation order, so the
    # comparison sees only the softmax. Spread up to thousands; v keeps outputs O(1).
    q, k = (torch.randint(-40, 41, (2, 256, 60), generator=g).float() for _ in range(2))
    v = torch.randn(2, 256, 60, generator=g)
    k[1, 17, 35] = float("nan")  # image 1, window 0 (8x8 windows on the 16x16 grid), head 1
    geometry = ((16, 16), 8, 0, 2)
    out, _ = wa_native.window_attention_native(q, k, v, None, *geometry)
    ref, _ = window_attention_reference(q, k, v, None, *geometry)
    assert torch.equal(out.isnan(), ref.isnan()), "NaN rows differ from the reference"
    nan_rows = out.isnan().any(-1)
    assert nan_rows.sum() == 64 and nan_rows[1, :8].all(), "the NaN key must reach its window only"
    finite = ~ref.isnan()
    assert_close_verbose(out[finite], ref[finite], rtol=1e-5, what=f"out ({isa})")


def test_scratch_kept_between_calls_never_leaks_state(native_ops):
    """Each thread keeps scratch buffers for 4 window shapes across calls. Cycle through 6
    geometries (evictions), with and without shift and mask, grids of different sizes sharing
    one window shape, and a backward in between: every call must match the reference."""
    wa_native, _ = native_ops
    geometries = [  # (H, W, C, heads, window, shift, mask_kind)
        (32, 16, 180, 6, 8, 0, "none"),
        (16, 16, 180, 6, 8, 4, "invalid_windows"),  # same window shape, other grid, shifted
        (16, 16, 32, 2, 16, 8, "binary"),
        (6, 9, 12, 2, 3, 0, "non_binary"),
        (8, 8, 60, 2, 4, 2, "binary"),
        (16, 16, 64, 4, 8, 0, "non_binary"),
    ]
    for round_ in range(2):
        for i, (H, W, C, heads, window, shift, mask_kind) in enumerate(geometries):
            q, k, v, mask, grad = window_inputs(
                2, H, W, C, torch.float32, mask_kind, seed=10 * round_ + i
            )
            geometry = ((H, W), window, shift, heads)
            if i == 2:  # a backward call in the middle uses (and keeps) its own scratch
                _, _, grads = run_with_grads(
                    wa_native.window_attention_native, q, k, v, mask, grad, *geometry
                )
                _, _, ref_grads = run_with_grads(
                    window_attention_reference, q, k, v, mask, grad, *geometry
                )
                for name, g_, r in zip("qkv", grads, ref_grads):
                    assert_close_verbose(
                        g_, r, rtol=1e-5, what=f"d{name}, geometry {i}, round {round_}"
                    )
            out, _ = wa_native.window_attention_native(q, k, v, mask, *geometry)
            ref, _ = window_attention_reference(q, k, v, mask, *geometry)
            assert_close_verbose(out, ref, rtol=1e-5, what=f"out, geometry {i}, round {round_}")


def test_window_attention_gradcheck(native_ops):
    wa_native, _ = native_ops
    g = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(1, 32, 6, generator=g, dtype=torch.float64, requires_grad=True)
        for _ in range(3)
    )
    mask = make_mask("non_binary", 1, 4, 8, g).double()
    fn = lambda a, b, c: wa_native.window_attention_native(a, b, c, mask, (4, 8), 4, 2, 2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_window_attention_strided_inputs_and_public_dispatch(native_ops):
    """Non-contiguous q/k/v/mask (as the model's transposed feature views), through the
    public op with the backend forced per call."""
    from mat_fast.ops.window_attention import window_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 180, 256, generator=g).transpose(1, 2) for _ in range(3))
    mask = (torch.rand(2, 1, 256, generator=g) > 0.3).float().transpose(1, 2)
    out, new_mask = window_attention(q, k, v, mask, (16, 16), 8, 4, 6, backend_name="cpu")
    ref_out, ref_mask = window_attention_reference(q, k, v, mask, (16, 16), 8, 4, 6)
    assert_close_verbose(out, ref_out, rtol=1e-5, what="out")
    assert torch.equal(new_mask, ref_mask)


def test_window_attention_opcheck(native_ops):
    ops = torch.ops.mat_fast_native
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 64, 12, generator=g, requires_grad=True) for _ in range(3))
    mask = make_mask("non_binary", 2, 8, 8, g)
    torch.library.opcheck(ops.window_attention.default, (q, k, v, mask, 8, 8, 4, 2, 2))
    torch.library.opcheck(ops.window_attention.default, (q, k, v, None, 8, 8, 4, 0, 2))
    torch.library.opcheck(
        ops.window_attention_backward.default,
        (torch.randn(2, 64, 12), q.detach(), k.detach(), v.detach(), mask, 8, 8, 4, 2, 2),
    )
    torch.library.opcheck(ops.window_mask_update.default, (mask, 8, 8, 4, 2))


def test_window_attention_rejects_bad_arguments(native_ops):
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


def test_window_attention_second_derivative_is_the_references(native_ops):
    """Gradients taken with create_graph=True run through the reference (the backward
    kernel has no derivative), so differentiating them again gives the reference's second
    derivative; torch's fallback for a C++ op without a formula would give zeros."""
    wa_native, _ = native_ops
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 16, 4, generator=g, requires_grad=True) for _ in range(3))
    out, _ = wa_native.window_attention_native(q, k, v, None, (4, 4), 4, 0, 2)
    (dq,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    ref_out, _ = window_attention_reference(q, k, v, None, (4, 4), 4, 0, 2)
    (ref_dq,) = torch.autograd.grad(ref_out.pow(2).sum(), q, create_graph=True)
    assert_close_verbose(dq, ref_dq, rtol=1e-5, what="dq")
    second = torch.autograd.grad(dq.pow(2).sum(), (q, k, v))
    ref_second = torch.autograd.grad(ref_dq.pow(2).sum(), (q, k, v))
    for name, got, want in zip("qkv", second, ref_second):
        assert want.abs().max() > 0
        assert_close_verbose(got, want, rtol=1e-5, what=f"d(|dq|^2)/d{name}")


# ---------------------------------------------------------------------------------------
# Partial convolution


# ---------------------------------------------------------------------------------------
# Whole generator


# ---------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shifted", [False, True], ids=["shift0", "shifthalf"])
@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: "B{}_{}x{}_C{}_h{}_w{}".format(*c))
def test_cuda_window_attention_matches_reference(case, shifted, mask_kind, dtype):
    reason = native_build.probe("cuda", "cuda")
    if reason is not None:
        pytest.fail(reason)
    from mat_fast.ops.window_attention.native import window_attention_native

    B, H, W, C, heads, window = case
    geometry = ((H, W), window, window // 2 if shifted else 0, heads)
    q, k, v, mask, grad = (
        None if t is None else t.cuda() for t in window_inputs(B, H, W, C, dtype, mask_kind)
    )
    out, new_mask, grads = run_with_grads(window_attention_native, q, k, v, mask, grad, *geometry)
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref_out, ref_mask, ref_grads = run_with_grads(
        window_attention_reference, f32(q), f32(k), f32(v), f32(mask), f32(grad), *geometry
    )
    low_out, _, low_grads = run_with_grads(
        window_attention_reference, q, k, v, mask, grad, *geometry
    )
    for name, mine, low, ref in [("out", out, low_out, ref_out)] + [
        (f"d{n}", a, b, c) for n, a, b, c in zip("qkv", grads, low_grads, ref_grads)
    ]:
        assert_finite(mine, name)
        if dtype == torch.float32:
            assert rel_err(mine, ref) <= 1e-5, name
        else:
            assert rel_err(mine, ref) <= 2 * rel_err(low, ref) + 2e-3, name
    if mask is not None:
        assert_close_verbose(new_mask.float(), ref_mask, rtol=1e-2, what="new_mask")
