"""The backend axis of the op tests (one module per op, the backend a parameter, as
Liger-Kernel's tests do).

The parameters are static names, so collecting builds nothing and test IDs are the same on
every machine; a test asks for what its backend needs when it runs (:func:`native_kernels`),
and is skipped with the reason where this machine cannot run it:

* ``cpu``: the CPU fast paths (PyTorch compositions) and, under them, the C++ extension;
* ``triton``: the Triton kernels, in Triton's interpreter on CPU tensors without a GPU,
  compiled for CUDA where there is one (tests/helpers/triton_interpreter.py);
* ``cuda``: the native CUDA extension, marked ``gpu`` (skipped without a CUDA GPU).
"""

from __future__ import annotations

import pytest
import torch

from .triton_interpreter import DEVICE as TRITON_DEVICE

CPU = pytest.param("cpu", id="cpu")
TRITON = pytest.param("triton", id="triton")
CUDA = pytest.param("cuda", marks=pytest.mark.gpu, id="cuda")


def device_of(backend: str) -> torch.device:
    """Where a backend's kernels take their tensors."""
    if backend == "triton":
        return TRITON_DEVICE
    return torch.device("cuda" if backend == "cuda" else "cpu")


def native_kernels(backend: str):
    """The native extension's Python modules ``(window_attention.native,
    partial_conv.native)`` for ``backend`` ('cpu' or 'cuda'), built or loaded on first use.
    A CPU without any toolchain skips; any other build failure fails the test."""
    from mat_fast.ops import native_build

    device = "cuda" if backend == "cuda" else "cpu"
    reason = native_build.probe(device, device)
    if reason is not None:
        if device == "cpu" and ("needs ninja" in reason or "needs a C++ compiler" in reason):
            pytest.skip(reason)
        pytest.fail(f"the native extension does not build for {device}: {reason}")
    from mat_fast.ops.partial_conv import native as pc_native
    from mat_fast.ops.window_attention import native as wa_native

    return wa_native, pc_native
