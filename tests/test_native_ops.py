"""Native (C++ / CUDA) kernels against their reference twins.

* window attention: outputs, new masks and gradients (dq, dk, dv) vs the reference op and
  its autograd, over window 8/16, shift 0/half, mask none/binary/fully-invalid windows/
  non-binary, fp32/bf16/fp16, B = 1/2, square and rectangular grids, MAT's real C = 180 / 6 heads;
* partial convolution: mask update (k = 3, stride 1/2, odd sizes, non-binary masks) and the
  fused epilogue;
* every kernel output is NaN-poisoned before the kernel runs (MAT_FAST_POISON_OUTPUTS=1),
  so an element a kernel forgets to write fails the finiteness checks;
* the whole generator on the 'cpu' backend vs 'reference'.

Tolerances (flash-attention's rule): fp32 within 1e-5 of max|ref|; bf16 error against the
fp32 reference at most twice the reference's own bf16 error, plus a small floor.
CUDA variants are marked ``gpu``. The first test builds the extension (about a minute on
two cores; cached afterwards in ~/.cache/mat_fast/ext or $MAT_FAST_CACHE/ext); the build
itself is tested in test_native_build.py.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast.ops import native_build
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_mask_reference,
)
from mat_fast.ops.window_attention.reference import window_attention_reference

from .conftest import assert_close_verbose


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch, default_backend):
    monkeypatch.setenv("MAT_FAST_POISON_OUTPUTS", "1")  # read by the kernels on every call


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (in float64)."""
    a, e = actual.double(), expected.double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))


def assert_finite(t: torch.Tensor, what: str):
    bad = ~torch.isfinite(t)
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {t.numel()} elements not finite "
        f"(unwritten?), first at {bad.nonzero()[:5].tolist()}"
    )


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
    from mat_fast import ops

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 180, 256, generator=g).transpose(1, 2) for _ in range(3))
    mask = (torch.rand(2, 1, 256, generator=g) > 0.3).float().transpose(1, 2)
    out, new_mask = ops.window_attention(q, k, v, mask, (16, 16), 8, 4, 6, backend_name="cpu")
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


def test_window_attention_has_no_silent_second_derivative(native_ops):
    """First-order gradients with create_graph=True work; differentiating them again raises
    (torch's fallback for a C++ op without an autograd formula would return zeros)."""
    wa_native, _ = native_ops
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 16, 4, generator=g, requires_grad=True) for _ in range(3))
    out, _ = wa_native.window_attention_native(q, k, v, None, (4, 4), 4, 0, 2)
    (dq,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    ref_out, _ = window_attention_reference(q, k, v, None, (4, 4), 4, 0, 2)
    (ref_dq,) = torch.autograd.grad(ref_out.pow(2).sum(), q, create_graph=True)
    assert_close_verbose(dq, ref_dq, rtol=1e-5, what="dq")
    with pytest.raises(RuntimeError, match="no second derivative"):
        dq.pow(2).sum().backward()


# ---------------------------------------------------------------------------------------
# Partial convolution


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 9), (16, 16), (5, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "non_binary"])
def test_partial_conv_mask_matches_reference(native_ops, size, stride, binary, dtype):
    _, pc_native = native_ops
    g = torch.Generator().manual_seed(5)
    m = torch.rand(2, 1, *size, generator=g)
    if binary:
        m = (m > 0.6).float()
    else:
        m[m < 0.3] = 0
        m[m > 0.8] = 1
    m = m.to(dtype)
    update, ratio = pc_native.partial_conv_mask_native(m, 3, stride, 1)
    ref_update, ref_ratio = partial_conv_mask_reference(m.float(), 3, stride, 1)
    assert update.dtype == dtype and update.shape == ref_update.shape
    assert_finite(update, "update")
    assert_finite(ratio, "ratio")
    assert not update.requires_grad and not ratio.requires_grad
    rtol = 1e-6 if dtype == torch.float32 else 8e-3
    if binary:
        assert torch.equal(update.float(), ref_update)
    else:
        assert_close_verbose(update, ref_update, rtol=rtol, what="update")
    # ratio up to 9 / tiny soft count: compare relative to each element
    rel = (
        (ratio.double() - ref_ratio.double()).abs() / ref_ratio.double().abs().clamp_min(1e-6)
    ).max()
    assert rel <= rtol, f"ratio relative error {float(rel):.3g}"


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_partial_conv_epilogue_matches_reference(native_ops, dtype, with_bias):
    _, pc_native = native_ops
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 5, 7, 9, generator=g).to(dtype)
    bias = torch.randn(5, generator=g).to(dtype) if with_bias else None
    ratio = (torch.rand(2, 1, 7, 9, generator=g) * 2).to(dtype)
    grad = torch.randn(2, 5, 7, 9, generator=g).to(dtype)

    def run(fn, *inputs):
        leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
        out = fn(leaves[0], leaves[1], leaves[2], 1.41, 0.2)
        grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad.to(out.dtype))
        return out.detach(), grads

    out, grads = run(pc_native.partial_conv_epilogue_native, x, bias, ratio)
    assert out.dtype == dtype
    assert_finite(out, "epilogue")
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref_out, ref_grads = run(partial_conv_epilogue_reference, f32(x), f32(bias), f32(ratio))
    rtol = 1e-6 if dtype == torch.float32 else 1e-2
    assert_close_verbose(out, ref_out, rtol=rtol, what="epilogue")
    for i, (a, r) in enumerate(zip(grads, ref_grads)):
        assert_close_verbose(a, r, rtol=1e-5 if dtype == torch.float32 else 2e-2, what=f"grad {i}")


