"""Shared fixtures of the mat_fast test suite (CPU; GPU tests are marked). Helper functions
live in tests/helpers/ and are imported from there, never from this file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks.common import ieee_fp32_knobs

from .helpers.paths import MANIFEST, TEST_SETS


def pytest_configure(config):
    # Under pytest-xdist (scripts/test.sh runs one worker per core) each worker gets its share
    # of the cores: torch's default of one thread per core in every worker oversubscribes the
    # machine, and its spinning threads then slow every worker down.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def ieee_fp32_on_gpu():
    """On a GPU, fp32 references run in IEEE fp32: cuDNN convolutions default to TF32 (10
    mantissa bits), which would make the reference the inexact side of a parity test
    (the interpreter on CPU never shows it). Tests of TF32 paths ask for them explicitly."""
    if not torch.cuda.is_available():
        yield
        return
    knobs = ieee_fp32_knobs()
    saved = [getattr(obj, name) for _, obj, name, _ in knobs]
    for _, obj, name, value in knobs:
        setattr(obj, name, value)
    yield
    for (_, obj, name, _), value in zip(knobs, saved):
        setattr(obj, name, value)


@pytest.fixture
def default_backend(monkeypatch):
    """Each test starts and ends on backend 'auto' with nothing remembered from the others
    (no MAT_FAST_BACKEND, no fallback already logged)."""
    from mat_fast import backend

    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    backend.set_backend(None)
    backend._logged_fallbacks.clear()
    yield
    backend.set_backend(None)


@pytest.fixture(scope="session")
def test_sets() -> Path:
    if not TEST_SETS.is_dir():
        pytest.skip(f"upstream sample images not found at {TEST_SETS} (set MAT_FAST_SHARED)")
    return TEST_SETS


@pytest.fixture(scope="session")
def manifest() -> dict:
    import json

    if not MANIFEST.is_file():
        pytest.skip(f"state-dict manifest not found at {MANIFEST} (set MAT_FAST_SHARED)")
    return json.loads(MANIFEST.read_text())


@pytest.fixture
def poison_outputs(monkeypatch, default_backend):
    """Every native and Triton kernel output NaN-filled before the kernel writes it, so an
    element a kernel leaves unwritten fails the comparison (MAT_FAST_POISON_OUTPUTS=1)."""
    monkeypatch.setenv("MAT_FAST_POISON_OUTPUTS", "1")


@pytest.fixture(scope="session")
def generator_128():
    """A seeded random generator at 128, the smallest resolution MAT's architecture allows,
    built once per test session: the plumbing tests (API, Inpainter, compile, checkpoints)
    share it. Tests must not change it (eval mode; no training steps)."""
    from mat_fast.inpaint import random_generator

    return random_generator(seed=3, resolution=128)


@pytest.fixture(scope="session")
def stand_in_generator():
    """A cheap stand-in for a 128 generator (tests/helpers/stand_in_generator.py) for the
    tests of the code around the network: Inpainter plans, preparing, seeds, formats and
    memory budgets. Tests must not change it."""
    from .helpers.stand_in_generator import StandInGenerator

    return StandInGenerator(seed=3)


@pytest.fixture(scope="module")
def native_ops():
    """The native extension's Python modules (window attention, partial convolution), built
    or loaded once; skipped only where this machine has no toolchain at all."""
    from mat_fast.ops import native_build

    reason = native_build.probe("cpu", "cpu")
    if reason is not None:
        if "needs ninja" in reason or "needs a C++ compiler" in reason:
            pytest.skip(reason)
        pytest.fail(f"the native extension does not build: {reason}")
    from mat_fast.ops.partial_conv import native as pc_native
    from mat_fast.ops.window_attention import native as wa_native

    return wa_native, pc_native
