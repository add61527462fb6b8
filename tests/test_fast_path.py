"""The 'cpu' backend's PyTorch-level fast paths against their reference twins.

resample (channels_last depthwise FIR, conv padding/stride instead of pad/slice), modulated
conv (plain or input-modulated convs instead of one grouped conv), bias_act (in place), the
public partial-conv epilogue (shapes, in place, clamp order) and the generator's dropout
maps (same seed -> same map whatever the activations' memory layout). Each case runs the
fast function directly, so no native build is needed except for the epilogue tests.

Tolerance: fp32 within 1e-5 of max|ref| (the same arithmetic in another order); bf16/fp16
within 2x the reference's own low-precision error against fp32, plus a small floor.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mat_fast
from mat_fast import ops
from mat_fast.ops.bias_act.reference import bias_act_reference
from mat_fast.ops.modulated_conv.reference import modulated_conv2d_reference
from mat_fast.ops.partial_conv.reference import partial_conv_epilogue_reference
from mat_fast.ops.resample.reference import (
    conv2d_resample_reference,
    setup_filter,
    upfirdn2d_reference,
)

from .conftest import assert_close_verbose

# (ops.bias_act the function shadows the package name, hence import_module)
resample_cpu = importlib.import_module("mat_fast.ops.resample.cpu")
modconv_cpu = importlib.import_module("mat_fast.ops.modulated_conv.cpu")
bias_act_cpu = importlib.import_module("mat_fast.ops.bias_act.cpu")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]


def rel_err(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.double(), e.double()
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))


def check(fast_fn, ref_fn, inputs, dtype, what):
    """fast(inputs in dtype) vs ref(inputs in fp32), with flash-attention's low-precision rule."""
    low = [t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs]
    ref = ref_fn(*inputs)
    out = fast_fn(*low)
    assert out.dtype == dtype and out.shape == ref.shape, what
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    if dtype == torch.float32:
        assert_close_verbose(out, ref, rtol=1e-5, what=what)
    else:
        ref_low = ref_fn(*low)
        assert rel_err(out, ref) <= 2 * rel_err(ref_low, ref) + 2e-3, what


def layout(x, name):
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x


# ---------------------------------------------------------------------------------------
# Resampling

