"""Memory: the estimate, the plans it leads to (full, crop, resize), batches that fit, a
clear error where nothing fits or memory runs out anyway, and the malloc choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mat_fast import Inpainter, MemoryBudgetError, cpu_memory, memory
from mat_fast.memory import (
    CPU_MEASURED,
    GIB,
    PHOTO_BYTES_PER_PIXEL,
    SAFETY,
    forward_bytes,
    parse_size,
)


@pytest.fixture
def hooks():
    """Forward pre-hooks on the shared generator, removed after the test."""
    handles = []
    yield lambda module, hook: handles.append(module.register_forward_pre_hook(hook))
    for handle in handles:
        handle.remove()


class Canvases:
    """Records the (batch, channels, h, w) of every forward."""

    def __init__(self, inpainter, hooks):
        self.shapes = []
        hooks(inpainter.generator, lambda module, args: self.shapes.append(tuple(args[0].shape)))


def _both(fn):
    """A bound that holds whatever the process's malloc setting is (other tests change it)."""
    return [fn(kept) for kept in (True, False)]


def _budget_between(fits_pixels, batch_fits, refuses_pixels, batch_refuses, photo_pixels):
    low = max(_both(lambda k: forward_bytes("cpu", torch.float32, k, fits_pixels, batch_fits)))
    high = min(
        _both(lambda k: forward_bytes("cpu", torch.float32, k, refuses_pixels, batch_refuses))
    )
    assert low < high
    return (low + high) // 2 + PHOTO_BYTES_PER_PIXEL * photo_pixels


def test_parse_size():
    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * GIB
    assert parse_size("512M") == 512 << 20 and parse_size("1.5") == int(1.5 * GIB)
    for bad in ("lots", "-1G", "0", "nanG"):
        with pytest.raises(ValueError, match="such as 8G"):
            parse_size(bad)


def test_estimate_passes_through_the_measured_points_and_grows(monkeypatch):
    for (key, kept), points in CPU_MEASURED.items():
        # "bfloat16 widened": a CPU whose half convolutions run in fp32 (no oneDNN bf16)
        dtype, widened = key.split()[0], key.endswith(" widened")
        monkeypatch.setattr(
            memory, "half_convolutions_in_fp32", lambda _dtype, widened=widened: widened
        )
        for h, w, gib, _ in points:
            estimate = forward_bytes("cpu", getattr(torch, dtype), kept, h * w)
            assert estimate == pytest.approx(SAFETY * gib * GIB, rel=1e-6), (key, kept, h, w)
    sizes = [forward_bytes("cpu", torch.float32, True, s * s) for s in (128, 512, 1000, 3000)]
    assert sizes == sorted(sizes) and sizes[0] > 0
    one = forward_bytes("cpu", torch.float32, True, 512 * 512, batch=2)
    assert one == forward_bytes("cpu", torch.float32, True, 2 * 512 * 512)


def _scene(h, w):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hole = np.zeros((h, w), bool)
    hole[20 : h - 20, 30 : w - 30] = True  # most of the picture
    return image, hole


def test_auto_scales_a_region_down_until_it_fits(stand_in_generator, hooks, caplog):
    image, hole = _scene(600, 700)  # full canvas 640x768 on the 128 network
    budget = _budget_between(256 * 256, 1, 512 * 512, 1, 600 * 700)
    inpaint = Inpainter(stand_in_generator, device="cpu", max_memory=budget)
    seen = Canvases(inpaint, hooks)
    out = inpaint(image, hole, seed=0)
    assert len(seen.shapes) == 1 and seen.shapes[0][:2] == (1, 3)
    assert seen.shapes[0][2] * seen.shapes[0][3] < 512 * 512  # not the 640x768 of 'full'
    assert np.array_equal(out[~hole], image[~hole]) and not np.array_equal(out[hole], image[hole])
    assert "inpainting it at" in caplog.text  # says the quality trade it made


