"""Bias + activation in one Triton pass against its reference twin (Triton's interpreter on
CPU without a GPU; small shapes). Outputs are NaN-poisoned, so an unwritten element fails."""

from __future__ import annotations

import math

import pytest
import torch

import mat_fast
from mat_fast import ops
from mat_fast.ops.bias_act import cpu as bias_act_cpu
from mat_fast.ops.bias_act.reference import ACTIVATIONS, bias_act_reference

from ..helpers.asserts import assert_close_verbose, check
from ..helpers.sm90_compile import compile_for_sm90
from ..helpers.triton_interpreter import DEVICE, INTERPRET, import_kernels, kernel_test_env

bat = import_kernels("mat_fast.ops.bias_act.triton")
# tanh and sigmoid go through tl.exp: exact in the interpreter (numpy), ex2.approx on a GPU
# (~2 ulp, and the x * log2(e) rounding), so y may be a few 1e-7 off there.
Y_RTOL = 1e-6 if INTERPRET else 4e-6


_triton_env = kernel_test_env(bat)


def _grads(fn, x, b, **kw):
    x = x.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    y = fn(x, b, **kw)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y)
    grads = torch.autograd.grad(y, [t for t in (x, b) if t is not None], g)
    return y.detach(), grads


# (shape, dim, layout): MAT's conv maps (bias on channels, NCHW and channels_last) and tokens
SHAPES = [
    pytest.param((2, 5, 7, 9), 1, "nchw", id="nchw"),
    pytest.param((2, 5, 7, 9), 1, "channels_last", id="channels_last"),
    pytest.param((2, 33, 12), 2, "tokens", id="tokens"),
]


