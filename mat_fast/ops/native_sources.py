"""What a native build is keyed on: the kernel sources' digest and the GPU architectures.

Standalone (the standard library and torch only): ``setup.py`` loads this file by path to
record the digest beside an ahead-of-time build, and :mod:`mat_fast.ops.native_build`
compares it before loading that build and hashes the same way for its JIT cache keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import torch

log = logging.getLogger("mat_fast")

#: Written by setup.py beside the ahead-of-time build: the :func:`source_digest` of the
#: kernels it was compiled from. An editable install whose kernels were edited since would
#: otherwise run the old kernels without a word.
AOT_DIGEST_FILE = "_C.sources.sha256"
#: Files of kernels/ that a build reads (and so that its identity covers).
HASHED_SUFFIXES = (".cpp", ".cu", ".h", ".cuh", ".inc")


def hash_sources(sources: Dict[str, bytes]):  # -> a hashlib sha256 object
    h = hashlib.sha256()
    for name, data in sorted(sources.items()):
        h.update(name.encode() + b"\0" + data + b"\0")
    return h


def source_digest(kernels: Path) -> str:
    """sha256 of every kernel source in ``kernels`` (names and bytes, CUDA ones included):
    what :data:`AOT_DIGEST_FILE` records for an ahead-of-time build."""
    files = {p.name: p.read_bytes() for p in kernels.iterdir() if p.suffix in HASHED_SUFFIXES}
    return hash_sources(files).hexdigest()


# Prints the visible GPUs' compute capabilities as JSON; see cuda_arch_list.
_CAPABILITY_SCRIPT = r"""
import json, torch
print(json.dumps(sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})))
"""


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set, else the visible GPUs' architectures, else '' (with a
    GPU, torch's cpp_extension then asks the devices itself; without one the build leaves
    the CUDA kernels out: there is no architecture to build for)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    return _visible_gpu_archs() if torch.cuda.is_available() else ""


@functools.lru_cache(maxsize=None)
def _visible_gpu_archs() -> str:
    if torch.cuda.is_initialized():
        caps = sorted(
            {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        )
    else:
        # Asking here would create a CUDA context (hundreds of MB of GPU memory, and forked
        # workers could no longer use CUDA) in a process that may only want the 'cpu'
        # backend: a child process asks instead, once per process.
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CAPABILITY_SCRIPT],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            caps = [tuple(cap) for cap in json.loads(proc.stdout.strip().splitlines()[-1])]
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as err:
            log.info(
                "mat_fast: could not query the GPUs' architectures (%s: %s); the CUDA "
                "kernels will be built for every architecture torch knows",
                type(err).__name__,
                err,
            )
            return ""
    return ";".join(f"{major}.{minor}" for major, minor in caps)
