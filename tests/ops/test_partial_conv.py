"""Partial convolution's mask update and epilogue on every backend against the reference
twins, the backend a parametrised axis: ``cpu`` (the C++ extension), ``triton`` (Triton's
interpreter on CPU without a GPU: small shapes, 20 channels, 16x16 and odd 13x11 maps),
``cuda`` (the CUDA extension, GPU only). Every kernel output is NaN-poisoned first, so an
element a kernel leaves unwritten fails.

Inputs, tolerances and MAT's geometries are in helpers/partial_conv_cases.py. The fused op
(mask update + epilogue in one launch) is test_partial_conv_fused.py; the Triton custom-op
plumbing (fakes, opcheck, torch.compile), MAT's real shapes on GPU and the sm_90 build are
test_partial_conv_triton_graph.py; the twins themselves, by hand and against upstream's
composition, test_partial_conv_reference.py.
"""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast import backend, ops
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_mask_reference,
)

from ..helpers.asserts import (
    LAYOUTS,
    assert_close_verbose,
    assert_finite,
    assert_lowp_close,
    layout,
    rel_err,
)
from ..helpers.backends import CPU, CUDA, TRITON, device_of, native_kernels
from ..helpers.partial_conv_cases import (
    _INTERPRET,
    ALPHA,
    DTYPE_IDS,
    DTYPES,
    FLOORS,
    GAIN,
    GEOMETRIES,
    MASKS,
    assert_rounded_from,
    epilogue_reference,
    make_mask,
    make_x,
    out_size,
    pct,
    triton_env,  # noqa: F401 (an autouse fixture: importing it turns it on here)
)

pytestmark = pytest.mark.usefixtures("poison_outputs")


def kernel(backend_name: str, name: str):
    """The backend's kernel for ``name`` ('mask', 'epilogue'; 'epilogue_' native only)."""
    if backend_name == "triton":
        return getattr(pct, f"partial_conv_{name}_triton")
    _, pc_native = native_kernels(backend_name)
    if name.endswith("_"):  # the in-place form: partial_conv_epilogue_native_
        return getattr(pc_native, f"partial_conv_{name[:-1]}_native_")
    return getattr(pc_native, f"partial_conv_{name}_native")


def on(backend_name, *tensors):
    device = device_of(backend_name)
    out = tuple(None if t is None else t.to(device) for t in tensors)
    return out if len(out) > 1 else out[0]


# ---------------------------------------------------------------------------------------
# Mask update


def assert_ratio_close(ratio, ref_ratio, rtol, what="ratio"):
    """Relative to each element: the ratio reaches k*k / (a tiny soft count)."""
    rel = (
        (ratio.double() - ref_ratio.double()).abs() / ref_ratio.double().abs().clamp_min(1e-6)
    ).max()
    assert rel <= rtol, f"{what} relative error {float(rel):.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_mask_update_matches_reference(backend_name, geometry, mask_kind, dtype):
    k, s, p, H, W = geometry
    B = 2
    mask = on(backend_name, make_mask(mask_kind, B, H, W, seed=H * W + k, dtype=dtype))
    update, ratio = kernel(backend_name, "mask")(mask, k, s, p)
    # fp32 reference on the same values, rounded once to the mask's dtype
    r_update, r_ratio = partial_conv_mask_reference(mask.float(), k, s, p)
    shape = (B, 1, out_size(H, k, s, p), out_size(W, k, s, p))
    assert update.shape == shape and ratio.shape == shape
    assert update.dtype == dtype and ratio.dtype == dtype
    assert not update.requires_grad and not ratio.requires_grad
    if backend_name == "triton" or dtype != torch.float32:
        # exact box sums: bit for bit the fp32 reference rounded once to the mask's dtype
        assert_rounded_from(update, r_update, "update")
        assert_rounded_from(ratio, r_ratio, "ratio")
    else:  # the C++ kernel divides in another order: within 1e-6 of each fp32 element
        assert_close_verbose(update, r_update, rtol=1e-6, what="update")
        assert_ratio_close(ratio, r_ratio, rtol=1e-6)
    if mask_kind == "hole":
        assert not update.any() and not ratio.any()


