"""Small stand-ins for the metric networks, built in the tests (no downloads)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image


class StandInDetector(torch.nn.Module):
    """Called like StyleGAN2-ADA's Inception: uint8 (N, 3, H, W) -> (N, 24) features."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(48, 24, generator=generator))

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(img.float() / 255, 4).flatten(1)
        return torch.tanh(x @ self.weight)


def save_standin_detector(path) -> str:
    torch.jit.script(StandInDetector()).save(str(path))
    return str(path)


def write_image_pairs(root, count: int = 6, size=(64, 48), seed: int = 0, noise: int = 40):
    """fake/ and real/ folders of random RGB pairs named img0.png, ...; returns both paths."""
    rng = np.random.default_rng(seed)
    fake_dir, real_dir = os.path.join(root, "fake"), os.path.join(root, "real")
    os.makedirs(fake_dir, exist_ok=True)
    os.makedirs(real_dir, exist_ok=True)
    width, height = size
    for i in range(count):
        real = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        shift = rng.integers(-noise, noise + 1, real.shape)
        fake = np.clip(real.astype(int) + shift, 0, 255).astype(np.uint8)
        Image.fromarray(real).save(os.path.join(real_dir, f"img{i}.png"))
        Image.fromarray(fake).save(os.path.join(fake_dir, f"img{i}.png"))
    return fake_dir, real_dir
