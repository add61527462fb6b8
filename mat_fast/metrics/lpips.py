"""LPIPS (Zhang et al., CVPR 2018) with the lpips package's AlexNet, version 0.1.

The same network as ``lpips.LPIPS(net='alex')``, which upstream's ``cal_lpips.py`` calls on
images scaled to [-1, 1]: the inputs are shifted and scaled per channel, torchvision's
AlexNet ``features`` give five ReLU outputs, each is divided by its channel norm (+1e-10),
the squared difference goes through that layer's 1x1 linear weights (no bias), is averaged
over the positions, and the five are summed. Defined here because the lpips package imports
torchvision, whose wheels need a CUDA torch on Linux; the two weight files are the same.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .weights import ALEXNET, LPIPS_ALEX_LINEAR, WeightsError, locate

# lpips' ScalingLayer constants (ImageNet statistics mapped to [-1, 1] inputs)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)
MIN_SIDE = 31  # smaller inputs leave nothing after AlexNet's second max-pool


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (same indices, so the same state-dict keys),
    returning the outputs of its five ReLUs."""

    TAPS = (1, 4, 7, 9, 11)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """``forward(a, b)``: (N, 3, H, W) images in [-1, 1] -> (N,) distances."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.trunk = AlexNetFeatures()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.requires_grad_(False)
        self.eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (N, 3, H, W) batches; got {a.shape} and {b.shape}")
        if min(a.shape[2:]) < MIN_SIDE:
            raise ValueError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels; got "
                f"{a.shape[3]}x{a.shape[2]}"
            )
        taps_a = self.trunk((a - self.shift) / self.scale)
        taps_b = self.trunk((b - self.shift) / self.scale)
        total = 0
        for lin, x, y in zip(self.lins, taps_a, taps_b):
            x = x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + 1e-10)
            y = y / (torch.sqrt(torch.sum(y**2, dim=1, keepdim=True)) + 1e-10)
            total = total + lin((x - y) ** 2).mean(dim=(2, 3))
        return total.flatten()

    def load_weights(self, alexnet: dict, linear: dict, *, sources=("AlexNet", "LPIPS")):
        """Fill in torchvision's AlexNet state dict and lpips' ``lin{k}.model.1.weight``s."""
        trunk = {k: v for k, v in alexnet.items() if k.startswith("features.")}
        lins = {}
        for k in range(len(CHANNELS)):
            key = f"lin{k}.model.1.weight"
            if key in linear:
                lins[f"{k}.weight"] = linear[key]
        for module, state, source in (
            (self.trunk, trunk, sources[0]),
            (self.lins, lins, sources[1]),
        ):
            expected = module.state_dict()
            missing = sorted(set(expected) - set(state))
            wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
            if missing or wrong:
                raise WeightsError(
                    f"{source} does not hold the expected weights (missing: "
                    f"{', '.join(missing[:5]) or 'none'}; wrong shape: {', '.join(wrong[:5]) or 'none'})"
                )
            module.load_state_dict({k: state[k].float() for k in expected})
        return self


def _read(path) -> dict:
    from ..checkpoints import CheckpointError, read_state_dict

    try:
        return read_state_dict(path)
    except CheckpointError as err:
        raise WeightsError(f"cannot load {path}: {err}") from None


def load_lpips(
    alexnet: Optional[str] = None,
    linear: Optional[str] = None,
    *,
    device="cpu",
    download: bool = True,
) -> LPIPS:
    """The LPIPS AlexNet metric with verified weights (paths, or the cache/download)."""
    alexnet_path = locate(ALEXNET, alexnet, download=download)
    linear_path = locate(LPIPS_ALEX_LINEAR, linear, download=download)
    model = LPIPS().load_weights(
        _read(alexnet_path), _read(linear_path), sources=(str(alexnet_path), str(linear_path))
    )
    return model.to(device)