# Soft masks (uniform values, exact 0s and 1s mixed in) at k = 3 on small odd maps.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 9), (16, 16), (5, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "non_binary"])
@pytest.mark.parametrize("backend_name", [CPU])
def test_mask_update_soft_masks(backend_name, size, stride, binary, dtype):
    g = torch.Generator().manual_seed(5)
    m = torch.rand(2, 1, *size, generator=g)
    if binary:
        m = (m > 0.6).float()
    else:
        m[m < 0.3] = 0
        m[m > 0.8] = 1
    m = m.to(dtype)
    update, ratio = kernel(backend_name, "mask")(on(backend_name, m), 3, stride, 1)
    ref_update, ref_ratio = partial_conv_mask_reference(m.float(), 3, stride, 1)
    assert update.dtype == dtype and update.shape == ref_update.shape
    assert_finite(update, "update")
    assert_finite(ratio, "ratio")
    assert not update.requires_grad and not ratio.requires_grad
    rtol = 1e-6 if dtype == torch.float32 else 8e-3
    if binary:
        assert torch.equal(update.float().cpu(), ref_update)
    else:
        assert_close_verbose(update.cpu(), ref_update, rtol=rtol, what="update")
    assert_ratio_close(ratio.cpu(), ref_ratio, rtol)


@pytest.mark.parametrize("mask_kind", ["binary", "nonbinary"])
@pytest.mark.parametrize("backend_name", [TRITON])
def test_fp64_mask_sums_and_divides_in_fp64(backend_name, mask_kind):
    mask = on(backend_name, make_mask(mask_kind, 2, 13, 11, seed=36, dtype=torch.float64))
    update, ratio = kernel(backend_name, "mask")(mask, 3, 2, 1)
    r_update, r_ratio = partial_conv_mask_reference(mask, 3, 2, 1)
    assert update.dtype == ratio.dtype == torch.float64
    assert torch.equal(update, r_update) and torch.equal(ratio, r_ratio)


@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_fp16_fully_hole_windows_give_zero_ratio(backend_name):
    # 1e-8 underflows in fp16, so a box sum of 0 in fp16 gives k*k/0 * 0 = NaN; the kernels
    # sum and divide in fp32 and round once.
    mask = on(backend_name, make_mask("binary", 1, 16, 16, seed=1, dtype=torch.float16))
    update, ratio = kernel(backend_name, "mask")(mask, 3, 1, 1)
    assert torch.isfinite(ratio).all()
    empty = update == 0
    assert empty.any() and not ratio[empty].any()


@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_mask_any_strides_and_batch_one(backend_name):
    mask = on(backend_name, make_mask("binary", 1, 16, 24, seed=2)).transpose(2, 3)
    assert not mask.is_contiguous()  # (1, 1, 24, 16)
    update, ratio = kernel(backend_name, "mask")(mask, 3, 2, 1)
    r_update, r_ratio = partial_conv_mask_reference(mask.contiguous(), 3, 2, 1)
    assert torch.equal(update, r_update)
    if backend_name == "triton":
        assert torch.equal(ratio, r_ratio)
    else:
        assert_ratio_close(ratio, r_ratio, rtol=1e-6)


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
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("B,H,W", [(1, 16, 16), (2, 13, 11)], ids=["b1-16x16", "b2-13x11"])
@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_epilogue_fp32_matches_reference(backend_name, B, H, W, fmt, with_bias, clamp):
    x, bias = on(backend_name, *make_x(B, 20, H, W, seed=3, layout=fmt))
    bias = bias if with_bias else None
    mask = on(backend_name, make_mask("binary", B, H + 2, W + 2, seed=4))
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 0)
    y, grads = run_epilogue(kernel(backend_name, "epilogue"), x, bias, ratio, clamp)
    r_y, r_grads = run_epilogue(epilogue_reference, x, bias, ratio, clamp)
    assert y.dtype == x.dtype and y.stride() == x.stride(), "dtype and memory format are kept"
    assert_close_verbose(y, r_y, rtol=1e-6, what="y")
    if backend_name == "triton":  # (the C++ backward returns a contiguous dx)
        assert grads[0].stride() == x.stride()
    names = ["dx", "dbias", "dratio"] if with_bias else ["dx", "dratio"]
    for name, g, rg in zip(names, grads, r_grads):
        assert_close_verbose(g, rg, rtol=1e-5, what=name)
    if clamp is not None:  # the case exercises the clamp (and its zero gradient)
        assert (x.abs() * GAIN > 2 * clamp).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_epilogue_low_precision_within_twice_reference_error(backend_name, fmt, dtype):
    B, C, H, W = 2, 20, 13, 11
    x, bias = on(backend_name, *make_x(B, C, H, W, seed=5, dtype=dtype, layout=fmt))
    mask = on(backend_name, make_mask("nonbinary", B, H + 2, W + 2, seed=6))
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 0)
    ratio = ratio.to(dtype)
    y, grads = run_epilogue(kernel(backend_name, "epilogue"), x, bias, ratio, 2.0)
    lp_y, lp_grads = run_epilogue(epilogue_reference, x, bias, ratio, 2.0)
    r_y, r_grads = run_epilogue(epilogue_reference, x.float(), bias.float(), ratio.float(), 2.0)
    assert y.dtype == dtype and y.stride() == x.stride()
    assert_lowp_close(y, lp_y, r_y, "y", FLOORS[dtype])
    for name, g, lg, rg in zip(("dx", "dbias", "dratio"), grads, lp_grads, r_grads):
        assert g.dtype == dtype
        assert_lowp_close(g, lg, rg, name, FLOORS[dtype])


