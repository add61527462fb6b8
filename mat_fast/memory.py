"""How much memory an inpainting call needs, measured, and how much the machine has.

The generator's activations grow linearly with the canvas (the padded region a forward
runs on) and the batch; the network's weights and torch itself are already resident before
a call. So the extra memory of one forward is ``fixed + per_pixel * canvas_pixels * batch``,
fitted (least squares) to peak RSS measured at 512, 1024 and 2048 px square canvases. The
Inpainter adds what it holds per *photo* pixel (float copies of the photo, the result).

The estimate is compared before a call with the memory available (free device memory on a
GPU; on the CPU, the kernel's MemAvailable, bounded by a cgroup limit where there is one),
or with a budget the caller sets; a call that would not fit is refused, or planned smaller
(crops, reduced size) by the 'auto' strategy.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional, Tuple

import torch

from .image_io import InputError

GIB = 1 << 30

# Peak RSS of one Inpainter call minus RSS before it (bytes), strategy 'full', batch 1,
# square canvases, 'cpu' backend, random 512 network. Measured with
# `python benchmarks/memory.py` (one fresh process per row; results in
# benchmarks/results/memory_cpu.json) on the project's 2-core AMD EPYC CPU box (23.5 GiB,
# torch 2.13 CPU, shared with other jobs), commit 8d3d9c4 (+ this table).
# Key: (dtype, freed memory kept by mat_fast.cpu_memory) -> {canvas side: extra bytes}.
CPU_MEASURED: Dict[Tuple[str, bool], Dict[int, int]] = {
    ("float32", True): {512: 862_000_000, 1024: 3_300_000_000, 2048: 13_000_000_000},
    ("float32", False): {512: 862_000_000, 1024: 3_300_000_000, 2048: 13_000_000_000},
    ("bfloat16", True): {512: 862_000_000, 1024: 3_300_000_000, 2048: 13_000_000_000},
    ("bfloat16", False): {512: 862_000_000, 1024: 3_300_000_000, 2048: 13_000_000_000},
}

# What the Inpainter keeps per pixel of each photo during a call (computed, not measured):
# the float32 RGB view and the filled copy (12 B each), the hole mask, the original and
# the result in the input's dtype (up to 8 B each for 16-bit RGBA), and the decoded file.
PHOTO_BYTES_PER_PIXEL = 48

# Estimates are raised by this factor: the measured peaks vary by a few percent between
# runs and the allocator's fragmentation grows with the number of calls.
SAFETY = 1.15

# GPU: NOT MEASURED (no GPU figures exist yet). Assumed: torch's caching allocator holds
# blocks like the CPU with freed memory kept, activations scale with the element size of
# the dtype, plus the CUDA context and the kernels' workspaces.
GPU_FIXED_BYTES_UNMEASURED = 800 * (1 << 20)


def _fit(points: Dict[int, int]) -> Tuple[float, float]:
    """(fixed bytes, bytes per canvas pixel): least squares over (side**2, bytes)."""
    xs = [float(side * side) for side in points]
    ys = [float(v) for v in points.values()]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return max(mean_y - slope * mean_x, 0.0), slope


def forward_coefficients(device_type: str, dtype: torch.dtype, kept: bool) -> Tuple[float, float]:
    """(fixed bytes, bytes per canvas pixel per batch item) of one forward."""
    half = dtype in (torch.float16, torch.bfloat16)
    if device_type == "cuda":  # unmeasured: see GPU_FIXED_BYTES_UNMEASURED
        _, per_pixel = _fit(CPU_MEASURED[("bfloat16" if half else "float32", True)])
        return GPU_FIXED_BYTES_UNMEASURED, per_pixel
    # fp16 on the CPU is not measured: same element size as bf16
    return _fit(CPU_MEASURED[("bfloat16" if half else "float32", kept)])


def forward_bytes(
    device_type: str, dtype: torch.dtype, kept: bool, canvas_pixels: int, batch: int = 1
) -> int:
    """Estimated extra memory of one forward on ``batch`` canvases of ``canvas_pixels``."""
    fixed, per_pixel = forward_coefficients(device_type, dtype, kept)
    return int(SAFETY * (fixed + per_pixel * canvas_pixels * batch))


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory a call may still use on ``device``, or None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks torch's caching allocator holds but does not use are free for us too
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    available = _meminfo_available()
    limit = _cgroup_room()
    if available is None:
        return limit
    return available if limit is None else min(available, limit)


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> Optional[int]:
    """Room left under this process's cgroup v2 memory limit, if it has one."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next(
                (line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None
            )
        if rel is None:
            return None
        base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
        with open(os.path.join(base, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(base, "memory.current")) as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def parse_size(text: str) -> int:
    """'8G', '8GiB', '8GB', '512M', '1.5g' -> bytes (binary units); a bare number is GiB."""
    units = {"": GIB, "k": 1 << 10, "m": 1 << 20, "g": GIB, "t": 1 << 40}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = value[-1] if value and value[-1] in "kmgt" else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"memory size {text!r} is not a positive size such as 8G or 512M")
    return int(number * units[unit])


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


class MemoryBudgetError(InputError):
    """A call would need more memory than is available; the message says how much."""
