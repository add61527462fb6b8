"""FID, P-IDS/U-IDS and PSNR/SSIM/L1 against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mat_fast.metrics import fid_from_features, l1, pids_uids_from_features, psnr, ssim
from mat_fast.metrics.pixel import gaussian_window_1d

pytest.importorskip("scipy")


def _hadamard(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _diagonal_set(means, stds):
    """8 rows whose mean is ``means`` and whose population covariance is exactly
    diag(stds**2): columns are orthogonal +-1 Hadamard columns (zero mean, unit variance)."""
    columns = _hadamard(8)[:, 1 : 1 + len(means)]
    return columns * np.asarray(stds) + np.asarray(means)


def test_fid_matches_the_closed_form_for_diagonal_covariances():
    real = _diagonal_set([0.5, -1.0, 2.0], [1.0, 0.5, 2.0])
    fake = _diagonal_set([0.0, 0.0, 1.0], [2.0, 0.5, 0.25])
    # Frechet distance of N(m1, diag(s1^2)) and N(m2, diag(s2^2)): |m1-m2|^2 + |s1-s2|^2
    expected = (0.25 + 1.0 + 1.0) + (1.0 + 0.0 + 1.75**2)
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-5)


def _fid_by_eigh(real, fake) -> float:
    """FID with numpy only: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD root."""
    x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)

    def psd_sqrt(m):
        values, vectors = np.linalg.eigh(m)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root1 = psd_sqrt(s1)
    cross = np.trace(psd_sqrt(root1 @ s2 @ root1))
    mean = np.sum((x.mean(0) - y.mean(0)) ** 2)
    return float(mean + np.trace(s1) + np.trace(s2) - 2 * cross)


def test_fid_matches_an_eigendecomposition_on_random_features():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(300, 16)).astype(np.float32)
    fake = (rng.normal(size=(250, 16)) @ rng.normal(size=(16, 16)) * 0.3 + 0.2).astype(np.float32)
    assert fid_from_features(real, fake) == pytest.approx(_fid_by_eigh(real, fake), rel=1e-6)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-6)


def test_fid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="width"):
        fid_from_features(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fid_from_features(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((4, 2), np.nan), np.zeros((4, 2)))


def test_ids_of_identical_sets():
    # real and fake identical: the best separator is w = 0, b = 0, every score 0, every row
    # predicted as the negative (fake) class: half are wrong, and no fake beats its real.
    rng = np.random.default_rng(2)
    same = rng.normal(size=(10, 3))
    assert pids_uids_from_features(same, same) == (0.0, 0.5)


def test_ids_of_separable_sets():
    real = np.array([[3.0], [4.0], [5.0]])
    fake = np.array([[-3.0], [-4.0], [-5.0]])
    assert pids_uids_from_features(real, fake) == (0.0, 0.0)


def _linear_svm_primal(x, y, c=1.0):
    """liblinear's primal problem (what LinearSVC(dual=False) solves): squared hinge loss,
    L2 penalty on w and on the bias (an extra feature of value 1), solved here by L-BFGS."""
    from scipy.optimize import minimize

    xb = np.hstack([x, np.ones((len(x), 1))])

    def objective(w):
        margin = np.maximum(0.0, 1.0 - y * (xb @ w))
        grad = w - 2 * c * (xb * (y * margin)[:, None]).sum(0)
        return 0.5 * w @ w + c * np.sum(margin**2), grad

    w = minimize(objective, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B", tol=1e-12).x
    return lambda rows: np.hstack([rows, np.ones((len(rows), 1))]) @ w


def test_ids_match_an_independent_svm_fit():
    rng = np.random.default_rng(3)
    real = rng.normal(0.4, 1.0, size=(60, 4)).astype(np.float32)
    fake = rng.normal(-0.2, 1.0, size=(60, 4)).astype(np.float32)
    decide = _linear_svm_primal(
        np.vstack([real, fake]).astype(np.float64), np.array([1.0] * 60 + [-1.0] * 60)
    )
    real_scores, fake_scores = decide(real), decide(fake)
    # no row sits on the boundary, so the discrete counts do not depend on solver tolerance
    assert np.min(np.abs(np.concatenate([real_scores, fake_scores]))) > 1e-3
    wrong = np.sum(real_scores <= 0) + np.sum(fake_scores > 0)
    expected_uids = wrong / 120
    expected_pids = np.mean(fake_scores > real_scores)
    pids, uids = pids_uids_from_features(real, fake)
    assert 0 < expected_uids < 0.5 and 0 < expected_pids < 0.5  # a case with something to count
    assert uids == pytest.approx(expected_uids)
    assert pids == pytest.approx(expected_pids)


def test_pids_needs_pairs():
    with pytest.raises(ValueError, match="pairs"):
        pids_uids_from_features(np.zeros((3, 2)), np.zeros((4, 2)))


# --- pixel metrics ---------------------------------------------------------------------


def _images(seed=0, shape=(40, 52, 3)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_and_l1_by_their_formulas():
    a, b = _images()
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), rel=1e-12)
    assert l1(a, b) == pytest.approx(np.abs(a.astype(int) - b.astype(int)).sum() / a.size / 255)
    assert psnr(a, a) == math.inf and l1(a, a) == 0.0


def test_gaussian_window_is_opencvs():
    # cv2.getGaussianKernel(11, 1.5): exp(-(i-5)^2 / 4.5), normalised to sum 1
    g = gaussian_window_1d()
    raw = np.exp(-((np.arange(11) - 5.0) ** 2) / 4.5)
    np.testing.assert_allclose(g, raw / raw.sum(), rtol=1e-15)


def _ssim_by_2d_correlation(a, b):
    from scipy.signal import correlate2d

    window = np.outer(gaussian_window_1d(), gaussian_window_1d())
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    maps = []
    for ch in range(a.shape[2]):
        x, y = a[:, :, ch].astype(float), b[:, :, ch].astype(float)

        def f(img):
            return correlate2d(img, window, mode="valid")

        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(maps))


def test_ssim_matches_a_direct_2d_window():
    a, b = _images(1)
    assert ssim(a, b) == pytest.approx(_ssim_by_2d_correlation(a, b), rel=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = _images(2, (64, 48, 3))
    expected = metrics.structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=2,
    )
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(b, a, data_range=255))


def test_pixel_metrics_reject_mismatched_and_tiny_images():
    a, _ = _images()
    with pytest.raises(ValueError, match="shape"):
        psnr(a, a[:10])
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:8, :8], a[:8, :8])


def test_core_install_without_the_eval_extra():
    """Without scipy/scikit-learn the package imports and PSNR/L1 work; FID and the IDS say
    which extra to install, in one line."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('scipy', 'scipy.linalg', 'scipy.ndimage', 'sklearn', 'sklearn.svm'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np, mat_fast.metrics as m, mat_fast.cli\n"
        "a = np.zeros((16, 16, 3), np.uint8)\n"
        "assert m.l1(a, a) == 0.0\n"
        "for call in (lambda: m.fid_from_features(a[0], a[0]),\n"
        "             lambda: m.pids_uids_from_features(a[0], a[0]), lambda: m.ssim(a, a)):\n"
        "    try:\n"
        "        call()\n"
        "    except m.MissingExtraError as err:\n"
        "        print(err)\n"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    ).stdout.splitlines()
    assert len(out) == 3
    for line, needs in zip(out, ("scipy", "scikit-learn", "scipy")):
        assert f"needs {needs}" in line and 'pip install "mat_fast[eval]"' in line
