"""Import a Triton kernel module for the tests: under Triton's interpreter (CPU tensors)
when no GPU is visible, compiled for CUDA otherwise.

Triton fixes ``TRITON_INTERPRET`` for a kernel module when it is imported, so the variable is
set around that import only and then restored: other test modules see the environment
they expect. :func:`kernel_test_env` makes the fixture that sets it again while a module's
tests run (for the backend probe).
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

#: True when the kernels run in Triton's interpreter (no GPU, or TRITON_INTERPRET=1 given).
INTERPRET = not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
#: Where the tests put their tensors.
DEVICE = torch.device("cpu" if INTERPRET else "cuda")


def import_kernels(module: str):
    """Import ``module`` (e.g. ``mat_fast.ops.bias_act.triton``) with TRITON_INTERPRET set
    as :data:`INTERPRET` says, restoring the environment afterwards."""
    previous = os.environ.get("TRITON_INTERPRET")
    if INTERPRET:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return importlib.import_module(module)
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def kernel_test_env(kernels):
    """An autouse fixture for the tests of kernel module ``kernels`` (assign it to a
    module-level name): the interpreter on where :data:`INTERPRET` says, no backend override
    from the environment, and every kernel output filled with NaN before the kernel writes
    it, so an element it leaves unwritten fails the comparison."""
    from mat_fast import backend

    @pytest.fixture(autouse=True)
    def triton_env(monkeypatch):
        if INTERPRET:
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.delenv(backend.ENV_VAR, raising=False)
        monkeypatch.setenv("MAT_FAST_POISON_OUTPUTS", "1")  # read on every allocation
        yield

    return triton_env