# The C++ kernel without a clamp (its clamp runs the twin), bf16 gradients included.
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend_name", [CPU])
def test_epilogue_kernel_with_gradients(backend_name, dtype, with_bias):
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

    out, grads = run(kernel(backend_name, "epilogue"), x, bias, ratio)
    assert out.dtype == dtype
    assert_finite(out, "epilogue")
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref_out, ref_grads = run(partial_conv_epilogue_reference, f32(x), f32(bias), f32(ratio))
    rtol = 1e-6 if dtype == torch.float32 else 1e-2
    assert_close_verbose(out, ref_out, rtol=rtol, what="epilogue")
    for i, (a, r) in enumerate(zip(grads, ref_grads)):
        assert_close_verbose(a, r, rtol=1e-5 if dtype == torch.float32 else 2e-2, what=f"grad {i}")


@pytest.mark.parametrize("backend_name", [TRITON])
def test_epilogue_non_dense_x_and_mixed_dtypes(backend_name):
    x, bias = on(backend_name, *make_x(1, 8, 12, 12, seed=7))
    x_strided = x[:, :, ::2, ::2]  # pixels are not one strided run: copied first
    mask = on(backend_name, make_mask("binary", 1, 6, 6, seed=8))
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    y = kernel(backend_name, "epilogue")(x_strided, bias.double(), ratio.half(), GAIN, ALPHA)
    ref = epilogue_reference(x_strided, bias, ratio.half().float(), GAIN, ALPHA)
    assert y.dtype == torch.float32
    assert_close_verbose(y, ref, rtol=1e-6, what="y")


# The public op, functional and in place, non-binary ratio.
@pytest.mark.parametrize("clamp", [None, 0.7])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["functional", "inplace"])
@pytest.mark.parametrize("backend_name", [CPU])
def test_public_epilogue_matches_reference(backend_name, inplace, dtype, fmt, clamp):
    native_kernels(backend_name)
    g = torch.Generator().manual_seed(6)
    x = layout(torch.randn(2, 5, 7, 9, generator=g), fmt)
    bias = torch.randn(5, generator=g)
    ratio = torch.rand(2, 1, 7, 9, generator=g) * 2  # non-binary
    ref = partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2, clamp)
    low = x.to(dtype)
    before = low.clone()
    out = ops.partial_conv_epilogue(
        low,
        bias.to(dtype),
        ratio.to(dtype),
        1.41,
        0.2,
        clamp,
        inplace=inplace,
        backend_name=backend_name,
    )
    if not inplace:
        assert torch.equal(low, before), "the functional op overwrote its input"
    if fmt == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    ref_low = partial_conv_epilogue_reference(
        low, bias.to(dtype), ratio.to(dtype), 1.41, 0.2, clamp
    )
    tol = 1e-6 if dtype == torch.float32 else 2 * rel_err(ref_low, ref) + 2e-3
    assert out.dtype == dtype and rel_err(out, ref) <= tol


