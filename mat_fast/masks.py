"""Free-form training/evaluation masks in the style of the MAT paper (CVPR 2022, supp. mat.).

A mask is the union of random rectangles and random brush strokes.  Two presets exist:

* ``'large'``: up to 5 half-size rectangles, 3 full-size rectangles and 9 brush strokes;
* ``'small'``: up to 3 half-size rectangles, 2 full-size rectangles and 4 brush strokes.

Each count is drawn uniformly from ``[0, int(max * coef))`` with
``coef = min(hole_range[0] + hole_range[1], 1)``, and whole masks are redrawn until the hole
ratio lies strictly inside ``hole_range``.

Convention: arrays returned here are float32 with **1 = known pixel, 0 = hole**, the same as
``Generator``'s ``mask`` input.  ``to_fill_image`` converts to the app/CLI convention
(white = region to fill).

Non-square sizes: rectangle extents are drawn per axis (height from ``H``, width from ``W``);
the stroke step length uses the diagonal ``sqrt(H**2 + W**2)``.  For ``H == W`` both reduce to
the paper's single-size numbers.  Stroke widths are absolute pixels (12..47 by default), as in
the paper, so they are relatively thicker on small images.
"""

from __future__ import annotations

import math
import operator
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SETTINGS", "random_brush", "random_mask", "batch_random_masks", "to_fill_image"]

RNGLike = Union[None, int, np.random.Generator]

# setting -> (max half-size rectangles, max full-size rectangles, max brush strokes)
SETTINGS = {"large": (5, 3, 9), "small": (3, 2, 4)}

DEFAULT_MAX_TRIES = 1000


def _size(height, width) -> Tuple[int, int]:
    if width is None:
        width = height
    out = []
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool):  # bool is an int subclass; True as a size is surely a bug
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
        try:
            v = operator.index(v)
        except TypeError:
            raise ValueError(f"{name} must be a positive integer, got {v!r}") from None
        if v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
        out.append(v)
    return out[0], out[1]


def _rng(rng: RNGLike) -> np.random.Generator:
    # A private Generator: numpy's global RNG state is never read or advanced.
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _hole_range(hole_range: Sequence[float]) -> Tuple[float, float]:
    if isinstance(hole_range, (str, bytes)):
        raise ValueError(f"hole_range must be a pair (lo, hi) of numbers, got {hole_range!r}")
    try:
        lo, hi = (float(x) for x in hole_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"hole_range must be a pair (lo, hi) of numbers, got {hole_range!r}"
        ) from None
    if not (0.0 <= lo < hi <= 1.0):  # also rejects NaN
        raise ValueError(f"hole_range must satisfy 0 <= lo < hi <= 1, got ({lo}, {hi})")
    return lo, hi


def _count(rng: np.random.Generator, max_count: int) -> int:
    # Uniform in [0, max_count); a zero budget (tiny coef) means none rather than an error.
    return int(rng.integers(max_count)) if max_count > 0 else 0


def _draw_strokes(
    canvas: Image.Image,
    rng: np.random.Generator,
    n: int,
    *,
    min_vertices: int,
    max_vertices: int,
    mean_angle: float,
    angle_range: float,
    min_width: int,
    max_width: int,
) -> None:
    """Draw ``n`` zig-zag strokes with value 1 onto an 'L' canvas (in place)."""
    W, H = canvas.size
    mean_step = math.hypot(H, W) / 8
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        n_vert = int(rng.integers(min_vertices, max_vertices))
        a_lo = mean_angle - rng.uniform(0, angle_range)
        a_hi = mean_angle + rng.uniform(0, angle_range)
        # Alternate the turning direction so strokes zig-zag instead of curling into circles.
        angles = [rng.uniform(a_lo, a_hi) for _ in range(n_vert)]
        angles = [2 * math.pi - a if i % 2 == 0 else a for i, a in enumerate(angles)]
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        pts = [(x, y)]
        for a in angles:
            r = float(np.clip(rng.normal(mean_step, mean_step / 2), 0, 2 * mean_step))
            x = int(np.clip(x + r * math.cos(a), 0, W - 1))
            y = int(np.clip(y + r * math.sin(a), 0, H - 1))
            pts.append((x, y))
        w = int(rng.uniform(min_width, max_width))
        draw.line(pts, fill=1, width=w)
        # PIL's wide polylines have square, gappy joints; discs at vertices round them off.
        h = w // 2
        for px, py in pts:
            draw.ellipse((px - h, py - h, px + h, py + h), fill=1)


