"""Shared fixtures and helpers for the mat_fast test suite (CPU; GPU tests are marked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, what: str = ""):
    """Relative check scaled by the reference's magnitude, with a readable failure report."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    scale = e.abs().max().clamp_min(1e-30)
    diff = (a - e).abs()
    bad = diff > rtol * scale
    if bad.any() or not torch.isfinite(a).all():
        idx = bad.nonzero()[:5].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements differ by more than "
            f"{rtol:g} x max|ref| = {rtol * float(scale):.3g}; max diff {float(diff.max()):.3g}; "
            f"first at {idx}; finite={bool(torch.isfinite(a).all())}")


@pytest.fixture(scope="session")
def generator_256():
    """A seeded random 256 generator (cheap enough for end-to-end tests on CPU)."""
    from mat_fast.inpaint import random_generator

    return random_generator(seed=3, resolution=256)