def test_partial_conv_epilogue_gradcheck_fp64(native_ops):
    """fp64 gradients pass gradcheck and match the reference's autograd to fp64 rounding
    (a slope of alpha rounded through fp32 would be 1.5e-8 off)."""
    _, pc_native = native_ops
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    ratio = (torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    fn = lambda a, b, r: pc_native.partial_conv_epilogue_native(a, b, r, 1.41, 0.2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, bias, ratio))
    grad = torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(fn(x, bias, ratio), (x, bias, ratio), grad)
    ref = torch.autograd.grad(
        partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2), (x, bias, ratio), grad
    )
    for name, a, r in zip(("dx", "dbias", "dratio"), ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-13, msg=name)


def test_partial_conv_epilogue_in_place_bumps_the_version(native_ops):
    """The in-place path writes x; an op that saved x for its backward must notice, as it
    would after any torch in-place op."""
    _, pc_native = native_ops
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 3, 4, 5, generator=g)
    w = torch.randn(1, 3, 4, 5, generator=g, requires_grad=True)
    ratio = torch.rand(1, 1, 4, 5, generator=g)
    y = (w * x).sum()  # saves x
    before = x._version
    assert pc_native.partial_conv_epilogue_native_(x, None, ratio, 1.0, 0.2) is x  # in place
    assert x._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    with torch.inference_mode():  # inference tensors have no version counter: no error
        xi = torch.randn(1, 3, 4, 5)
        assert pc_native.partial_conv_epilogue_native_(xi, None, ratio, 1.0, 0.2) is xi


def test_partial_conv_opcheck(native_ops):
    ops = torch.ops.mat_fast_native
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    bias = torch.randn(3, generator=g, requires_grad=True)
    ratio = torch.rand(2, 1, 5, 6, generator=g, requires_grad=True)
    torch.library.opcheck(ops.partial_conv_epilogue.default, (x, bias, ratio, 1.41, 0.2))
    torch.library.opcheck(ops.partial_conv_epilogue.default, (x, None, ratio, 1.0, 0.1))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(ops.partial_conv_epilogue.default, (x_cl, bias, ratio, 1.41, 0.2))
    for x_in in (x.detach().clone(), x_cl.detach().clone()):  # the in-place variant
        torch.library.opcheck(
            ops.partial_conv_epilogue_.default, (x_in, bias.detach(), ratio.detach(), 1.41, 0.2)
        )
    torch.library.opcheck(
        ops.partial_conv_mask.default, (torch.rand(2, 1, 7, 9, generator=g), 3, 2, 1)
    )


# ---------------------------------------------------------------------------------------
# Whole generator


@pytest.mark.parametrize(
    "size,batch,noise_mode",
    [
        (128, 1, "const"),
        (256, 1, "random"),  # B = 1: upstream's dropout map is drawn in a transposed layout
        (256, 2, "random"),  # B > 1: contiguous; non-binary mask
        pytest.param(512, 1, "random", marks=pytest.mark.slow),
    ],
    ids=lambda v: str(v),
)
def test_generator_cpu_backend_matches_reference(native_ops, size, batch, noise_mode):
    """Same seed, 'cpu' (channels_last, fused and in-place ops) vs 'reference': the same
    dropout maps and noise, so the outputs agree to float rounding."""
    from mat_fast.inpaint import random_generator

    G = random_generator(seed=5, resolution=min(size, 512))
    g = torch.Generator().manual_seed(8)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    m = torch.ones(batch, 1, size, size)
    m[..., size // 5 : size * 3 // 4, size // 4 : size * 2 // 3] = 0
    if batch > 1:
        m[1, :, : size // 2, : size // 3] = 0.5
    z = torch.randn(batch, 512, generator=g)
    outs = {}
    for name in ("reference", "cpu"):
        with mat_fast.use_backend(name):
            torch.manual_seed(0)
            with torch.no_grad():
                outs[name] = G(x, m, z, None, noise_mode=noise_mode)
    assert_finite(outs["cpu"], "generator output")
    assert_close_verbose(outs["cpu"], outs["reference"], rtol=1e-4, what="generator")
    diff, ref = (outs["cpu"] - outs["reference"]).double(), outs["reference"].double()
    assert float(diff.norm() / ref.norm()) <= 1e-4


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


@pytest.mark.gpu
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_partial_conv_matches_reference(stride):
    reason = native_build.probe("cuda", "cuda")
    if reason is not None:
        pytest.fail(reason)
    from mat_fast.ops.partial_conv import native as pc_native

    m = torch.rand(2, 1, 7, 9, device="cuda")
    m[m < 0.3] = 0
    update, ratio = pc_native.partial_conv_mask_native(m, 3, stride, 1)
    ref_update, ref_ratio = partial_conv_mask_reference(m, 3, stride, 1)
    assert_close_verbose(update, ref_update, rtol=1e-6, what="update")
    assert_close_verbose(ratio, ref_ratio, rtol=1e-5, what="ratio")
    x = torch.randn(2, 4, *ratio.shape[-2:], device="cuda")  # the conv's output size
    bias = torch.randn(4, device="cuda")
    out = pc_native.partial_conv_epilogue_native(x, bias, ratio, 1.41, 0.2)
    ref = partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2)
    assert_close_verbose(out, ref, rtol=1e-6, what="epilogue")
