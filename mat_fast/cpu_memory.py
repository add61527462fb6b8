"""Keep freed CPU memory in the process for reuse, so big activations stop page-faulting.

Why: glibc's malloc gives every request above its mmap threshold (32 MB at most by
default) fresh pages of its own and hands them back to the kernel on free. A CPU forward of
the generator at 512 px allocates and frees 190 MB feature maps (180 channels x 512 x 512,
fp32) over and over, so the kernel maps and zeroes them again each time: about 440,000 page
faults per forward. On the 2-core development box that cost the 'cpu' backend's 512 px
forward a quarter to a third of its time (2.4-3.0 s -> 1.8-1.9 s with freed memory kept) and
the reference's over half (6.2-9.0 s -> 2.5-2.7 s).

:func:`keep_freed_memory` raises malloc's mmap threshold and turns heap trimming off
(``mallopt``), so large blocks come from the heap and freed ones stay there for the next
request. The cost is the one torch's CUDA caching allocator has: the process holds on to
its peak (measured at 512 px: peak RSS 1.29 -> 1.36 GB, and that much stays resident after
the forward) until :func:`release_freed_memory` or exit.

:class:`mat_fast.Inpainter` changes these process-wide settings explicitly, through its
``keep_freed_memory`` argument (default: ``MAT_FAST_KEEP_FREED_MEMORY`` when set, else kept
for photos up to 1024x1024 px and glibc's defaults restored, :func:`return_freed_memory`,
for larger ones, whose peak kept memory raises: 20.7 vs 13.8 GiB at 2560x2048 fp32). The
benchmarks turn it on for every implementation they time. Only glibc (Linux)
has these knobs; elsewhere the functions do nothing and return False. glibc's other
threads allocate from arenas of 64 MB heaps, so a forward run from a thread other than the
main one still maps its largest blocks afresh.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from typing import Optional

import torch

__all__ = [
    "freed_memory_kept",
    "keep_freed_memory",
    "keep_freed_memory_for",
    "release_freed_memory",
    "return_freed_memory",
]

ENV_VAR = "MAT_FAST_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size (mallopt takes an int) come from the heap; larger ones, rare
# here, keep their own mapping.
_MMAP_THRESHOLD_BYTES = (1 << 31) - 1
# -1 turns trimming off (mallopt(3)): a finite threshold (1 GiB was tried) still hands the
# heap's free top back after the reference's forward, whose peak is higher, and the next
# forward faults it all in again.
_TRIM_THRESHOLD_OFF = -1
# glibc's defaults: blocks above 32 MiB (the dynamic threshold's ceiling) get their own
# mapping, and a free top of the heap above 128 KiB is returned to the system.
_DEFAULT_MMAP_THRESHOLD_BYTES = 32 << 20
_DEFAULT_TRIM_THRESHOLD_BYTES = 128 << 10

_log = logging.getLogger("mat_fast")
_lock = threading.Lock()
_kept = False


def _libc() -> Optional[ctypes.CDLL]:
    """The process's C library when it is glibc (the only one with these knobs), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)  # the symbols already loaded into this process
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Have malloc serve large blocks from its heap and keep freed ones for reuse.

    Process-wide and lasting; calling it again does nothing. Returns True when the setting
    is in effect, False where it cannot be had (not glibc, or glibc refused a value)."""
    global _kept
    with _lock:
        if _kept:
            return True
        libc = _libc()
        if libc is None:
            return False
        # The threshold first: if glibc refuses it, nothing has changed. (glibc accepts any
        # trim threshold, so the second call does not fail in practice.)
        for name, param, value in (
            ("mmap threshold", _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES),
            ("trim threshold", _M_TRIM_THRESHOLD, _TRIM_THRESHOLD_OFF),
        ):
            if libc.mallopt(param, ctypes.c_int(value)) != 1:
                _log.info(
                    "mat_fast: glibc refused mallopt(%s, %d); freed CPU memory is returned "
                    "to the system as usual",
                    name,
                    value,
                )
                return False
        _kept = True
        return True


def keep_freed_memory_for(device: torch.device) -> bool:
    """:func:`keep_freed_memory` for work on ``device``: CPU only (GPU memory has torch's
    own caching allocator), unless the environment variable MAT_FAST_KEEP_FREED_MEMORY is
    0. Returns whether freed memory is kept."""
    if device.type != "cpu" or os.environ.get(ENV_VAR, "1").strip() == "0":
        return freed_memory_kept()
    return keep_freed_memory()


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _kept


def release_freed_memory() -> bool:
    """Give the memory malloc holds free back to the system (``malloc_trim``), e.g. after a
    batch of work in a long-running process. The setting itself stays. Returns True when
    memory was released."""
    libc = _libc()
    return libc is not None and libc.malloc_trim(ctypes.c_size_t(0)) == 1


def return_freed_memory() -> bool:
    """Undo :func:`keep_freed_memory`: large blocks get their own mapping again and freed
    memory goes back to the system (glibc's default behaviour, with the mmap threshold at
    its 32 MiB ceiling), and what is held free now is released. Returns True when the
    process no longer keeps freed memory."""
    global _kept
    with _lock:
        libc = _libc()
        if libc is None:
            return not _kept
        for param, value in (
            (_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD_BYTES),
        ):
            libc.mallopt(param, ctypes.c_int(value))
        libc.malloc_trim(ctypes.c_size_t(0))
        _kept = False
        return True
