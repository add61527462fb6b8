"""Peak memory of one Inpainter call per canvas size, dtype and CPU allocator setting.

Each configuration runs in a fresh process (peak RSS is per process): build a seeded random
512 network, inpaint one image of exactly the canvas size (no padding) with a central hole
covering a quarter of it, strategy 'full', batch 1; record the process's peak RSS
(``ru_maxrss``) before and after the call. The table in mat_fast/memory.py is calibrated
from this script's output (``benchmarks/results/memory_cpu.json``).

    python benchmarks/memory.py                    # 512, 1024, 2048 x fp32, bf16 x keep, default
    python benchmarks/memory.py --sizes 512 --dtypes float32 --malloc keep

A configuration whose expected peak (extrapolated from the smaller sizes already measured)
exceeds 80% of the memory available now is skipped and reported as skipped, so the script
never drives a shared machine out of memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT  # noqa: E402
from benchmarks.results_io import ResultsFile  # noqa: E402

GIB = 1 << 30


def _child(size: int, dtype_name: str) -> None:
    import resource

    import numpy as np
    import torch

    import mat_fast
    from mat_fast.inpaint import Inpainter

    torch.set_num_threads(os.cpu_count() or 1)
    dtype = getattr(torch, dtype_name)
    mat_fast.set_backend("cpu")
    inpainter = Inpainter.random(0, resolution=512, device="cpu", dtype=dtype, batch_size=1)
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    inpainter(image, mask, seed=0, strategy="full")
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(before_bytes=before, peak_bytes=after, seconds=seconds)))


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--malloc", default="keep,default")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_cpu.json"))
    args = parser.parse_args()
    if args.child:
        _child(int(args.child[0]), args.child[1])
        return
    import torch

    results = ResultsFile(Path(args.out), "memory", torch.device("cpu"), cpus=os.cpu_count())
    with results:
        _measure(args, results)
    print(f"wrote {args.out}")


def _measure(args, results) -> None:
    for malloc in args.malloc.split(","):
        for dtype_name in args.dtypes.split(","):
            done = []
            for size in [int(s) for s in args.sizes.split(",")]:
                if len(done) >= 2:  # linear in pixels: extrapolate from the last two
                    (p0, m0), (p1, m1) = done[-2:]
                    expected = m1 + (m1 - m0) / (p1 - p0) * (size * size - p1)
                    if expected > 0.8 * _available_bytes():
                        results.add(dict(size=size, dtype=dtype_name, malloc=malloc, skipped=True))
                        print(f"{size} {dtype_name} {malloc}: skipped (~{expected / GIB:.1f} GiB)")
                        continue
                env = dict(os.environ, MAT_FAST_KEEP_FREED_MEMORY="1" if malloc == "keep" else "0")
                env["PYTHONPATH"] = str(ROOT)
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(size), dtype_name],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(size=size, dtype=dtype_name, malloc=malloc)
                results.add(row)
                done.append((size * size, row["peak_bytes"]))
                print(
                    f"{size} {dtype_name} {malloc}: peak {row['peak_bytes'] / GIB:.2f} GiB "
                    f"(before the call {row['before_bytes'] / GIB:.2f}), {row['seconds']:.1f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
