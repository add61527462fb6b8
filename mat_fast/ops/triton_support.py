"""What every Triton kernel package of mat_fast shares: the availability probe that
:mod:`mat_fast.backend` calls, and small launch helpers.

Importing this module never imports Triton (the probe does, once asked), so
``import mat_fast`` stays cheap on machines without it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

__all__ = [
    "MIN_TRITON",
    "check_device",
    "interpreting",
    "next_power_of_2",
    "probe",
    "triton_version",
]

#: Oldest Triton the kernels are written for (``tl.dot(input_precision=...)`` came in 3.0).
MIN_TRITON = (3, 0)


def triton_version() -> Optional[tuple]:
    """(major, minor) of the installed Triton, or None when it is missing."""
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    parts = []
    for piece in triton.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def interpreting() -> bool:
    """True when Triton runs kernels in its (CPU, slow) interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def probe(name: str, device_type: str) -> Optional[str]:
    """None when mat_fast's Triton kernels can run on ``device_type``, else the reason.

    :mod:`mat_fast.backend` has already checked that Triton is importable and that the
    device is CUDA (or CPU under ``TRITON_INTERPRET=1``).
    """
    version = triton_version()
    if version is None:
        return "Triton is not installed"
    if version < MIN_TRITON:
        want = ".".join(map(str, MIN_TRITON))
        return f"Triton {'.'.join(map(str, version))} is too old; mat_fast's kernels need >= {want}"
    if not hasattr(torch.library, "custom_op"):
        return f"torch {torch.__version__} lacks torch.library.custom_op; the Triton backend needs torch >= 2.4"
    if device_type not in ("cuda", "cpu"):
        return f"Triton kernels do not run on {device_type}"
    return None


def check_device(op: str, *tensors: Optional[torch.Tensor], interpreted: bool) -> torch.device:
    """Raise a clear ``ValueError`` unless all tensors share one device the kernels run on.

    ``interpreted`` says whether the kernels were built for Triton's interpreter (decided
    when the kernel module was imported, from ``TRITON_INTERPRET``).
    """
    present = [t for t in tensors if t is not None]
    device = present[0].device
    for t in present[1:]:
        if t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device; got {device} and {t.device}"
            )
    if device.type == "cuda":
        if interpreted:
            raise ValueError(
                f"{op}: the Triton kernels were imported under TRITON_INTERPRET=1 and only run on "
                "CPU tensors in this process; unset it before importing mat_fast's kernels"
            )
        return device
    if device.type == "cpu":
        if not interpreted:
            raise ValueError(
                f"{op}: Triton kernels need CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, "
                "set before the kernels are first used); use the 'reference' or 'cpu' backend"
            )
        return device
    raise ValueError(f"{op}: Triton kernels do not run on {device.type} tensors")


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
