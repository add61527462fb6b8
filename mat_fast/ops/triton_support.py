"""What every Triton kernel package of mat_fast shares, in one place: the availability
probe that :mod:`mat_fast.backend` calls, the interpreter check, output allocation (NaN
poisoning for tests) and the launch's device context.

Importing this module never imports Triton (the probe does, once asked), so
``import mat_fast`` stays cheap on machines without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Optional, Sequence

import torch

from .. import settings

__all__ = [
    "MIN_TRITON",
    "alloc",
    "alloc_like",
    "check_device",
    "device_context",
    "kernels_interpreted",
    "next_power_of_2",
    "probe",
    "triton_version",
]

#: Oldest Triton the kernels are written for (``tl.dot(input_precision=...)`` came in 3.0).
MIN_TRITON = (3, 0)


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[tuple]:
    """(major, minor) of the installed Triton, or None when it is missing (asked once)."""
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    parts = []
    for piece in triton.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def kernels_interpreted(kernel) -> bool:
    """Whether the ``@triton.jit`` function ``kernel`` runs in Triton's (CPU, slow)
    interpreter: Triton fixed that from ``TRITON_INTERPRET`` when its module was imported."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def probe(device_type: str) -> Optional[str]:
    """None when mat_fast's Triton kernels can run on ``device_type``, else the reason; the
    one place that decides it (:mod:`mat_fast.backend` asks here)."""
    try:
        version = triton_version()
    except Exception as err:  # noqa: BLE001 - a broken Triton install must not break dispatch
        return f"Triton failed to import: {type(err).__name__}: {err}"
    if version is None:
        return "Triton is not installed (pip install triton; it comes with CUDA builds of torch)"
    if version < MIN_TRITON:
        want = ".".join(map(str, MIN_TRITON))
        return f"Triton {'.'.join(map(str, version))} is too old; mat_fast's kernels need >= {want}"
    if not hasattr(torch.library, "custom_op"):
        return f"torch {torch.__version__} lacks torch.library.custom_op; the Triton backend needs torch >= 2.4"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA GPU is visible"
    if device_type == "cpu":
        if not settings.triton_interpret():
            return (
                "Triton runs on CPU tensors only under its interpreter (TRITON_INTERPRET=1, "
                "slow; for tests)"
            )
        return None
    return f"Triton kernels do not run on {device_type}"


def check_device(op: str, kernel, *tensors: Optional[torch.Tensor]) -> torch.device:
    """Raise a clear ``ValueError`` unless all tensors share one device that ``kernel`` (a
    ``@triton.jit`` function of the op) runs on: CUDA, or CPU when it was built for Triton's
    interpreter (see :func:`kernels_interpreted`)."""
    present = [t for t in tensors if t is not None]
    device = present[0].device
    for t in present[1:]:
        if t.device != device:
            raise ValueError(
                f"{op}: all tensors must be on one device; got {device} and {t.device}"
            )
    if torch.compiler.is_compiling():
        # Dynamo cannot trace isinstance() of a compiled @triton.jit kernel (a
        # TritonKernelVariable: every torch.compile of a Triton op failed on the H200,
        # torch 2.11); while tracing, the device check stops here, and a tensor on a device
        # the kernels do not run on fails at their launch instead.
        return device
    interpreted = kernels_interpreted(kernel)
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


def alloc(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    *,
    poison: Optional[bool] = None,
) -> torch.Tensor:
    """An uninitialised kernel output; NaN-filled when ``poison`` (default:
    ``MAT_FAST_POISON_OUTPUTS=1``, read now), so an element the kernel does not write fails
    loudly in the tests (one fill per output; off by default)."""
    if settings.poison_outputs() if poison is None else poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def alloc_like(x: torch.Tensor, *, poison: Optional[bool] = None) -> torch.Tensor:
    """:func:`alloc` with x's shape, dtype, device and (dense) strides: NCHW stays NCHW,
    channels_last stays channels_last."""
    out = torch.empty_like(x, memory_format=torch.preserve_format)
    if settings.poison_outputs() if poison is None else poison:
        out.fill_(float("nan"))
    return out


def device_context(device: torch.device):
    """The context a launch on ``device`` runs in: that GPU current (Triton launches on the
    current device), nothing for CPU tensors (interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
