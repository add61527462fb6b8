"""Every op on the training path, on every backend, under backward and double backward.

R1 differentiates the discriminator's input gradient again; G's ops get the same check. Per
op and backend:

* backends that take float64 (``reference``; ``cpu``: PyTorch fast paths and the native C++
  kernels) pass ``gradcheck`` (the kernels' own backward) and ``gradgradcheck`` (gradients
  taken with ``create_graph=True``) in float64;
* ``triton`` (float32 only; its interpreter on CPU) gives the reference's first and second
  derivatives: a plain gradient, a gradient with ``create_graph=True`` and the gradient of
  that gradient, each within 1e-5 of the largest reference value;
* a fused kernel without a second derivative of its own falls back to its reference twin
  when a graph is created, logs it once and never raises; a plain backward keeps the kernel.

Shapes are tiny: the Triton cases run in the interpreter.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import pytest
import torch

from mat_fast import backend, ops
from mat_fast.ops import double_backward
from mat_fast.ops.bias_act import bias_act
from mat_fast.ops.window_attention import window_attention

from ..helpers.asserts import assert_close_verbose
from ..helpers.triton_interpreter import DEVICE, import_kernels, kernel_test_env

_kernels = [
    import_kernels(f"mat_fast.ops.{name}.triton")
    for name in ("bias_act", "window_attention", "partial_conv")
]
_triton_env = kernel_test_env(_kernels[0])

BACKENDS = ["reference", "cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]
#: Backends whose ops all take float64 inputs.
FLOAT64_BACKENDS = {"reference", "cpu"}


def _device(backend_name):
    return {"triton": DEVICE, "cuda": torch.device("cuda")}.get(backend_name, "cpu")


def _filter(dtype):
    return ops.setup_filter([1, 3, 3, 1]).to(dtype)


# ----------------------------------------------------------------------------------------
# Cases: name -> (make inputs(dtype, gen), op(*inputs, backend_name)). Inputs requiring a
# gradient are the differentiable ones; the rest (masks, the FIR filter) are fixed.


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def _bias_act_inputs(gen):
    return _randn(gen, 2, 4, 3, 3), _randn(gen, 4)


def _window_inputs(gen):
    return [_randn(gen, 1, 16, 8) for _ in range(3)]


def _mask_tokens(gen):
    return (torch.rand(1, 16, 1, generator=gen, dtype=torch.float64) > 0.3).double()


def _qkv_inputs(gen):
    return _randn(gen, 1, 16, 8), _randn(gen, 24, 8, scale=0.3), _randn(gen, 24)


def _pixel_mask(gen, h=4):
    return (torch.rand(1, 1, h, h, generator=gen, dtype=torch.float64) > 0.4).double()


CASES = {
    # D's ops on the R1 path
    "bias_act_lrelu": (
        _bias_act_inputs,
        lambda x, b, be: bias_act(x, b, act="lrelu", clamp=2.0, backend_name=be),
    ),
    "bias_act_inplace_bias_only": (  # x is a constant: the 'cpu' in-place path runs
        lambda gen: (_randn(gen, 4),),
        lambda b, be: bias_act(
            torch.linspace(-2, 2, 72, dtype=b.dtype).reshape(2, 4, 3, 3),
            b,
            act="lrelu",
            inplace=True,
            backend_name=be,
        ),
    ),
    "bias_act_linear_dim1": (  # the fully connected layers' bias
        lambda gen: (_randn(gen, 3, 5), _randn(gen, 5)),
        lambda x, b, be: bias_act(x, b, dim=1, backend_name=be),
    ),
    "upfirdn2d_down2": (
        lambda gen: (_randn(gen, 1, 3, 6, 6),),
        lambda x, be: ops.upfirdn2d(x, _filter(x.dtype), down=2, padding=1, backend_name=be),
    ),
    "conv2d_resample_k3_down2": (
        lambda gen: (_randn(gen, 1, 3, 6, 6), _randn(gen, 4, 3, 3, 3)),
        lambda x, w, be: ops.conv2d_resample(
            x, w, _filter(x.dtype), down=2, padding=1, backend_name=be
        ),
    ),
    "conv2d_resample_k1_down2": (
        lambda gen: (_randn(gen, 1, 3, 6, 6), _randn(gen, 4, 3, 1, 1)),
        lambda x, w, be: ops.conv2d_resample(x, w, _filter(x.dtype), down=2, backend_name=be),
    ),
    "conv2d_resample_k3": (
        lambda gen: (_randn(gen, 1, 3, 5, 5), _randn(gen, 4, 3, 3, 3)),
        lambda x, w, be: ops.conv2d_resample(x, w, padding=1, backend_name=be),
    ),
    # G's ops
    "modulated_conv2d": (
        lambda gen: (_randn(gen, 2, 3, 4, 4), _randn(gen, 1, 4, 3, 3, 3), _randn(gen, 2, 3)),
        lambda x, w, s, be: ops.modulated_conv2d(x, w, s, padding=1, backend_name=be),
    ),
    "modulated_conv2d_up2": (
        lambda gen: (_randn(gen, 2, 3, 3, 3), _randn(gen, 1, 4, 3, 3, 3), _randn(gen, 2, 3)),
        lambda x, w, s, be: ops.modulated_conv2d(
            x, w, s, up=2, padding=1, resample_filter=_filter(x.dtype), backend_name=be
        ),
    ),
    "window_attention_shifted_masked": (
        lambda gen: (*_window_inputs(gen), _mask_tokens(gen)),
        lambda q, k, v, m, be: window_attention(q, k, v, m, (4, 4), 2, 1, 2, backend_name=be)[0],
    ),
    "window_attention_qkv": (
        lambda gen: (*_qkv_inputs(gen), _mask_tokens(gen)),
        lambda x, w, b, m, be: ops.window_attention_qkv(
            x, w, b, m, (4, 4), 2, 1, 2, backend_name=be
        )[0],
    ),
    "partial_conv_epilogue": (
        lambda gen: (
            _randn(gen, 1, 4, 4, 4),
            _randn(gen, 4),
            torch.rand(1, 1, 4, 4, generator=gen, dtype=torch.float64) * 2,
        ),
        lambda x, b, r, be: ops.partial_conv_epilogue(x, b, r, 1.4, 0.2, backend_name=be),
    ),
    "partial_conv_fused": (
        lambda gen: (_randn(gen, 1, 4, 4, 4), _randn(gen, 4), _pixel_mask(gen)),
        lambda x, b, m, be: ops.partial_conv_fused(x, b, m, 3, 1, 1, 1.4, 0.2, backend_name=be)[0],
    ),
}
#: Inputs of each case that are constants (masks): no gradient is asked for them.
CONSTANT_INPUTS = {
    "window_attention_shifted_masked": {3},
    "window_attention_qkv": {3},
    "partial_conv_fused": {2},
}


def _inputs(name, dtype, device):
    make, _ = CASES[name]
    tensors = make(torch.Generator().manual_seed(sum(map(ord, name))))
    constant = CONSTANT_INPUTS.get(name, set())
    return [
        t.to(device=device, dtype=dtype).requires_grad_(i not in constant)
        for i, t in enumerate(tensors)
    ]


def _op(name, backend_name, inputs):
    """The case's op as a function of its differentiable inputs only."""
    _, fn = CASES[name]
    constant = CONSTANT_INPUTS.get(name, set())

    def op(*diff):
        it = iter(diff)
        args = [inputs[i] if i in constant else next(it) for i in range(len(inputs))]
        return fn(*args, backend_name)

    return op, [t for i, t in enumerate(inputs) if i not in constant]


