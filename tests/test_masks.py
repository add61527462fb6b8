"""Tests for mat_fast.masks (MAT-style free-form mask generation)."""

import numpy as np
import pytest
from PIL import Image

from mat_fast.masks import SETTINGS, batch_random_masks, random_brush, random_mask, to_fill_image


def _hole_ratio(m):
    return 1.0 - float(np.mean(m))


def test_shape_dtype_and_binary_values():
    m = random_mask(128, rng=0)
    assert m.shape == (128, 128)
    assert m.dtype == np.float32
    assert set(np.unique(m).tolist()) <= {0.0, 1.0}
    # default hole_range (0, 1) is strict on both ends: some hole, some known
    assert 0.0 < _hole_ratio(m) < 1.0


def test_settings_match_paper_numbers():
    assert SETTINGS["large"] == (5, 3, 9)
    assert SETTINGS["small"] == (3, 2, 4)


def test_same_seed_same_mask_and_seeds_differ():
    a = random_mask(96, rng=123)
    b = random_mask(96, rng=123)
    np.testing.assert_array_equal(a, b)
    others = [random_mask(96, rng=s) for s in range(1, 6)]
    assert all(not np.array_equal(a, o) for o in others)
    # a Generator is accepted and advanced: consecutive draws differ
    g = np.random.default_rng(7)
    assert not np.array_equal(random_mask(96, rng=g), random_mask(96, rng=g))
    # Generator with the same seed reproduces the int-seed result
    np.testing.assert_array_equal(random_mask(96, rng=np.random.default_rng(123)), a)


@pytest.mark.parametrize("hole_range", [(0.0, 1.0), (0.1, 0.4), (0.3, 0.7), (0.5, 0.9)])
def test_hole_ratio_inside_range(hole_range):
    lo, hi = hole_range
    g = np.random.default_rng(2024)
    ratios = [_hole_ratio(random_mask(256, hole_range=hole_range, rng=g)) for _ in range(50)]
    assert all(lo < r < hi for r in ratios), (min(ratios), max(ratios))


def test_small_setting_has_smaller_holes_than_large():
    n = 150
    large = np.mean([_hole_ratio(random_mask(128, setting="large", rng=s)) for s in range(n)])
    small = np.mean(
        [_hole_ratio(random_mask(128, setting="small", rng=10_000 + s)) for s in range(n)]
    )
    # observed means at 128px are ~0.6 vs ~0.35; demand a clear margin, not just an ordering
    assert small + 0.08 < large, (small, large)


@pytest.mark.parametrize("hw", [(64, 200), (200, 64), (3, 50)])
def test_rectangular_sizes(hw):
    h, w = hw
    m = random_mask(h, w, rng=5)
    assert m.shape == (h, w)
    assert 0.0 < _hole_ratio(m) < 1.0


def test_one_pixel_mask_cannot_meet_strict_range():
    # a 1x1 mask is either 0% or 100% hole, both outside the strict default range (0, 1)
    with pytest.raises(ValueError, match="could not draw"):
        random_mask(1, rng=5, max_tries=20)


def test_rectangular_masks_cover_the_whole_canvas():
    # Holes should be able to reach every part of a wide canvas (per-axis placement),
    # not just the leading square.
    acc = np.zeros((64, 256))
    for s in range(60):
        acc += 1.0 - random_mask(64, 256, rng=s)
    quarters = np.split(acc, 4, axis=1)
    assert all(q.sum() > 0 for q in quarters)
    assert acc[:, 200:].sum() > 0.1 * acc[:, :64].sum()


def test_width_defaults_to_height():
    np.testing.assert_array_equal(random_mask(80, rng=3), random_mask(80, 80, rng=3))


