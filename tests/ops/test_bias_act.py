"""Bias + activation on every backend against its reference twin: ``cpu`` (the PyTorch
fast path, functional and in place), ``triton`` (Triton's interpreter on CPU without a GPU;
small shapes; MAT's real shapes on a GPU). Triton outputs are NaN-poisoned, so an unwritten
element fails.

Tolerance: fp32 within 1e-5 of max|ref| (1e-6 for outputs where the arithmetic is the
same); fp16/bf16 within 2x the reference's own low-precision error plus a small floor."""

from __future__ import annotations

import math

import pytest
import torch

import mat_fast
from mat_fast import ops
from mat_fast.ops.bias_act import cpu as bias_act_cpu
from mat_fast.ops.bias_act.reference import ACTIVATIONS, bias_act_reference

from ..helpers.asserts import DTYPES, assert_close_verbose, assert_lowp_close, check
from ..helpers.asserts import layout as _layout
from ..helpers.backends import CPU, TRITON, device_of
from ..helpers.sm90_compile import compile_for_sm90
from ..helpers.triton_interpreter import INTERPRET, import_kernels, kernel_test_env

bat = import_kernels("mat_fast.ops.bias_act.triton")
_triton_env = kernel_test_env(bat)

#: The functional kernel of each backend (the in-place form: ``INPLACE``).
KERNELS = {"cpu": bias_act_cpu.bias_act_cpu, "triton": bat.bias_act_triton}
INPLACE = {"cpu": bias_act_cpu.bias_act_cpu_, "triton": bat.bias_act_triton}
# tanh and sigmoid go through tl.exp: exact in the interpreter (numpy), ex2.approx on a GPU
# (~2 ulp, and the x * log2(e) rounding), so y may be a few 1e-7 off there.
Y_RTOL = {"cpu": 1e-5, "triton": 1e-6 if INTERPRET else 4e-6}
DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]


def _grads(fn, x, b, **kw):
    x = x.detach().clone().requires_grad_(True)
    b = None if b is None else b.detach().clone().requires_grad_(True)
    y = fn(x, b, **kw)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y)
    grads = torch.autograd.grad(y, [t for t in (x, b) if t is not None], g)
    return y.detach(), grads


def test_reference_lrelu_gain_and_clamp():
    x = torch.tensor([[-1.0, 2.0]])
    b = torch.tensor([0.0, 1.0])
    out = bias_act_reference(x, b, dim=1, act="lrelu")
    assert torch.allclose(out, torch.tensor([[-0.2 * math.sqrt(2), 3 * math.sqrt(2)]]))
    clamped = bias_act_reference(x, b, dim=1, act="lrelu", gain=1.0, clamp=2.5)
    assert torch.allclose(clamped, torch.tensor([[-0.2, 2.5]]))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.bias_act.bias_act(x, act="gelu")


# (shape, dim, layout): MAT's conv maps (bias on channels, NCHW and channels_last) and tokens
SHAPES = [
    pytest.param((2, 5, 7, 9), 1, "nchw", id="nchw"),
    pytest.param((2, 5, 7, 9), 1, "channels_last", id="channels_last"),
    pytest.param((2, 33, 12), 2, "tokens", id="tokens"),
]