def test_full_strategy_that_does_not_fit_is_refused_with_how_much(stand_in_generator, hooks):
    image, hole = _scene(600, 700)
    budget = _budget_between(256 * 256, 1, 512 * 512, 1, 600 * 700)
    inpaint = Inpainter(stand_in_generator, device="cpu", max_memory=budget)
    seen = Canvases(inpaint, hooks)
    with pytest.raises(MemoryBudgetError, match=r"needs about \d+\.\d GiB .* is available; use"):
        inpaint(image, hole, strategy="full")
    assert seen.shapes == []


def test_nothing_fits_is_refused(stand_in_generator, hooks):
    image, hole = _scene(300, 300)
    inpaint = Inpainter(stand_in_generator, device="cpu", max_memory=1 << 20)
    with pytest.raises(MemoryBudgetError, match="smallest there is"):
        inpaint(image, hole)


def test_resize_strategy_bounds_the_region_by_the_limit(stand_in_generator, hooks):
    image, hole = _scene(300, 400)
    inpaint = Inpainter(stand_in_generator, device="cpu")
    seen = Canvases(inpaint, hooks)
    out = inpaint(image, hole, seed=0, strategy="resize", resize_limit=128, crop_margin=16)
    assert seen.shapes == [(1, 3, 128, 128)]  # 400 -> 128 on the longer side, padded
    assert np.array_equal(out[~hole], image[~hole]) and not np.array_equal(out[hole], image[hole])


def test_batches_shrink_to_what_memory_holds(stand_in_generator, hooks):
    (a, ha), (b, hb) = _scene(256, 256), _scene(256, 256)
    budget = _budget_between(256 * 256, 1, 256 * 256, 2, 2 * 256 * 256)
    inpaint = Inpainter(stand_in_generator, device="cpu", batch_size=4, max_memory=budget)
    seen = Canvases(inpaint, hooks)
    inpaint([a, b], [ha, hb], seed=0)
    assert seen.shapes == [(1, 3, 256, 256)] * 2


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
        MemoryError(),
    ],
)
def test_out_of_memory_during_the_forward_is_explained(stand_in_generator, hooks, error):
    inpaint = Inpainter(stand_in_generator, device="cpu")

    def fail(module, args):
        raise error

    hooks(inpaint.generator, fail)
    image, hole = _scene(64, 96)
    with pytest.raises(MemoryBudgetError, match="ran out of memory") as err:
        inpaint(image, hole)
    assert "\n" not in str(err.value)


def test_other_runtime_errors_are_not_disguised(stand_in_generator, hooks):
    inpaint = Inpainter(stand_in_generator, device="cpu")

    def fail(module, args):
        raise RuntimeError("a bug")

    hooks(inpaint.generator, fail)
    image, hole = _scene(64, 96)
    with pytest.raises(RuntimeError, match="a bug"):
        inpaint(image, hole)


@pytest.mark.parametrize(
    "choice,env,photo,expect",
    [
        (None, None, (512, 512), "keep"),
        (None, None, (1200, 1100), "return"),  # large: kept memory raises the peak
        (None, "1", (1200, 1100), "keep"),
        (None, "0", (512, 512), None),
        (True, None, (1200, 1100), "keep"),
        (False, None, (512, 512), None),  # never touched
    ],
)
def test_keep_freed_memory_choice(
    stand_in_generator, hooks, monkeypatch, choice, env, photo, expect
):
    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(cpu_memory, "return_freed_memory", lambda: calls.append("return") or True)
    monkeypatch.setattr(cpu_memory, "freed_memory_kept", lambda: True)
    if env is None:
        monkeypatch.delenv(cpu_memory.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(cpu_memory.ENV_VAR, env)
    inpaint = Inpainter(stand_in_generator, device="cpu", keep_freed_memory=choice)
    inpaint._set_malloc([np.ones(photo, bool)])
    assert calls == ([expect] if expect else [])