def test_batch_shape_reproducible_and_varied():
    b = batch_random_masks(4, 64, 96, setting="small", hole_range=(0.1, 0.6), rng=9)
    assert b.shape == (4, 1, 64, 96)
    assert b.dtype == np.float32
    np.testing.assert_array_equal(
        b, batch_random_masks(4, 64, 96, setting="small", hole_range=(0.1, 0.6), rng=9)
    )
    assert not np.array_equal(b[0], b[1])
    for m in b[:, 0]:
        assert 0.1 < _hole_ratio(m) < 0.6
    assert batch_random_masks(2, 32).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(height=0), "height must be a positive integer"),
        (dict(height=-5), "height must be a positive integer"),
        (dict(height=32, width=0), "width must be a positive integer"),
        (dict(height=32.5), "height must be a positive integer"),
        (dict(height=True), "height must be a positive integer"),
        (dict(height=32, setting="huge"), "unknown setting 'huge'"),
        (dict(height=32, hole_range=(0.5, 0.5)), r"0 <= lo < hi <= 1"),
        (dict(height=32, hole_range=(0.6, 0.2)), r"0 <= lo < hi <= 1"),
        (dict(height=32, hole_range=(-0.1, 0.5)), r"0 <= lo < hi <= 1"),
        (dict(height=32, hole_range=(0.1, 1.5)), r"0 <= lo < hi <= 1"),
        (dict(height=32, hole_range=(0.1, float("nan"))), r"0 <= lo < hi <= 1"),
        (dict(height=32, hole_range=(0.1,)), "pair"),
        (dict(height=32, hole_range="ab"), "pair"),
        (dict(height=32, max_tries=0), "max_tries"),
    ],
)
def test_bad_arguments_raise(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        random_mask(**kwargs)


def test_bad_batch_raises():
    for bad in (0, -1, 2.0, None):
        with pytest.raises(ValueError, match="batch must be a positive integer"):
            batch_random_masks(bad, 32)


def test_unreachable_hole_range_gives_clear_error():
    # 'small' masks on a large canvas essentially never exceed 99.9% hole
    with pytest.raises(ValueError, match=r"could not draw .* in 25 tries"):
        random_mask(128, setting="small", hole_range=(0.999, 1.0), rng=0, max_tries=25)


def test_tiny_coef_does_not_crash():
    # coef = 0.05 makes every shape budget int(k * 0.05) == 0: nothing can be drawn, so the
    # strict range can't be met -> clear error (upstream crashes inside randint(0) here).
    with pytest.raises(ValueError, match="could not draw"):
        random_mask(64, hole_range=(0.0, 0.05), rng=0, max_tries=10)


def test_global_numpy_rng_untouched():
    np.random.seed(1234)
    before = np.random.get_state()
    random_mask(64, rng=1)
    random_mask(64)  # rng=None must not fall back to the global RNG either
    batch_random_masks(2, 32, rng=2)
    random_brush(64, rng=3)
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


def test_single_brush_stroke_has_holes():
    for seed in range(10):
        m = random_brush(128, num_strokes=1, rng=seed)
        assert m.shape == (128, 128) and m.dtype == np.float32
        holes = int((m == 0).sum())
        # a stroke is at least 12 px wide with >= 4 segments: well over one disc of area
        assert holes >= np.pi * 6**2, holes
        assert holes < m.size
    # zero strokes -> nothing drawn
    assert random_brush(64, num_strokes=0, rng=0).min() == 1.0


def test_brush_width_parameters_matter():
    thin = np.mean(
        [
            _hole_ratio(random_brush(128, num_strokes=1, min_width=2, max_width=4, rng=s))
            for s in range(20)
        ]
    )
    thick = np.mean(
        [
            _hole_ratio(random_brush(128, num_strokes=1, min_width=30, max_width=48, rng=s))
            for s in range(20)
        ]
    )
    assert thick > 3 * thin


def test_to_fill_image_inverts_convention():
    m = random_mask(48, 64, rng=11)
    img = to_fill_image(m)
    assert isinstance(img, Image.Image)
    assert img.mode == "L" and img.size == (64, 48)
    arr = np.asarray(img)
    assert set(np.unique(arr).tolist()) <= {0, 255}
    np.testing.assert_array_equal(arr == 255, m == 0)
    # batch-style leading singleton dims are accepted
    np.testing.assert_array_equal(np.asarray(to_fill_image(m[None, None])), arr)
    with pytest.raises(ValueError, match="single"):
        to_fill_image(np.zeros((2, 8, 8)))
