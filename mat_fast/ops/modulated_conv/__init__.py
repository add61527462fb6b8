"""Modulated convolution: public entry point and dispatch."""

from __future__ import annotations

from typing import Optional

import torch

from ... import backend
from .reference import modulated_conv2d_reference

backend.register("modulated_conv2d", "reference", modulated_conv2d_reference)
backend.register_lazy(
    "modulated_conv2d", "cpu", "mat_fast.ops.modulated_conv.cpu:modulated_conv2d_cpu"
)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
    *,
    backend_name: Optional[str] = None,
) -> torch.Tensor:
    """Style-modulated conv: x (B, Cin, H, W), weight (1, Cout, Cin, k, k) (gain applied),
    styles (B, Cin); optional demodulation and FIR upsampling by ``up``."""
    if styles.shape != (x.shape[0], x.shape[1]):
        raise ValueError(
            f"styles must have shape {(x.shape[0], x.shape[1])}; got {tuple(styles.shape)}"
        )
    fn = backend.implementation("modulated_conv2d", x.device, backend_name)
    return fn(x, weight, styles, demodulate, up, padding, resample_filter)


__all__ = ["modulated_conv2d", "modulated_conv2d_reference"]
