"""The FID / IDS feature detector: StyleGAN2-ADA's TorchScript Inception (2015-12-05).

Called like upstream: ``detector(images, return_features=True)`` on uint8 (N, 3, H, W)
images of any size (the network resizes them itself) returns (N, 2048) float32 pool features.
Loading a TorchScript file runs the code it holds: use files from the official URL, a copy
with the same digest, or networks of your own.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .weights import INCEPTION, WeightsError, locate


def load_inception_detector(path: Optional[str] = None, *, device="cpu", download: bool = True):
    """The verified detector from ``path`` (``--detector``) or the cache / a download."""
    file = locate(INCEPTION, path, download=download)
    try:
        with warnings.catch_warnings():
            # the detector is published as TorchScript; torch's deprecation notice is not news
            warnings.simplefilter("ignore", DeprecationWarning)
            detector = torch.jit.load(str(file), map_location="cpu")
    except Exception as err:  # noqa: BLE001 - a damaged archive raises many kinds
        detail = " ".join(str(err).split())[:200]
        raise WeightsError(
            f"{file} is not a TorchScript feature detector ({type(err).__name__}: {detail}); "
            f"pass the StyleGAN2-ADA inception-2015-12-05.pt with {INCEPTION.flag}"
        ) from None
    return detector.eval().to(device)


@torch.no_grad()
def detector_features(detector, images: torch.Tensor) -> torch.Tensor:
    """(N, D) float32 features of uint8 (N, 3, H, W) ``images``, checked for shape."""
    out = detector(images, return_features=True)
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != images.shape[0]:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise WeightsError(
            f"the feature detector returned {shape} for {images.shape[0]} images; expected "
            f"(N, D) features (is {INCEPTION.flag} the StyleGAN2-ADA Inception network?)"
        )
    return out.float()
