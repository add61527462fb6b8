"""Modulated convolution on every backend against the reference, the backend a parametrised
axis (only ``cpu`` has a kernel of its own; the other backends run the reference)."""

from __future__ import annotations

import pytest
import torch

from mat_fast.ops.modulated_conv import cpu as modconv_cpu
from mat_fast.ops.modulated_conv.reference import modulated_conv2d_reference
from mat_fast.ops.resample.reference import setup_filter

from ..helpers.asserts import DTYPES, assert_close_verbose, check, layout
from ..helpers.backends import CPU

# The fast kernels of each backend that has one (Triton and CUDA run the reference here).
KERNELS = {"cpu": modconv_cpu.modulated_conv2d_cpu}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel,up,demodulate", [(3, 1, True), (3, 2, True), (1, 1, False)])
@pytest.mark.parametrize("backend", [CPU])
def test_modulated_conv2d_matches_reference(backend, kernel, up, demodulate, batch, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 6, 9, 11, generator=g)
    w = torch.randn(1, 5, 6, kernel, kernel, generator=g) / (kernel * 6**0.5)
    styles = torch.randn(batch, 6, generator=g) + 1
    f = setup_filter()
    args = (demodulate, up, kernel // 2, f)
    check(
        lambda x, w, s: KERNELS[backend](x, w, s, *args),
        lambda x, w, s: modulated_conv2d_reference(x, w, s, *args),
        [x, w, styles],
        dtype,
        f"modulated_conv2d B{batch} k{kernel} up{up}",
    )


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("backend", [CPU])
def test_modulated_conv2d_gradients_match_reference(backend, batch):
    g = torch.Generator().manual_seed(3)
    leaves = [
        torch.randn(batch, 4, 6, 6, generator=g),
        torch.randn(1, 3, 4, 3, 3, generator=g),
        torch.randn(batch, 4, generator=g),
    ]

    def grads(fn):
        xs = [t.clone().requires_grad_(True) for t in leaves]
        return torch.autograd.grad(fn(*xs, True, 2, 1, setup_filter()).square().sum(), xs)

    for a, r in zip(grads(KERNELS[backend]), grads(modulated_conv2d_reference)):
        assert_close_verbose(a, r, rtol=1e-5, what="modulated_conv2d grad")


def test_modulated_conv2d_reference_takes_channels_last_input():
    # The fast backends hand over channels_last maps; the reference copies them to NCHW.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 9, 11, generator=g)
    w, s = torch.randn(1, 5, 6, 3, 3, generator=g), torch.randn(2, 6, generator=g)
    ref = modulated_conv2d_reference(x, w, s, True, 1, 1)
    out = modulated_conv2d_reference(layout(x, "channels_last"), w, s, True, 1, 1)
    assert torch.equal(out, ref)
