"""Per-image PSNR, SSIM and L1, as upstream's ``evaluatoin/cal_psnr_ssim_l1.py`` defines them.

Images are (H, W, 3) arrays of 8-bit values (what upstream reads; grayscale is repeated to
three channels by the reader). All three work in float64 on the 0..255 values:

- PSNR: ``20 log10(255 / sqrt(mse))`` over all pixels and channels; ``inf`` for equal images.
- SSIM (scipy filters it): Wang et al.'s SSIM with an 11x11 Gaussian window (sigma 1.5, normalised to sum 1),
  ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``, each channel filtered on its own and only
  where the window lies inside the image (upstream filters the whole image, then crops 5
  pixels from each side: the border mode never enters), the map averaged over the remaining
  positions and channels.
- L1: mean absolute difference of the values divided by 255.
"""

from __future__ import annotations

import math

import numpy as np

from .deps import require

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _pair(a, b) -> tuple:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(fake, real) -> float:
    """Peak signal-to-noise ratio in dB for 0..255 images; ``inf`` when they are equal."""
    a, b = _pair(fake, real)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return 20 * math.log10(255.0 / math.sqrt(mse))


def l1(fake, real) -> float:
    """Mean absolute difference in [0, 1] units."""
    a, b = _pair(fake, real)
    return float(np.mean(np.abs(a / 255.0 - b / 255.0)))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-d Gaussian whose outer product with itself is SSIM's window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _valid_filter(planes: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of each plane of ``planes`` (..., H, W) with g g^T, kept only
    where the window lies inside the image; returns (..., W', H') (transposed)."""
    ndimage = require("scipy.ndimage", "SSIM")
    k = g.size // 2
    # scipy filters the contiguous last axis several times faster than any other
    rows = ndimage.correlate1d(planes, g, axis=-1, mode="constant")[..., k:-k]
    rows = np.ascontiguousarray(np.swapaxes(rows, -1, -2))
    return ndimage.correlate1d(rows, g, axis=-1, mode="constant")[..., k:-k]


def ssim(fake, real) -> float:
    """Structural similarity (see the module docstring); needs both sides >= 11 pixels."""
    a, b = _pair(fake, real)
    if a.ndim == 2:
        a, b = a[:, :, None], b[:, :, None]
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    planes = np.stack([a, b, a * a, b * b, a * b]).transpose(0, 3, 1, 2)  # (5, C, H, W)
    mu_a, mu_b, sq_a, sq_b, ab = _valid_filter(np.ascontiguousarray(planes), gaussian_window_1d())
    var_a, var_b, cov = sq_a - mu_a**2, sq_b - mu_b**2, ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())