def _derivatives(
    name, backend_name, dtype, device, forward=contextlib.nullcontext, whole=contextlib.nullcontext
):
    """(first derivatives without a graph, the same with create_graph=True, second
    derivatives) of fixed random projections of the op's output; the op runs under the
    context ``forward()``, and all of it (forward and derivatives) under ``whole()``."""
    inputs = _inputs(name, dtype, device)
    op, diff = _op(name, backend_name, inputs)
    gen = torch.Generator().manual_seed(7)
    with whole():
        with forward():
            y = op(*diff)
        r = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        plain = torch.autograd.grad((y * r).sum(), diff, retain_graph=True)
        first = torch.autograd.grad((y * r).sum(), diff, create_graph=True)
        s = [torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g) for g in first]
        connected = [(g * si).sum() for g, si in zip(first, s) if g.requires_grad]
        second = (
            torch.autograd.grad(sum(connected), diff, allow_unused=True)
            if connected
            else [None] * len(diff)
        )
    second = [torch.zeros_like(t) if g is None else g for g, t in zip(second, diff)]
    return plain, first, second


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_gradients_and_second_derivatives(name, backend_name):
    if backend_name in FLOAT64_BACKENDS:
        inputs = _inputs(name, torch.float64, "cpu")
        op, diff = _op(name, backend_name, inputs)
        # fast_mode: random projections of the Jacobians (the full ones take minutes here)
        check = dict(eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
        assert torch.autograd.gradcheck(op, diff, **check)
        assert torch.autograd.gradgradcheck(op, diff, **check)
        return
    # No float64 on this backend: its derivatives against the reference's.
    device = _device(backend_name)
    ours = _derivatives(name, backend_name, torch.float32, device)
    ref = _derivatives(name, "reference", torch.float32, device)
    for order, got, want in zip(("plain", "create_graph", "second"), ours, ref):
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close_verbose(g.cpu(), w.cpu(), rtol=1e-5, what=f"{name} {order} d/input{i}")


# ----------------------------------------------------------------------------------------
# Under autocast, as `mat-fast train --precision bf16` runs them: fp32 inputs, autocast
# choosing each op's dtype. The Trainer takes the derivatives inside autocast (the loss
# calls backward there); a user's loop may take them outside, where an autograd function's
# backward can meet a bf16 gradient and a saved fp32 tensor (the FIR's adjoint raised so,
# as did the attention's reference twin on bf16 q, k, v and an fp32 mask). Both are run.

#: Largest difference from the fp32 reference's derivatives, relative to their largest:
#: bf16 roundings (2^-8 each) of operands and results, 3.2% at most over these cases
#: (measured on the CPU backends). A wrong derivative is off by far more.
AUTOCAST_RTOL = 0.06
#: The reference attention's key gradient on raw q, k, v loses 16%: autocast runs its
#: q.k and attention.v products in bf16, and the softmax's gradient cancels most of what
#: reaches k (the fused backends keep fp32 here and lose nothing).
AUTOCAST_RTOL_CASE = {"window_attention_shifted_masked": 0.25}


@pytest.mark.parametrize("scope", ["forward", "whole"])
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_derivatives_under_bf16_autocast(name, backend_name, scope):
    device = _device(backend_name)
    bf16 = functools.partial(torch.autocast, torch.device(device).type, dtype=torch.bfloat16)
    ours = _derivatives(name, backend_name, torch.float32, device, **{scope: bf16})
    want = _derivatives(name, "reference", torch.float32, device)  # fp32, no autocast
    for order, got, ref in zip(("plain", "create_graph", "second"), ours, want):
        for i, (g, w) in enumerate(zip(got, ref)):
            assert g.dtype == torch.float32, f"{name} {order} d/input{i}: {g.dtype}"
            assert_close_verbose(
                g.cpu(),
                w.cpu(),
                rtol=AUTOCAST_RTOL_CASE.get(name, AUTOCAST_RTOL),
                what=f"{name} {order} d/input{i}",
            )


# ----------------------------------------------------------------------------------------
# The fallback: logged once, never raising, plain backward untouched.

#: (case, backend, the op name the fallback logs) for each kernel that falls back.
FALLBACKS = [
    ("bias_act_lrelu", "triton", "bias_act (triton)"),
    ("window_attention_shifted_masked", "triton", "window_attention (triton)"),
    ("window_attention_qkv", "triton", "window_attention (triton)"),
    ("partial_conv_epilogue", "triton", "partial_conv (triton)"),
    ("partial_conv_fused", "triton", "partial_conv (triton)"),
    ("window_attention_shifted_masked", "cpu", "window_attention (native)"),
    ("window_attention_qkv", "cpu", "window_attention (native)"),
    ("partial_conv_epilogue", "cpu", "partial_conv_epilogue (native)"),
    *(
        pytest.param(name, "cuda", op, marks=pytest.mark.gpu)
        for name, op in (
            ("window_attention_shifted_masked", "window_attention (native)"),
            ("partial_conv_epilogue", "partial_conv_epilogue (native)"),
        )
    ),
]


def _skip_without_native(backend_name):
    if backend_name in ("cpu", "cuda"):
        reason = backend.kernel_layers(backend_name)["native"]
        if reason is not None:
            pytest.skip(f"no native layer here ({reason}): '{backend_name}' runs the reference")


def _fallback_lines(caplog, op):
    return [r for r in caplog.records if op in r.message and "create_graph=True" in r.message]


@pytest.mark.parametrize("name,backend_name,op", FALLBACKS, ids=lambda v: str(v))
def test_kernel_without_second_derivative_falls_back_and_logs_once(
    name, backend_name, op, caplog, monkeypatch
):
    _skip_without_native(backend_name)
    monkeypatch.setattr(double_backward, "_logged", set())
    device = _device(backend_name)
    with caplog.at_level(logging.INFO, logger="mat_fast"):
        _derivatives(name, backend_name, torch.float32, device)  # plain, then with a graph
        assert len(_fallback_lines(caplog, op)) == 1
        _derivatives(name, backend_name, torch.float32, device)
    assert len(_fallback_lines(caplog, op)) == 1  # once per process and op


@pytest.mark.parametrize("name,backend_name,op", FALLBACKS, ids=lambda v: str(v))
def test_plain_backward_keeps_the_kernel(name, backend_name, op, caplog, monkeypatch):
    """Without create_graph nothing falls back (the kernels' own backward runs)."""
    _skip_without_native(backend_name)
    monkeypatch.setattr(double_backward, "_logged", set())
    inputs = _inputs(name, torch.float32, _device(backend_name))
    fn, diff = _op(name, backend_name, inputs)
    with caplog.at_level(logging.INFO, logger="mat_fast"):
        fn(*diff).square().sum().backward()
    assert not _fallback_lines(caplog, op)
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in diff)