@pytest.mark.parametrize("backend_name", [CPU])
def test_public_epilogue_inplace_keeps_autograd_inputs(backend_name):
    native_kernels(backend_name)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 5, 5, generator=g, requires_grad=True)
    ratio = torch.rand(1, 1, 5, 5, generator=g)
    out = ops.partial_conv_epilogue(
        x, None, ratio, 1.41, 0.2, inplace=True, backend_name=backend_name
    )
    (grad,) = torch.autograd.grad(out.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(
        partial_conv_epilogue_reference(x2, None, ratio, 1.41, 0.2).sum(), x2
    )
    assert_close_verbose(grad, ref, rtol=1e-6, what="grad")


@pytest.mark.parametrize("backend_name", [CPU])
def test_epilogue_gradcheck_fp64(backend_name):
    """fp64 gradients pass gradcheck and match the reference's autograd to fp64 rounding
    (a slope of alpha rounded through fp32 would be 1.5e-8 off)."""
    epilogue = kernel(backend_name, "epilogue")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    ratio = (torch.rand(1, 1, 4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    fn = lambda a, b, r: epilogue(a, b, r, 1.41, 0.2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, bias, ratio))
    grad = torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(fn(x, bias, ratio), (x, bias, ratio), grad)
    ref = torch.autograd.grad(
        partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2), (x, bias, ratio), grad
    )
    for name, a, r in zip(("dx", "dbias", "dratio"), ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-13, msg=name)


@pytest.mark.parametrize("backend_name", [CPU])
def test_epilogue_in_place_bumps_the_version(backend_name):
    """The in-place path writes x; an op that saved x for its backward must notice, as it
    would after any torch in-place op."""
    epilogue_ = kernel(backend_name, "epilogue_")
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 3, 4, 5, generator=g)
    w = torch.randn(1, 3, 4, 5, generator=g, requires_grad=True)
    ratio = torch.rand(1, 1, 4, 5, generator=g)
    y = (w * x).sum()  # saves x
    before = x._version
    assert epilogue_(x, None, ratio, 1.0, 0.2) is x  # in place
    assert x._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    with torch.inference_mode():  # inference tensors have no version counter: no error
        xi = torch.randn(1, 3, 4, 5)
        assert epilogue_(xi, None, ratio, 1.0, 0.2) is xi


# ---------------------------------------------------------------------------------------
# Custom ops (the Triton ones: test_partial_conv_triton_graph.py), errors, dispatch


@pytest.mark.parametrize("backend_name", [CPU])
def test_native_opcheck(backend_name):
    native_kernels(backend_name)
    nat = torch.ops.mat_fast_native
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    bias = torch.randn(3, generator=g, requires_grad=True)
    ratio = torch.rand(2, 1, 5, 6, generator=g, requires_grad=True)
    torch.library.opcheck(nat.partial_conv_epilogue.default, (x, bias, ratio, 1.41, 0.2))
    torch.library.opcheck(nat.partial_conv_epilogue.default, (x, None, ratio, 1.0, 0.1))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(nat.partial_conv_epilogue.default, (x_cl, bias, ratio, 1.41, 0.2))
    for x_in in (x.detach().clone(), x_cl.detach().clone()):  # the in-place variant
        torch.library.opcheck(
            nat.partial_conv_epilogue_.default, (x_in, bias.detach(), ratio.detach(), 1.41, 0.2)
        )
    torch.library.opcheck(
        nat.partial_conv_mask.default, (torch.rand(2, 1, 7, 9, generator=g), 3, 2, 1)
    )