@pytest.mark.parametrize("clamp", [None, 0.5])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape,dim,fmt", SHAPES)
@pytest.mark.parametrize("backend", [CPU, TRITON])
def test_fp32_matches_reference_with_gradients(backend, shape, dim, fmt, act, clamp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape[dim], generator=g)
    kw = dict(dim=dim, act=act, clamp=clamp)
    device = device_of(backend)
    y, grads = _grads(KERNELS[backend], x.to(device), b.to(device), **kw)
    y_ref, grads_ref = _grads(bias_act_reference, x, b, **kw)
    assert y.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
    assert_close_verbose(y.cpu(), y_ref, rtol=Y_RTOL[backend], what="y")
    for name, got, want in zip(("dx", "db"), grads, grads_ref):
        assert_close_verbose(got.cpu(), want, rtol=1e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", [CPU, TRITON])
def test_half_within_twice_reference_error(backend, dtype):
    g = torch.Generator().manual_seed(1)
    x, b = torch.randn(2, 6, 8, 8, generator=g) * 3, torch.randn(6, generator=g)
    gold = bias_act_reference(x, b, act="lrelu")
    ref = bias_act_reference(x.to(dtype), b.to(dtype), act="lrelu")
    device = device_of(backend)
    out = KERNELS[backend](x.to(dtype).to(device), b.to(dtype).to(device), act="lrelu").cpu()
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = ((out.float() - gold).norm() / gold.norm()).item()
    ref_err = ((ref.float() - gold).norm() / gold.norm()).item()
    assert err <= 2 * ref_err + 1e-3


# Gains, clamps, no bias, the in-place form, bf16: cheap on the CPU fast path; the Triton
# kernel's arguments are the same few scalars, covered above (its interpreter is slow).
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
@pytest.mark.parametrize("backend", [CPU])
def test_gain_clamp_and_bias_cases_match_reference(backend, shape, dim, case, with_bias, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(*shape, generator=g)
    b = torch.randn(shape[dim], generator=g) if with_bias else None
    for fn in (KERNELS[backend], INPLACE[backend]):
        check(
            lambda x, b, fn=fn: fn(x.clone(), b, dim, **case),
            lambda x, b: bias_act_reference(x, b, dim, **case),
            [x, b],
            dtype,
            f"{fn.__name__} {case}",
        )


@pytest.mark.parametrize("backend", [CPU, TRITON])
def test_no_bias_and_dispatch(backend):
    x = torch.randn(3, 4, 5)
    ref = bias_act_reference(x, None, dim=2, act="lrelu")  # before the in-place call (cpu)
    with mat_fast.use_backend(backend):
        y = mat_fast.ops.bias_act.bias_act(
            x.to(device_of(backend)), None, dim=2, act="lrelu", inplace=True
        )
    assert_close_verbose(y.cpu(), ref, rtol=1e-6, what="y")


@pytest.mark.parametrize("backend", [CPU])
def test_inplace_contract(backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(4, generator=g)
    ref = bias_act_reference(x, b, act="lrelu")
    with mat_fast.use_backend(backend):
        kept = x.clone()
        out = ops.bias_act.bias_act(kept, b, act="lrelu")  # functional: x untouched
        assert torch.equal(kept, x)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close_verbose(out, ref, rtol=1e-6, what="bias_act")
    # The in-place function writes into x ...
    y = x.clone()
    out = INPLACE[backend](y, b, act="lrelu")
    assert out.data_ptr() == y.data_ptr()
    assert_close_verbose(out, ref, rtol=1e-6, what="bias_act_")
    # ... but not into a tensor autograd needs: gradients match the reference's.
    leaf = x.clone().requires_grad_(True)
    out = INPLACE[backend](leaf, b, act="lrelu", gain=2.0)
    assert torch.equal(leaf.detach(), x)
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    leaf2 = x.clone().requires_grad_(True)
    (ref_grad,) = torch.autograd.grad(
        bias_act_reference(leaf2, b, act="lrelu", gain=2.0).sum(), leaf2
    )
    assert torch.equal(grad, ref_grad)


@pytest.mark.parametrize("backend", [TRITON])
def test_invalid_inputs_raise_clear_errors(backend):
    x = torch.randn(2, 3, 4).to(device_of(backend))
    with pytest.raises(ValueError, match="unknown activation"):
        KERNELS[backend](x, None, act="gelu")
    with pytest.raises(ValueError, match="does not fit dim"):
        KERNELS[backend](x, torch.zeros(4).to(x.device), dim=1)
    with pytest.raises(ValueError, match="not supported"):
        KERNELS[backend](x.double(), None)


@pytest.mark.parametrize("backend", [TRITON])  # the one backend with a custom op
def test_opcheck(backend):
    device = device_of(backend)
    x = torch.randn(2, 3, 4, 5).to(device)
    b = torch.randn(3).to(device)
    torch.library.opcheck(
        torch.ops.mat_fast.bias_act_fwd.default,
        (x, b, 1, "lrelu", 0.2, 1.41, None),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


# (shape, dim, layout): MAT's real maps: a 180-channel 64x64 conv map and stage-1 tokens
REAL_SHAPES = [
    pytest.param((2, 180, 64, 64), 1, "nchw", id="conv-nchw"),
    pytest.param((2, 180, 64, 64), 1, "channels_last", id="conv-channels_last"),
    pytest.param((2, 4096, 180), 2, "tokens", id="tokens"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("clamp", [None, 256.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,dim,layout", REAL_SHAPES)
@pytest.mark.parametrize("backend", [TRITON])
def test_gpu_real_shapes_with_gradients(backend, shape, dim, layout, dtype, clamp):
    g = torch.Generator().manual_seed(5)
    x32 = torch.randn(*shape, generator=g) * 4
    b32 = torch.randn(shape[dim], generator=g)
    dy32 = torch.randn(*shape, generator=g)
    kw = dict(dim=dim, act="lrelu", clamp=clamp)

    def run(fn, x, b, dy):
        x = x.detach().clone().requires_grad_(True)
        b = b.detach().clone().requires_grad_(True)
        y = fn(x, b, **kw)
        dx, db = torch.autograd.grad(y, (x, b), dy)
        return y.detach(), dx, db

    on_gpu = [t.cuda().to(dtype) for t in (x32, b32, dy32)]
    on_gpu[0] = _layout(on_gpu[0], layout)
    got = run(KERNELS[backend], *on_gpu)
    assert got[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    ref = run(bias_act_reference, x32, b32, dy32)
    low = run(bias_act_reference, *(t.to(dtype) for t in (x32, b32, dy32)))
    for name, mine, lo, want in zip(("y", "dx", "db"), got, low, ref):
        if dtype == torch.float32:
            assert_close_verbose(mine.cpu(), want, rtol=1e-5, what=name)
        else:
            assert_lowp_close(mine.cpu(), lo, want, name, floor=1e-3)


_BUILD_LOOP = r"""
for dtype in ("fp16", "bf16", "fp32"):
    types = {n: f"*{dtype}" for n in ("x", "bias", "y", "dy", "dx")}
    types.update({n: "fp32" for n in ("alpha", "gain", "clamp")}, n_elements="i64")
    for act in range(5):
        consts = dict(ACT=act, HAS_BIAS=True, HAS_CLAMP=act == 2, BLOCK=1024)
        build(kernels.bias_act_fwd_kernel, types, consts)
        build(kernels.bias_act_bwd_kernel, types, consts)
"""


def test_triton_kernels_compile_for_cuda_target():
    from pathlib import Path

    compile_for_sm90(Path(bat.__file__).with_name("triton_kernels.py"), _BUILD_LOOP)
