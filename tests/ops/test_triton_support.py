"""mat_fast/ops/triton_support.py: the device check that every Triton op's Python entry
point runs, eagerly and inside torch.compile."""

from __future__ import annotations

import pytest
import torch

from mat_fast.ops import triton_support


def test_device_check_is_not_traced_into_the_kernel_type(monkeypatch):
    """On CUDA, Dynamo cannot take isinstance() of a compiled @triton.jit kernel (every
    torch.compile of a Triton op failed on the H200 with torch 2.11): while tracing, the
    check must not ask the kernel anything."""

    def ask(kernel):
        raise AssertionError("the kernel's type was asked while tracing")

    monkeypatch.setattr(triton_support, "kernels_interpreted", ask)
    kernel = object()  # the check only hands it to kernels_interpreted

    def f(x, y):
        device = triton_support.check_device("op", kernel, x, y)
        return x + y if device.type == "cpu" else x

    out = torch.compile(f, backend="eager", fullgraph=True)(torch.ones(3), torch.ones(3))
    assert torch.equal(out, torch.full((3,), 2.0))
    with pytest.raises(AssertionError, match="asked"):  # eagerly, it asks
        f(torch.ones(3), torch.ones(3))


def test_device_check_refuses_mixed_devices_even_while_tracing():
    x = torch.ones(2)
    meta = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match="one device"):
        triton_support.check_device("op", object(), x, meta)
