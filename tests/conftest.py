"""Shared fixtures and helpers for the mat_fast test suite (CPU; GPU tests are marked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from benchmarks.common import ieee_fp32_knobs

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MAT_FAST_SHARED", ROOT.parent / "shared"))
TEST_SETS = SHARED / "data" / "mat_test_sets"
MANIFEST = SHARED / "reference" / "mat_state_dicts.json"


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


def assert_close_verbose(
    actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, what: str = ""
):
    """Relative check scaled by the reference's magnitude, with a readable failure report."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    a, e = actual.double(), expected.double()
    scale = e.abs().max().clamp_min(1e-30)
    diff = (a - e).abs()
    bad = diff > rtol * scale
    if bad.any() or not torch.isfinite(a).all():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ by more than "
            f"{rtol:g} x max|ref| = {rtol * float(scale):.3g}; max diff {float(diff.max()):.3g}; "
            f"first at {idx}; finite={bool(torch.isfinite(a).all())}"
        )


def assert_lowp_close(
    actual: torch.Tensor, ref_lowp: torch.Tensor, ref32: torch.Tensor, what: str, floor: float
):
    """flash-attention's rule for half-precision kernels: max error vs the fp32 reference at
    most 2x the reference's own low-precision error, plus ``floor`` x max|ref| for values
    where both round alike. Where the low-precision reference itself is non-finite it
    counts as exact, so the kernel must be within the floor there."""
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = float(ref32.abs().max())
    err = float((actual.double() - ref32.double()).abs().max())
    ref_err = float((ref_lowp.double() - ref32.double()).nan_to_num(0, 0, 0).abs().max())
    assert err <= 2 * ref_err + floor * scale, (
        f"{what}: max error {err:.3g} vs fp32 exceeds 2 x reference's {ref_err:.3g} + {floor * scale:.3g}"
    )


@pytest.fixture(scope="session")
def generator_256():
    """A seeded random 256 generator (cheap enough for end-to-end tests on CPU)."""
    from mat_fast.inpaint import random_generator

    return random_generator(seed=3, resolution=256)


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