@pytest.mark.parametrize("backend_name", [CPU, CUDA])
def test_native_epilogue_layout_matches_its_fake(backend_name):
    """The op's fake (what torch.compile plans with) promises channels_last for a
    channels_last input; the kernel must deliver it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    native_kernels(backend_name)
    epilogue = torch.ops.mat_fast_native.partial_conv_epilogue
    for fmt in LAYOUTS:
        g = torch.Generator().manual_seed(0)
        x, bias = torch.randn(2, 16, 9, 11, generator=g), torch.randn(16, generator=g)
        _, ratio = partial_conv_mask_reference(
            (torch.rand(2, 1, 9, 11, generator=g) > 0.4).float(), 3, 1, 1
        )
        x, bias, ratio = on(backend_name, layout(x, fmt), bias, ratio)
        real = epilogue(x, bias, ratio, 2**0.5, 0.2)
        with FakeTensorMode() as mode:
            fake = epilogue(*(mode.from_tensor(t) for t in (x, bias, ratio)), 2**0.5, 0.2)
        assert real.stride() == fake.stride(), (
            f"{fmt}: kernel strides {real.stride()}, fake promises {fake.stride()}"
        )
        assert real.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
        ref = partial_conv_epilogue_reference(x, bias, ratio, 2**0.5, 0.2)
        assert_close_verbose(real, ref, rtol=1e-6, what=f"{fmt} epilogue")


@pytest.mark.parametrize("backend_name", [TRITON])
def test_kernels_reject_bad_inputs_clearly(backend_name):
    x, bias = on(backend_name, *make_x(1, 4, 8, 8, seed=15))
    mask = on(backend_name, make_mask("binary", 1, 8, 8, seed=15))
    _, ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    mask_fn, epilogue = kernel(backend_name, "mask"), kernel(backend_name, "epilogue")
    with pytest.raises(ValueError, match=r"mask must have shape \(B, 1, H, W\)"):
        mask_fn(mask.expand(1, 2, 8, 8), 3, 1, 1)
    with pytest.raises(ValueError, match="dtype"):
        mask_fn(mask.bool(), 3, 1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        mask_fn(mask, 11, 1, 0)
    with pytest.raises(ValueError, match="stride >= 1"):
        mask_fn(mask, 3, 0, 1)
    with pytest.raises(ValueError, match="bias must have shape"):
        epilogue(x, bias[:3], ratio, GAIN, ALPHA)
    with pytest.raises(ValueError, match="ratio must have shape"):
        epilogue(x, bias, ratio[..., :4], GAIN, ALPHA)
    with pytest.raises(ValueError, match="not supported"):
        epilogue(x.double(), bias, ratio, GAIN, ALPHA)
    with pytest.raises(ValueError, match="is not the output"):
        pct.partial_conv_fused_triton(x, bias, mask, 3, 2, 1, GAIN, ALPHA)
    if _INTERPRET:
        with pytest.raises(ValueError, match="do not run on meta"):
            mask_fn(mask.to("meta"), 3, 1, 1)


@pytest.mark.parametrize("backend_name", [CPU, TRITON])
def test_dispatcher_and_backend_reach_the_kernels(backend_name):
    device = device_of(backend_name)
    assert backend._PROBES[backend_name](device.type) is None
    mask = on(backend_name, make_mask("binary", 1, 16, 16, seed=16))
    x, bias = on(backend_name, *make_x(1, 4, 16, 16, seed=16))
    r_update, r_ratio = partial_conv_mask_reference(mask, 3, 1, 1)
    with mat_fast.use_backend(backend_name):
        for name in ("mask", "epilogue"):
            impl = backend.implementation(f"partial_conv_{name}", device)
            assert impl is kernel(backend_name, name)
        update, ratio = ops.partial_conv_mask(mask, 3, 1, 1)
        y = ops.partial_conv_epilogue(x, bias, ratio, GAIN, ALPHA)
    assert_close_verbose(y, epilogue_reference(x, bias, r_ratio, GAIN, ALPHA), rtol=1e-6, what="y")
    assert torch.equal(update, r_update)
    assert_ratio_close(ratio, r_ratio, rtol=0 if backend_name == "triton" else 1e-6)


# ---------------------------------------------------------------------------------------
# The CUDA extension (GPU only; fp32 references in IEEE fp32, conftest turns TF32 off)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend_name", [CUDA])
def test_gpu_mask_and_epilogue_soft_mask(backend_name, stride):
    m = torch.rand(2, 1, 7, 9, device="cuda")
    m[m < 0.3] = 0
    update, ratio = kernel(backend_name, "mask")(m, 3, stride, 1)
    ref_update, ref_ratio = partial_conv_mask_reference(m, 3, stride, 1)
    assert_close_verbose(update, ref_update, rtol=1e-6, what="update")
    assert_close_verbose(ratio, ref_ratio, rtol=1e-5, what="ratio")
    x = torch.randn(2, 4, *ratio.shape[-2:], device="cuda")  # the conv's output size
    bias = torch.randn(4, device="cuda")
    out = kernel(backend_name, "epilogue")(x, bias, ratio, 1.41, 0.2)
    ref = partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2)
    assert_close_verbose(out, ref, rtol=1e-6, what="epilogue")


@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend_name", [CUDA])
def test_gpu_every_dtype_and_layout(backend_name, stride, dtype, fmt):
    g = torch.Generator().manual_seed(4)
    mask = (torch.rand(2, 1, 64, 64, generator=g) > 0.5).float()
    mask[..., 8:40, 8:40] = 0
    ref_update, ref_ratio = partial_conv_mask_reference(mask, 3, stride, 1)
    update, ratio = kernel(backend_name, "mask")(mask.cuda().to(dtype), 3, stride, 1)
    assert torch.equal(update.float().cpu(), ref_update)  # 0 or 1 in every dtype
    assert_lowp_close(ratio.cpu(), ref_ratio.to(dtype), ref_ratio, "ratio", floor=1e-6)
    Ho, Wo = ratio.shape[-2:]
    x = torch.randn(2, 180, Ho, Wo, generator=g)
    bias = torch.randn(180, generator=g)
    args = (x, bias, ref_ratio)
    ref = partial_conv_epilogue_reference(*args, 2**0.5, 0.2)
    low = partial_conv_epilogue_reference(*(t.to(dtype) for t in args), 2**0.5, 0.2)
    x_dev = layout(x.cuda().to(dtype), fmt)
    out = kernel(backend_name, "epilogue")(
        x_dev, bias.cuda().to(dtype), ref_ratio.cuda().to(dtype), 2**0.5, 0.2
    )
    assert out.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
    assert_lowp_close(out.cpu(), low, ref, "epilogue", floor=1e-6)
