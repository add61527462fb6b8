"""FIR resampling and resampled convolution: public entry points and dispatch."""

from __future__ import annotations

from typing import Optional

import torch

from ... import backend
from .reference import (
    conv2d_resample_reference,
    setup_filter,
    upfirdn2d_reference,
    upsample2d_reference,
)

backend.register("upfirdn2d", "reference", upfirdn2d_reference)
backend.register("upsample2d", "reference", upsample2d_reference)
backend.register("conv2d_resample", "reference", conv2d_resample_reference)
# The 'cpu' backend's channels_last/oneDNN arrangement (see cpu.py); upsample2d, used on
# 3-channel images only, runs the reference everywhere.
backend.register_lazy("upfirdn2d", "cpu", "mat_fast.ops.resample.cpu:upfirdn2d_cpu")
backend.register_lazy("conv2d_resample", "cpu", "mat_fast.ops.resample.cpu:conv2d_resample_cpu")


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0, *, backend_name=None):
    """Upsample (zero insertion), pad, FIR-filter and downsample ``x`` (B, C, H, W)."""
    fn = backend.implementation("upfirdn2d", x.device, backend_name)
    return fn(x, f, up, down, padding, flip_filter, gain)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2, *, backend_name=None) -> torch.Tensor:
    """FIR upsampling by ``up``; output is exactly ``up`` times the input size."""
    fn = backend.implementation("upsample2d", x.device, backend_name)
    return fn(x, f, up)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    groups: int = 1,
    *,
    backend_name: Optional[str] = None,
) -> torch.Tensor:
    """Correlation of ``x`` with ``w`` fused with FIR up/down-sampling by ``f``."""
    fn = backend.implementation("conv2d_resample", x.device, backend_name)
    return fn(x, w, f, up, down, padding, groups)


__all__ = [
    "conv2d_resample",
    "conv2d_resample_reference",
    "setup_filter",
    "upfirdn2d",
    "upfirdn2d_reference",
    "upsample2d",
    "upsample2d_reference",
]
