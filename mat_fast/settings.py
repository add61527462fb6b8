"""Every environment variable mat_fast reads, and the one place each is read.

The variables are defaults, never hidden switches: each is read here, when it is needed
(not once at import), and each has an explicit argument that wins over it. A leaf module:
it imports nothing from the package.

=============================  ===========================================================
variable                       default of / effect
=============================  ===========================================================
``MAT_FAST_BACKEND``           :func:`mat_fast.backend.get_backend` when no
                               ``set_backend``/``use_backend`` choice is in effect
``MAT_FAST_CACHE``             where the native extension is built and cached
                               (``$MAT_FAST_CACHE/ext``; else ``$XDG_CACHE_HOME/mat_fast/
                               ext``, else ``~/.cache/mat_fast/ext``)
``MAT_FAST_POISON_OUTPUTS``    ``=1``: every native and Triton kernel output is NaN-filled
                               before the kernel writes it (tests: an unwritten element
                               fails loudly); the ``poison`` argument of
                               :func:`mat_fast.ops.triton_support.alloc`; the C++ side reads
                               it on every call too (``kernels/common.h``)
``MAT_FAST_CPU_ISA``           caps the native CPU attention's instruction set (``avx512``,
                               ``avx2``, ``base``; tests), read by the C++ on every call
``TRITON_INTERPRET``           ``=1``: Triton runs kernels in its CPU interpreter. Triton
                               itself fixes this when a kernel module is imported; mat_fast
                               asks the kernels which mode they were built in
                               (:func:`mat_fast.ops.triton_support.kernels_interpreted`)
``MAT_FAST_KEEP_FREED_MEMORY`` ``=0``: the Inpainter leaves glibc's malloc settings alone
                               (:mod:`mat_fast.cpu_memory`)
``MAT_FAST_CHECKPOINT``        the CLI's default ``--checkpoint``
``MAT_FAST_BUILD_EXT``         ``=1``: ``pip install`` prebuilds the native extension
                               (``setup.py``)
``MAT_FAST_NO_BUILD``          ``=1``: no just-in-time build of the native extension: a
                               cached or prebuilt one loads, else the 'cpu'/'cuda' backends
                               say they are unavailable at once (the GPU runbook sets it
                               after its build phase failed, so that later phases do not
                               spend their time compiling)
``TORCH_CUDA_ARCH_LIST``,      the native build's GPU architectures and compiler
``CXX``
=============================  ===========================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

BACKEND = "MAT_FAST_BACKEND"
CACHE = "MAT_FAST_CACHE"
POISON_OUTPUTS = "MAT_FAST_POISON_OUTPUTS"
NO_BUILD = "MAT_FAST_NO_BUILD"
TRITON_INTERPRET = "TRITON_INTERPRET"


def requested_backend() -> Optional[str]:
    """``$MAT_FAST_BACKEND`` stripped, or None when unset or empty."""
    value = os.environ.get(BACKEND, "").strip()
    return value or None


def native_builds_allowed() -> bool:
    """False when ``MAT_FAST_NO_BUILD=1``: the native extension is never compiled here."""
    return os.environ.get(NO_BUILD) != "1"


def poison_outputs() -> bool:
    """Whether kernel outputs are NaN-filled before the kernels write them."""
    return os.environ.get(POISON_OUTPUTS) == "1"


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (kernel modules imported from now on run in
    Triton's interpreter)."""
    return os.environ.get(TRITON_INTERPRET) == "1"


def cache_root(kind: str = "ext") -> Path:
    """One of mat_fast's caches (``ext``: the native extension; ``vgg``, ``metrics``: weight
    files): ``$MAT_FAST_CACHE/KIND``, else ``$XDG_CACHE_HOME/mat_fast/KIND``, else
    ``~/.cache/mat_fast/KIND``."""
    if os.environ.get(CACHE):
        return Path(os.environ[CACHE]).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mat_fast" / kind
