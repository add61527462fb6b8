"""Which device a call runs on: one place turns 'auto', 'cpu', 'cuda', 'cuda:N' (or a
torch.device) into a torch.device, with an error that says what to use instead."""

from __future__ import annotations

from typing import Any

import torch

from .errors import DeviceError

__all__ = ["DeviceError", "resolve_device"]


def resolve_device(device: Any = "auto") -> torch.device:
    """``'auto'`` (or None): the first CUDA GPU if one is visible, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N' (N = GPU index)"
        ) from None
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(
            f"device {device!r} is not supported: mat_fast runs on the CPU ('cpu') and on "
            f"NVIDIA GPUs ('cuda'); use 'cpu' or 'auto'"
        )
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {device!r} was requested but no CUDA GPU is visible (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use 'cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(
                f"device {device!r} was requested but only {count} CUDA GPU(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    return resolved
