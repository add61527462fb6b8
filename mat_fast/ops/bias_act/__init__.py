"""Fused bias + activation: public entry point and dispatch."""

from __future__ import annotations

from typing import Optional

import torch

from ... import backend
from .reference import ACTIVATIONS, bias_act_reference, default_gain

backend.register("bias_act", "reference", bias_act_reference)


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
    *,
    backend_name: Optional[str] = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain)``. ``b`` (1-D, length ``x.shape[dim]``) may be None;
    ``gain`` defaults to the activation's (sqrt(2) for lrelu); ``clamp`` None = off."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias of shape {tuple(b.shape)} does not fit dim {dim} of {tuple(x.shape)}")
    fn = backend.implementation("bias_act", x.device, backend_name)
    return fn(x, b, dim, act, alpha, gain, clamp)


__all__ = ["bias_act", "bias_act_reference", "default_gain", "ACTIVATIONS"]
