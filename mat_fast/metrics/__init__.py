"""The MAT paper's evaluation metrics, computed as upstream's ``evaluatoin/`` scripts do.

- ``fid_from_features(real, fake)`` and ``pids_uids_from_features(real, fake)`` take (N, D)
  feature arrays (the StyleGAN2-ADA Inception detector's 2048-d pool features in the paper);
- ``psnr``, ``ssim`` and ``l1`` compare one fill with its ground truth (uint8 (H, W, 3));
- ``LPIPS`` is the lpips package's AlexNet metric, ``load_inception_detector`` the detector.

scipy and scikit-learn come with the ``eval`` extra (``pip install "mat_fast[eval]"``); a
function that needs a missing one raises ``MissingExtraError`` saying so.
"""

from .deps import MissingExtraError
from .detector import load_inception_detector
from .features import fid_from_features, pids_uids_from_features
from .lpips import LPIPS, load_lpips
from .pixel import l1, psnr, ssim
from .weights import WeightsError

__all__ = [
    "MissingExtraError",
    "fid_from_features",
    "pids_uids_from_features",
    "psnr",
    "ssim",
    "l1",
    "LPIPS",
    "load_lpips",
    "load_inception_detector",
    "WeightsError",
]