@pytest.mark.parametrize("clamp", [None, 0.5])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape,dim,fmt", SHAPES)
def test_fp32_matches_reference_with_gradients(shape, dim, fmt, act, clamp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape[dim], generator=g)
    kw = dict(dim=dim, act=act, clamp=clamp)
    y, grads = _grads(bat.bias_act_triton, x.to(DEVICE), b.to(DEVICE), **kw)
    y_ref, grads_ref = _grads(bias_act_reference, x, b, **kw)
    assert y.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
    assert_close_verbose(y.cpu(), y_ref, rtol=Y_RTOL, what="y")
    for name, got, want in zip(("dx", "db"), grads, grads_ref):
        assert_close_verbose(got.cpu(), want, rtol=1e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_within_twice_reference_error(dtype):
    g = torch.Generator().manual_seed(1)
    x, b = torch.randn(2, 6, 8, 8, generator=g) * 3, torch.randn(6, generator=g)
    gold = bias_act_reference(x, b, act="lrelu")
    ref = bias_act_reference(x.to(dtype), b.to(dtype), act="lrelu")
    out = bat.bias_act_triton(x.to(dtype).to(DEVICE), b.to(dtype).to(DEVICE), act="lrelu").cpu()
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = ((out.float() - gold).norm() / gold.norm()).item()
    ref_err = ((ref.float() - gold).norm() / gold.norm()).item()
    assert err <= 2 * ref_err + 1e-3


def test_no_bias_and_dispatch():
    x = torch.randn(3, 4, 5).to(DEVICE)
    with mat_fast.use_backend("triton"):
        y = mat_fast.ops.bias_act.bias_act(x, None, dim=2, act="lrelu", inplace=True)
    assert_close_verbose(
        y.cpu(), bias_act_reference(x.cpu(), None, dim=2, act="lrelu"), rtol=1e-6, what="y"
    )


def test_invalid_inputs_raise_clear_errors():
    x = torch.randn(2, 3, 4).to(DEVICE)
    with pytest.raises(ValueError, match="unknown activation"):
        bat.bias_act_triton(x, None, act="gelu")
    with pytest.raises(ValueError, match="does not fit dim"):
        bat.bias_act_triton(x, torch.zeros(4).to(DEVICE), dim=1)
    with pytest.raises(ValueError, match="not supported"):
        bat.bias_act_triton(x.double(), None)


def test_opcheck():
    x = torch.randn(2, 3, 4, 5).to(DEVICE)
    b = torch.randn(3).to(DEVICE)
    torch.library.opcheck(
        torch.ops.mat_fast.bias_act_fwd.default,
        (x, b, 1, "lrelu", 0.2, 1.41, None),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


_BUILD_LOOP = r"""
for dtype in ("fp16", "bf16", "fp32"):
    types = {n: f"*{dtype}" for n in ("x", "bias", "y", "dy", "dx")}
    types.update({n: "fp32" for n in ("alpha", "gain", "clamp")}, n_elements="i64")
    for act in range(5):
        consts = dict(ACT=act, HAS_BIAS=True, HAS_CLAMP=act == 2, BLOCK=1024)
        build(kernels.bias_act_fwd_kernel, types, consts)
        build(kernels.bias_act_bwd_kernel, types, consts)
"""


def test_kernels_compile_for_cuda_target():
    from pathlib import Path

    compile_for_sm90(Path(bat.__file__).with_name("triton_kernels.py"), _BUILD_LOOP)


def test_bias_act_lrelu_gain_and_clamp():
    x = torch.tensor([[-1.0, 2.0]])
    b = torch.tensor([0.0, 1.0])
    out = bias_act_reference(x, b, dim=1, act="lrelu")
    assert torch.allclose(out, torch.tensor([[-0.2 * math.sqrt(2), 3 * math.sqrt(2)]]))
    clamped = bias_act_reference(x, b, dim=1, act="lrelu", gain=1.0, clamp=2.5)
    assert torch.allclose(clamped, torch.tensor([[-0.2, 2.5]]))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act.bias_act(x, act="gelu")


BIAS_ACT_CASES = [
    dict(act="lrelu"),
    dict(act="lrelu", gain=2.0, clamp=0.5),
    dict(act="linear"),
    dict(act="linear", clamp=0.3, gain=0.5),
    dict(act="relu"),
    dict(act="tanh"),  # no in-place form: the reference runs
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", BIAS_ACT_CASES, ids=str)
@pytest.mark.parametrize("shape,dim", [((2, 5, 7, 9), 1), ((2, 33, 12), 2)], ids=["nchw", "tokens"])
def test_bias_act_cpu_matches_reference(shape, dim, case, with_bias, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, generator=g)
    b = torch.randn(shape[dim], generator=g) if with_bias else None
    for fn in (bias_act_cpu.bias_act_cpu, bias_act_cpu.bias_act_cpu_):
        check(
            lambda x, b, fn=fn: fn(x.clone(), b, dim, **case),
            lambda x, b: bias_act_reference(x, b, dim, **case),
            [x, b],
            dtype,
            f"{fn.__name__} {case}",
        )


def test_bias_act_inplace_contract():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(4, generator=g)
    ref = bias_act_reference(x, b, act="lrelu")
    with mat_fast.use_backend("cpu"):
        kept = x.clone()
        out = ops.bias_act.bias_act(kept, b, act="lrelu")  # functional: x untouched
        assert torch.equal(kept, x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close_verbose(out, ref, rtol=1e-6, what="bias_act")
    # The in-place function writes into x ...
    y = x.clone()
    out = bias_act_cpu.bias_act_cpu_(y, b, act="lrelu")
    assert out.data_ptr() == y.data_ptr()
    assert_close_verbose(out, ref, rtol=1e-6, what="bias_act_")
    # ... but not into a tensor autograd needs: gradients match the reference's.
    leaf = x.clone().requires_grad_(True)
    out = bias_act_cpu.bias_act_cpu_(leaf, b, act="lrelu", gain=2.0)
    assert torch.equal(leaf.detach(), x)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    leaf2 = x.clone().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(
        bias_act_reference(leaf2, b, act="lrelu", gain=2.0).sum(), leaf2
    )
    assert torch.equal(grad, ref_grad)
