"""How much memory an inpainting call needs, measured, and how much the machine has.

The generator's activations grow with the canvas (the padded region a forward runs on)
and the batch; the network's weights and torch itself are already resident before a call.
So the extra memory of one forward is a function of its canvas pixels times the batch,
interpolated between peak RSS measured at 512x512, 1024x1024 and 2560x2048 (the table
below says where each figure comes from). The Inpainter adds what it holds per *photo*
pixel (float copies of the photo, the result).

GPU estimate (one point measured): the CPU curve with freed memory kept (torch's caching
allocator also keeps its peak), for the dtype, plus GPU_FIXED_BYTES_UNMEASURED for the CUDA
context and workspaces; i.e. about 0.8 GiB + 3 GiB per 1024x1024 canvas in fp32. The one
GPU figure so far (H200, 512x512 batch 1 fp32, benchmarks/results/generator_cuda.json):
peak allocated 1.43-1.61 GiB (1469-1645 MiB) including the weights, against 1.84 GiB
estimated (safe side). Replace it with measured curves.

The estimate is compared before a call with the memory available (free device memory on a
GPU; on the CPU, the kernel's MemAvailable, bounded by a cgroup limit where there is one),
or with a budget the caller sets; a call that would not fit is refused, or planned smaller
(crops, reduced size) by the 'auto' strategy.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

import torch

from .errors import InputError
from .ops.resample.cpu import half_convolutions_in_fp32

GIB = 1 << 30

# Extra memory of one Inpainter call (peak RSS of the process minus its RSS before the
# call), strategy 'full', batch 1, 'cpu' backend, random 512 network, one fresh process per
# row. Key: (dtype, freed memory kept by mat_fast.cpu_memory) -> [(canvas h, w, GiB, where)].
#   "box": `python benchmarks/memory.py --dtypes float32 --malloc keep,default` (and
#     bfloat16 at 512), this project's 2-core AMD EPYC CPU box without AVX512-BF16
#     (bf16 ran through torch's generic half kernels there: slower and larger), torch 2.13
#     CPU, commit 88f8f9f; benchmarks/results/memory_cpu.json. 2048x2048 was not run: the
#     box is shared and had under 14 GiB free.
#   "box, widened": the same box after the 'cpu' backend's half convolutions were widened
#     to fp32 on CPUs without oneDNN half kernels (ops/resample/cpu.py), commit after
#     89c1877, `python benchmarks/memory.py --sizes 512,1024 --dtypes bfloat16 --malloc
#     keep,default`, twice (the larger of the two runs here; the second run's JSON is
#     benchmarks/results/memory_cpu_bf16_widened.json): each convolution's fp32 copies of
#     its input and output cost more at large canvases than the half activations save.
#   "M.md": docs/MEASUREMENTS.md of the project's shared folder (2-core AMD EPYC with
#     AVX512-BF16, 23.5 GiB, torch 2.13 CPU, commit bc5c33a): peak of a 4032x3024 photo
#     whose hole needs a 2560x2048 canvas, less the ~0.5 GiB resident before the call.
# The cost per pixel grows with the canvas (20% more per pixel at 2560x2048 than at 1024),
# so estimates interpolate piecewise linearly and extrapolate the last segment.
CPU_MEASURED: Dict[Tuple[str, bool], List[Tuple[int, int, float, str]]] = {
    ("float32", True): [(512, 512, 0.80, "box"), (1024, 1024, 3.11, "box"),
                        (2048, 2560, 20.2, "M.md")],
    ("float32", False): [(512, 512, 0.70, "box"), (1024, 1024, 2.69, "box"),
                         (2048, 2560, 13.3, "M.md")],
    ("bfloat16", True): [(512, 512, 1.16, "box"), (2048, 2560, 9.5, "M.md")],
    ("bfloat16", False): [(512, 512, 1.16, "box"), (2048, 2560, 9.5, "M.md")],
    ("bfloat16 widened", True): [(512, 512, 0.70, "box, widened"),
                                 (1024, 1024, 3.22, "box, widened")],
    ("bfloat16 widened", False): [(512, 512, 0.61, "box, widened"),
                                  (1024, 1024, 2.44, "box, widened")],
}  # fmt: skip

# What the Inpainter keeps per pixel of each photo during a call (computed, not measured):
# the float32 RGB view and the filled copy (12 B each), the hole mask, the original and
# the result in the input's dtype (up to 8 B each for 16-bit RGBA), and the decoded file.
PHOTO_BYTES_PER_PIXEL = 48

# Estimates are raised by this factor: the measured peaks vary by a few percent between
# runs and the allocator's fragmentation grows with the number of calls.
SAFETY = 1.15

# GPU: one point measured (see the module docstring). Assumed: torch's caching allocator holds
# blocks like the CPU with freed memory kept, plus the CUDA context and workspaces.
GPU_FIXED_BYTES_UNMEASURED = 800 * (1 << 20)


def _interpolate(points: List[Tuple[int, int, float, str]], pixels: float) -> float:
    """Bytes at ``pixels`` on the piecewise-linear curve through the measured points."""
    xs = [h * w for h, w, _, _ in points]
    ys = [gib * GIB for _, _, gib, _ in points]
    if pixels <= xs[0]:  # below the smallest canvas: in proportion (an upper bound)
        return ys[0] * pixels / xs[0]
    i = 1
    while i < len(xs) - 1 and pixels > xs[i]:
        i += 1
    slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + slope * (pixels - xs[i - 1])


def forward_bytes(
    device_type: str, dtype: torch.dtype, kept: bool, canvas_pixels: int, batch: int = 1
) -> int:
    """Estimated extra memory of one forward on ``batch`` canvases of ``canvas_pixels``
    (a batch costs what one canvas of all its pixels does)."""
    half = dtype in (torch.float16, torch.bfloat16)
    # fp16 on the CPU is not measured: bf16's figures (same element size)
    key = "bfloat16" if half else "float32"
    if half and device_type == "cpu" and half_convolutions_in_fp32(dtype):
        key = "bfloat16 widened"
    points = CPU_MEASURED[(key, kept or device_type == "cuda")]
    estimate = _interpolate(points, canvas_pixels * batch)
    if device_type == "cuda":  # unmeasured: see GPU_FIXED_BYTES_UNMEASURED
        estimate += GPU_FIXED_BYTES_UNMEASURED
    return int(SAFETY * estimate)


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
