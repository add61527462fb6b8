"""FID, P-IDS and U-IDS from detector features, as upstream's ``cal_fid_pids_uids.py``.

Upstream stores each detector output as float32, accumulates the mean and covariance in
float64 as raw sums (``cov = X^T X / N - mean mean^T``: the population covariance, divided by
N, not N - 1), takes ``scipy.linalg.sqrtm`` of ``sigma_fake @ sigma_real`` and keeps the real
part. The inception discriminative scores fit ``sklearn.svm.LinearSVC(dual=False)`` (default
C, tolerance and iteration limit) on the real (label 1) and fake (label 0) features, real
rows first, and score it on the same rows: U-IDS is its misclassification rate, P-IDS the
share of pairs (fake i, real i: the same file name) whose fake gets the higher decision value.
"""

from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np

from .deps import require


def _features(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} features must be a non-empty (N, D) array; got {arr.shape}")
    arr = arr.astype(np.float32)  # what upstream keeps of each detector output
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} features contain NaN or Inf")
    return arr


def _check_pair(real, fake, paired: bool) -> Tuple[np.ndarray, np.ndarray]:
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake features differ in width: {real.shape[1]} vs {fake.shape[1]}"
        )
    if paired and real.shape[0] != fake.shape[0]:
        raise ValueError(
            f"P-IDS compares pairs: got {real.shape[0]} real but {fake.shape[0]} fake rows"
        )
    return real, fake


def mean_cov(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float64 mean and population covariance, by upstream's raw-sum formula."""
    x64 = np.asarray(features, dtype=np.float32).astype(np.float64)
    n = x64.shape[0]
    mean = x64.sum(axis=0) / n
    cov = (x64.T @ x64) / n - np.outer(mean, mean)
    return mean, cov


def fid_from_features(real, fake) -> float:
    """Frechet distance between Gaussians fitted to (N, D) real and (M, D) fake features."""
    real, fake = _check_pair(real, fake, paired=False)
    linalg = require("scipy.linalg", "FID")
    mu_real, sigma_real = mean_cov(real)
    mu_fake, sigma_fake = mean_cov(fake)
    mean_term = np.square(mu_fake - mu_real).sum()
    with warnings.catch_warnings():
        # a singular product (fewer images than features) is normal; upstream's disp=False
        # silences the same warning
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(sigma_fake @ sigma_real)
    return float(np.real(mean_term + np.trace(sigma_fake + sigma_real - 2 * root)))


def pids_uids_from_features(real, fake) -> Tuple[float, float]:
    """(P-IDS, U-IDS) from paired (N, D) real and fake features (row i: the same image)."""
    real, fake = _check_pair(real, fake, paired=True)
    svm_module = require("sklearn.svm", "P-IDS/U-IDS")
    svm = svm_module.LinearSVC(dual=False)
    inputs = np.concatenate([real, fake])
    targets = np.array([1] * real.shape[0] + [0] * fake.shape[0])
    with warnings.catch_warnings():
        # liblinear's iteration limit, upstream's setting; the warning would only alarm people
        warnings.filterwarnings("ignore", message=".*converge.*")
        svm.fit(inputs, targets)
    uids = 1.0 - svm.score(inputs, targets)
    pids = np.mean(svm.decision_function(fake) > svm.decision_function(real))
    return float(pids), float(uids)