class _SmallD(torch.nn.Module):
    """MAT's discriminator layers, narrow: from-RGB (1x1), a residual block (3x3, 3x3 down,
    1x1 down without bias), then the fully connected epilogue (lrelu, linear)."""

    def __init__(self):
        super().__init__()
        from mat_fast.model.discriminator import DisBlock, DisFromRGB
        from mat_fast.model.layers import FullyConnectedLayer

        self.rgb = DisFromRGB(4, 4, "lrelu")
        self.block = DisBlock(4, 6, "lrelu")
        self.fc0 = FullyConnectedLayer(6 * 4 * 4, 5, activation="lrelu")
        self.fc1 = FullyConnectedLayer(5, 1)

    def forward(self, img, mask):
        x = self.block(self.rgb(torch.cat([mask - 0.5, img], dim=1)))
        return self.fc1(self.fc0(x.flatten(1)))


def test_r1_through_discriminator_layers_matches_the_reference_on_every_backend():
    """R1 as the loss takes it (the input gradient with create_graph, its squared norm,
    then the parameters' gradients) through D's layers, per backend."""

    def r1_grads(backend_name, device):
        torch.manual_seed(0)
        D = _SmallD().to(device)
        gen = torch.Generator().manual_seed(1)
        img = torch.randn(2, 3, 8, 8, generator=gen).to(device).requires_grad_(True)
        mask = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float().to(device)
        with backend.use_backend(backend_name):
            (g,) = torch.autograd.grad(D(img, mask).sum(), img, create_graph=True)
            g.square().sum().backward()
        # (the last layer's bias has no R1 gradient: None on every backend)
        return {n: p.grad if p.grad is None else p.grad.cpu() for n, p in D.named_parameters()}

    want = r1_grads("reference", "cpu")
    # Each parameter within 1e-4 of its largest gradient, floored at 1e-3 of the largest
    # of all (the first layer's bias gradient is ~1e-5 of the others: fp32 rounding).
    floor = 1e-3 * max(float(g.abs().max()) for g in want.values() if g is not None)
    for backend_name, device in (("cpu", "cpu"), ("triton", DEVICE)):
        assert backend.has_kernel("bias_act", device, backend_name)  # not the twin again
        got = r1_grads(backend_name, device)
        assert {n for n, g in got.items() if g is None} == {n for n, g in want.items() if g is None}
        for n in (n for n, g in want.items() if g is not None):
            scale = max(float(want[n].abs().max()), floor)
            err = float((got[n] - want[n]).abs().max())
            assert err <= 1e-4 * scale, f"{backend_name} {n}: {err:.3g} > 1e-4 x {scale:.3g}"