UPFIRDN_CASES = [
    dict(padding=2),  # MAT's blur before a stride-2 conv
    dict(padding=1, gain=4),  # MAT's blur after a transposed conv
    dict(padding=[1, 2, 0, 3]),  # asymmetric
    dict(padding=[-1, 2, 1, -2]),  # negative = crop
    dict(down=2, padding=[2, 1, 2, 1]),  # downsampling by stride
    dict(padding=1, flip_filter=True),
    dict(up=2, padding=[2, 1, 2, 1], gain=4),  # zero insertion (runs the reference)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("case", UPFIRDN_CASES, ids=str)
def test_upfirdn2d_cpu_matches_reference(case, fmt, dtype):
    g = torch.Generator().manual_seed(0)
    x = layout(torch.randn(2, 5, 17, 19, generator=g), fmt)  # batch > 1, odd sizes
    f = setup_filter()
    check(
        lambda x: resample_cpu.upfirdn2d_cpu(x, f, **case),
        lambda x: upfirdn2d_reference(x, f, **case),
        [x],
        dtype,
        f"upfirdn2d {case}",
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize(
    "kernel,up,down,groups",
    [
        (3, 1, 1, 1),
        (3, 2, 1, 1),
        (3, 1, 2, 1),  # MAT's 3x3 convs
        (1, 1, 1, 1),
        (1, 2, 1, 1),
        (1, 1, 2, 1),  # 1x1 (ToRGB, EncFromRGB, discriminator skip)
        (3, 2, 1, 2),
        (3, 1, 2, 2),  # grouped
    ],
)
def test_conv2d_resample_cpu_matches_reference(kernel, up, down, groups, fmt, dtype):
    g = torch.Generator().manual_seed(1)
    x = layout(torch.randn(2, 6, 13, 11, generator=g), fmt)
    w = torch.randn(4, 6 // groups, kernel, kernel, generator=g) * 0.3
    f = setup_filter()
    args = dict(up=up, down=down, padding=kernel // 2, groups=groups)
    out = resample_cpu.conv2d_resample_cpu(x, w, f, **args)
    assert out.is_contiguous(memory_format=torch.channels_last) or up > 1 and kernel == 1
    check(
        lambda x, w: resample_cpu.conv2d_resample_cpu(x, w, f, **args),
        lambda x, w: conv2d_resample_reference(x, w, f, **args),
        [x, w],
        dtype,
        f"conv2d_resample k{kernel} up{up} down{down} g{groups}",
    )


# ---------------------------------------------------------------------------------------
# Modulated convolution


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel,up,demodulate", [(3, 1, True), (3, 2, True), (1, 1, False)])
def test_modulated_conv2d_cpu_matches_reference(kernel, up, demodulate, batch, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 6, 9, 11, generator=g)
    w = torch.randn(1, 5, 6, kernel, kernel, generator=g) / (kernel * 6**0.5)
    styles = torch.randn(batch, 6, generator=g) + 1
    f = setup_filter()
    args = (demodulate, up, kernel // 2, f)
    check(
        lambda x, w, s: modconv_cpu.modulated_conv2d_cpu(x, w, s, *args),
        lambda x, w, s: modulated_conv2d_reference(x, w, s, *args),
        [x, w, styles],
        dtype,
        f"modulated_conv2d B{batch} k{kernel} up{up}",
    )


@pytest.mark.parametrize("batch", [1, 2])
def test_modulated_conv2d_cpu_gradients_match_reference(batch):
    g = torch.Generator().manual_seed(3)
    leaves = [
        torch.randn(batch, 4, 6, 6, generator=g),
        torch.randn(1, 3, 4, 3, 3, generator=g),
        torch.randn(batch, 4, generator=g),
    ]

    def grads(fn):
        xs = [t.clone().requires_grad_(True) for t in leaves]
        return torch.autograd.grad(fn(*xs, True, 2, 1, setup_filter()).square().sum(), xs)

    for a, r in zip(grads(modconv_cpu.modulated_conv2d_cpu), grads(modulated_conv2d_reference)):
        assert_close_verbose(a, r, rtol=1e-5, what="modulated_conv2d grad")


def test_modulated_conv2d_reference_takes_channels_last_input():
    # The fast backends hand over channels_last maps; the reference copies them to NCHW.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 9, 11, generator=g)
    w, s = torch.randn(1, 5, 6, 3, 3, generator=g), torch.randn(2, 6, generator=g)
    ref = modulated_conv2d_reference(x, w, s, True, 1, 1)
    out = modulated_conv2d_reference(layout(x, "channels_last"), w, s, True, 1, 1)
    assert torch.equal(out, ref)


# ---------------------------------------------------------------------------------------
# Bias + activation


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
    with mat_fast.use_backend("cpu" if _cpu_available() else "reference"):
        kept = x.clone()
        out = ops.bias_act(kept, b, act="lrelu")  # functional: x untouched
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


def _cpu_available() -> bool:
    return mat_fast.backend.available_backends("cpu")["cpu"] is None


# ---------------------------------------------------------------------------------------
# Partial-convolution epilogue (public op)


def test_partial_conv_epilogue_validates_shapes():
    x, ratio = torch.randn(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    with pytest.raises(ValueError, match="x must have shape"):
        ops.partial_conv_epilogue(x[0], None, ratio, 1.0, 0.2)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.partial_conv_epilogue(x, torch.zeros(4), ratio, 1.0, 0.2)
    with pytest.raises(ValueError, match="ratio must have shape"):
        ops.partial_conv_epilogue(x, None, torch.rand(2, 3, 4, 5), 1.0, 0.2)
    with pytest.raises(ValueError, match="ratio must have shape"):
        ops.partial_conv_epilogue(x, None, torch.rand(1, 1, 4, 5), 1.0, 0.2)


def test_partial_conv_epilogue_reference_clamps_before_the_ratio():
    # Upstream's partial conv multiplies the output of a clamped Conv2dLayer by the ratio.
    x = torch.tensor([3.0, -3.0, 0.5]).view(1, 3, 1, 1)
    ratio = torch.full((1, 1, 1, 1), 2.0)
    out = partial_conv_epilogue_reference(x, None, ratio, 1.0, 0.5, clamp=1.0)
    assert out.flatten().tolist() == [2.0, -2.0, 1.0]
    ref = bias_act_reference(x, None, act="lrelu", alpha=0.5, gain=1.0, clamp=1.0) * ratio
    assert torch.equal(out, ref)


@pytest.mark.parametrize("clamp", [None, 0.7])
@pytest.mark.parametrize("fmt", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["functional", "inplace"])
def test_partial_conv_epilogue_cpu_matches_reference(inplace, dtype, fmt, clamp):
    if not _cpu_available():
        pytest.skip("the 'cpu' backend (native build) is unavailable here")
    g = torch.Generator().manual_seed(6)
    x = layout(torch.randn(2, 5, 7, 9, generator=g), fmt)
    bias = torch.randn(5, generator=g)
    ratio = torch.rand(2, 1, 7, 9, generator=g) * 2  # non-binary
    ref = partial_conv_epilogue_reference(x, bias, ratio, 1.41, 0.2, clamp)
    low = x.to(dtype)
    before = low.clone()
    out = ops.partial_conv_epilogue(
        low, bias.to(dtype), ratio.to(dtype), 1.41, 0.2, clamp, inplace=inplace, backend_name="cpu"
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


def test_partial_conv_epilogue_inplace_keeps_autograd_inputs():
    if not _cpu_available():
        pytest.skip("the 'cpu' backend (native build) is unavailable here")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3, 5, 5, generator=g, requires_grad=True)
    ratio = torch.rand(1, 1, 5, 5, generator=g)
    out = ops.partial_conv_epilogue(x, None, ratio, 1.41, 0.2, inplace=True, backend_name="cpu")
    (grad,) = torch.autograd.grad(out.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(
        partial_conv_epilogue_reference(x2, None, ratio, 1.41, 0.2).sum(), x2
    )
    assert_close_verbose(grad, ref, rtol=1e-6, what="grad")


# ---------------------------------------------------------------------------------------
# Dropout maps: a function of the seed, not of our memory layout


@pytest.mark.parametrize("transposed", [False, True])
def test_dropout_map_ignores_the_input_layout(transposed):
    from mat_fast.model.generator import _dropout_half

    x = torch.randn(1, 64, 180)
    layouts = [x, x.transpose(1, 2).contiguous().transpose(1, 2)]  # contiguous, transposed
    maps = []
    for t in layouts:
        torch.manual_seed(11)
        maps.append(_dropout_half(t, transposed=transposed))
    assert torch.equal(maps[0], maps[1])
    # ... and it is upstream's draw: ones_like of a tensor of that layout
    torch.manual_seed(11)
    upstream = torch.nn.functional.dropout(
        torch.ones_like(layouts[int(transposed)]) * 0.5, p=0.5, training=True
    )
    assert torch.equal(maps[0], upstream)
