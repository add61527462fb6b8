"""Native (C++ / CUDA) partial-convolution kernels against their reference twins: the mask
update (k = 3, stride 1/2, odd sizes, non-binary masks) and the fused epilogue, with every
kernel output NaN-poisoned first (an unwritten element fails). CUDA variants are marked
``gpu``."""

from __future__ import annotations

import pytest
import torch

from mat_fast.ops import native_build
from mat_fast.ops.partial_conv.reference import (
    partial_conv_epilogue_reference,
    partial_conv_mask_reference,
)

from ..helpers.asserts import assert_close_verbose, assert_finite

pytestmark = pytest.mark.usefixtures("poison_outputs")


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