def random_brush(
    height: int,
    width: Optional[int] = None,
    *,
    max_strokes: int = 9,
    num_strokes: Optional[int] = None,
    rng: RNGLike = None,
    min_vertices: int = 4,
    max_vertices: int = 18,
    mean_angle: float = 2 * math.pi / 5,
    angle_range: float = 2 * math.pi / 15,
    min_width: int = 12,
    max_width: int = 48,
) -> np.ndarray:
    """Random brush-stroke mask, float32 ``(H, W)``, 1 = known, 0 = stroke (hole).

    The number of strokes is ``num_strokes`` if given, else uniform in ``[0, max_strokes)``
    (so it may be zero).  Each stroke is a polyline of ``[min_vertices, max_vertices)`` steps
    whose turning angles lie around ``mean_angle`` (+- up to ``angle_range``) with alternating
    sign; step lengths ~ Normal(diag/8, diag/16) clipped to ``[0, diag/4]``; line width uniform
    in ``[min_width, max_width)`` pixels, with round joints.  The result is randomly flipped
    along each axis.  No hole-ratio constraint is applied.
    """
    H, W = _size(height, width)
    if not 1 <= min_vertices < max_vertices:
        raise ValueError(
            f"need 1 <= min_vertices < max_vertices, got {min_vertices}, {max_vertices}"
        )
    if not 1 <= min_width < max_width:
        raise ValueError(f"need 1 <= min_width < max_width, got {min_width}, {max_width}")
    if num_strokes is not None and num_strokes < 0:
        raise ValueError(f"num_strokes must be >= 0, got {num_strokes}")
    if max_strokes < 0:
        raise ValueError(f"max_strokes must be >= 0, got {max_strokes}")
    g = _rng(rng)
    n = num_strokes if num_strokes is not None else _count(g, max_strokes)
    canvas = Image.new("L", (W, H), 0)
    _draw_strokes(
        canvas,
        g,
        n,
        min_vertices=min_vertices,
        max_vertices=max_vertices,
        mean_angle=mean_angle,
        angle_range=angle_range,
        min_width=min_width,
        max_width=max_width,
    )
    stroke = np.asarray(canvas, dtype=np.uint8)
    if g.random() > 0.5:
        stroke = stroke[::-1, :]
    if g.random() > 0.5:
        stroke = stroke[:, ::-1]
    return (1 - stroke).astype(np.float32)


def _fill_rects(known: np.ndarray, rng: np.random.Generator, n: int, max_h: int, max_w: int):
    """Zero ``n`` rectangles of side < max size; they may hang up to half their size outside."""
    H, W = known.shape
    for _ in range(n):
        w = int(rng.integers(max_w)) if max_w > 0 else 0
        h = int(rng.integers(max_h)) if max_h > 0 else 0
        x = int(rng.integers(-(w // 2), W - w + w // 2))
        y = int(rng.integers(-(h // 2), H - h + h // 2))
        known[max(y, 0) : min(y + h, H), max(x, 0) : min(x + w, W)] = 0


def random_mask(
    height: int,
    width: Optional[int] = None,
    *,
    setting: str = "large",
    hole_range: Sequence[float] = (0.0, 1.0),
    rng: RNGLike = None,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> np.ndarray:
    """One MAT-style free-form mask, float32 ``(H, W)`` with 1 = known and 0 = hole.

    Args:
        height, width: mask size; ``width`` defaults to ``height``.
        setting: ``'large'`` or ``'small'`` (see ``SETTINGS``).
        hole_range: ``(lo, hi)`` with ``0 <= lo < hi <= 1``; masks are redrawn until the
            hole ratio is strictly inside it (so the default rejects hole-free masks).
        rng: ``numpy.random.Generator``, int seed or None.  Same seed -> same mask.
        max_tries: give up with ``ValueError`` after this many rejected draws.
    """
    H, W = _size(height, width)
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; expected one of {sorted(SETTINGS)}")
    lo, hi = _hole_range(hole_range)
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    g = _rng(rng)
    n_half, n_full, n_brush = SETTINGS[setting]
    # Upstream's count scaling: a low target range shrinks the number of shapes drawn.
    coef = min(lo + hi, 1.0)
    for _ in range(max_tries):
        known = np.ones((H, W), dtype=np.float32)
        _fill_rects(known, g, _count(g, int(n_half * coef)), H // 2, W // 2)
        _fill_rects(known, g, _count(g, int(n_full * coef)), H, W)
        known *= random_brush(H, W, max_strokes=int(n_brush * coef), rng=g)
        ratio = 1.0 - float(known.mean())
        if lo < ratio < hi:
            return known
    raise ValueError(
        f"could not draw a {H}x{W} {setting!r} mask with hole ratio strictly inside "
        f"({lo}, {hi}) in {max_tries} tries; widen hole_range or change the setting/size"
    )


def batch_random_masks(batch: int, height: int, width: Optional[int] = None, **kw) -> np.ndarray:
    """``batch`` independent masks stacked as float32 ``(B, 1, H, W)`` (1 = known, 0 = hole).

    Keyword arguments go to ``random_mask``; an int/None ``rng`` seeds one Generator shared
    by the whole batch, so a seed reproduces the whole batch while its masks differ.
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch <= 0:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    H, W = _size(height, width)
    kw["rng"] = _rng(kw.get("rng"))
    out = np.empty((int(batch), 1, H, W), dtype=np.float32)
    for i in range(int(batch)):
        out[i, 0] = random_mask(H, W, **kw)
    return out


def to_fill_image(mask: np.ndarray) -> Image.Image:
    """Convert a 1 = known / 0 = hole mask to an 8-bit 'L' image with 255 = region to fill.

    Accepts ``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)`` arrays (numpy or anything
    ``np.asarray`` understands); values below 0.5 count as hole.
    """
    m = np.asarray(mask, dtype=np.float32)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"expected a single (H, W) mask, got shape {np.asarray(mask).shape}")
    return Image.fromarray(np.where(m < 0.5, 255, 0).astype(np.uint8))
