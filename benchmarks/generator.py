"""Benchmark the whole MAT generator per backend and precision.

    python benchmarks/generator.py                      # GPU: 512 and 1024, batch 1 and 8, fp32/bf16/fp16
    python benchmarks/generator.py --device cpu         # CPU: 512, batch 1, fp32 (bf16 with --dtypes)
    python benchmarks/generator.py --sizes 512 --batches 1 --dtypes float32,bfloat16

Every configuration is compared with the upstream-style ``reference`` backend in fp32 at
the same size and batch: ``speedup`` is reference-fp32 time / this time, and ``rel err`` is
the output's relative RMS difference from it (same seeds, so dropout and noise draws
match; the JSON also has ``max_rel_err``, max|diff| / max|reference|). Reported: latency
median with p20/p80 (``triton.testing.do_bench`` on GPU, a
round-robin timer on CPU), images/s, peak memory (GPU), FLOPs per image (counted once on
the meta device) and achieved TFLOP/s with % of the device's dense peak where known.
Output: a table, ``<out>/generator_<device>.json`` (device, versions, commit, command) and
a PNG chart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mat_fast  # noqa: E402
from benchmarks.common import (
    add_malloc_option,
    apply_malloc,
    device_name,
    draw_chart,
    git_commit,  # noqa: E402
    time_group,
    triton_version,
)
from mat_fast.inpaint import random_generator  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense peak TFLOP/s by device name fragment and dtype (fp32 = TF32 tensor cores off).
PEAK_TFLOPS = [
    ("H200", {"float32": 67, "bfloat16": 989, "float16": 989}),
    ("H100", {"float32": 67, "bfloat16": 989, "float16": 989}),
    ("A100", {"float32": 19.5, "bfloat16": 312, "float16": 312}),
]


def count_flops(size_hw, batch: int = 1) -> float:
    """FLOPs of one forward, counted on the meta device (no compute, no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G = mat_fast.Generator(512, 0, 512, 512, 3).eval()
        x, m = torch.zeros(batch, 3, *size_hw), torch.ones(batch, 1, *size_hw)
        z = torch.zeros(batch, 512)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        G(x, m, z, None, noise_mode="random")
    return float(counter.get_total_flops())


def make_inputs(batch, size, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    masks = torch.ones(batch, 1, size, size)
    masks[..., size // 4 : 3 * size // 4, size // 5 : 3 * size // 5] = 0  # a large hole
    z = torch.randn(batch, 512, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (images, masks, z)]


def forward_fn(G, inputs, backend: str, seed: int = 1):
    def run():
        with mat_fast.use_backend(backend), torch.inference_mode():
            torch.manual_seed(seed)
            return G(*inputs, None, noise_mode="random")

    return run


def peak_tflops(name: str, dtype: str) -> Optional[float]:
    for key, table in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return table.get(dtype)
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", help="comma list (default: 512,1024 on GPU, 512 on CPU)")
    parser.add_argument("--batches", help="comma list (default: 1,8 on GPU, 1 on CPU)")
    parser.add_argument(
        "--dtypes",
        help="comma list of float32,bfloat16,float16 (default: all on GPU, float32 on CPU)",
    )
    parser.add_argument("--backends", help="comma list (default: every available one)")
    parser.add_argument("--budget", type=float, default=20.0, help="CPU seconds per configuration")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    add_malloc_option(parser)
    args = parser.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    gpu = device.type == "cuda"
    sizes = [int(s) for s in (args.sizes or ("512,1024" if gpu else "512")).split(",")]
    batches = [int(b) for b in (args.batches or ("1,8" if gpu else "1")).split(",")]
    dtypes = (args.dtypes or ("float32,bfloat16,float16" if gpu else "float32")).split(",")
    status = mat_fast.available_backends(device)
    backends = (
        args.backends.split(",")
        if args.backends
        else [b for b, why in status.items() if why is None]
    )
    skipped = {b: why for b, why in status.items() if why is not None and b not in backends}
    name = device_name(device)
    malloc = apply_malloc(device, args.malloc)
    print(
        f"device: {name}; backends: {', '.join(backends)}"
        + (f"; malloc: {malloc}" if malloc else "")
    )
    for b, why in skipped.items():
        print(f"  skipped {b}: {why}")

    generators = {}
    rows = []
    for size in sizes:
        flops = count_flops((size, size))
        for batch in batches:
            group = {}
            for dtype in dtypes:
                if dtype not in generators:
                    generators[dtype] = random_generator(0, 512).to(device, DTYPES[dtype])
                inputs = make_inputs(batch, size, device, DTYPES[dtype])
                for backend in backends:
                    group[(backend, dtype)] = forward_fn(generators[dtype], inputs, backend)
            if ("reference", "float32") not in group:
                ref_inputs = make_inputs(batch, size, device, torch.float32)
                generators.setdefault("float32", random_generator(0, 512).to(device))
                group[("reference", "float32")] = forward_fn(
                    generators["float32"], ref_inputs, "reference"
                )
            reference = group[("reference", "float32")]().float()
            mem, err, max_err = {}, {}, {}
            for key, fn in group.items():
                if gpu:
                    torch.cuda.reset_peak_memory_stats(device)
                out = fn().float()
                if gpu:
                    mem[key] = torch.cuda.max_memory_allocated(device) / 2**20
                err[key] = float(
                    (out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
                )
                max_err[key] = float((out - reference).abs().max() / reference.abs().max())
            stats = time_group(
                {f"{b}/{d}": fn for (b, d), fn in group.items()}, device, args.budget / len(group)
            )
            base = stats["reference/float32"]["median_ms"]
            for (backend, dtype), _ in group.items():
                s = stats[f"{backend}/{dtype}"]
                tflops = flops * batch / (s["median_ms"] * 1e-3) / 1e12
                peak = peak_tflops(name, dtype)
                rows.append(
                    dict(
                        config=f"{size}px B{batch}",
                        impl=f"{backend} {dtype}",
                        size=size,
                        batch=batch,
                        backend=backend,
                        dtype=dtype,
                        **s,
                        images_per_s=batch / (s["median_ms"] * 1e-3),
                        speedup_vs_reference=base / s["median_ms"],
                        rel_rms_err=err[(backend, dtype)],
                        max_rel_err=max_err[(backend, dtype)],
                        peak_mem_mib=mem.get((backend, dtype)),
                        gflop_per_image=flops / 1e9,
                        tflops=tflops,
                        pct_peak=(100 * tflops / peak) if peak else None,
                    )
                )

    header = (
        f"{'config':<12} {'impl':<22} {'median ms':>10} {'p20':>9} {'p80':>9} {'img/s':>8} "
        f"{'speedup':>8} {'rel err':>9} {'TFLOP/s':>8} {'%peak':>6} {'MiB':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        pct = f"{r['pct_peak']:.0f}" if r["pct_peak"] else "n/a"
        mem = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] else "n/a"
        print(
            f"{r['config']:<12} {r['impl']:<22} {r['median_ms']:>10.1f} {r['p20_ms']:>9.1f} {r['p80_ms']:>9.1f} "
            f"{r['images_per_s']:>8.2f} {r['speedup_vs_reference']:>7.2f}x {r['rel_rms_err']:>9.1e} "
            f"{r['tflops']:>8.3f} {pct:>6} {mem:>7}"
        )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(
        device=name,
        device_type=device.type,
        command=" ".join(["python"] + sys.argv),
        commit=git_commit(),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            triton=triton_version(),
            mat_fast=mat_fast.__version__,
        ),
        threads=torch.get_num_threads(),
        malloc=malloc,
        skipped=skipped,
    )
    tag = "cuda" if gpu else "cpu"
    json_path, png_path = out / f"generator_{tag}.json", out / f"generator_{tag}.png"
    json_path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    draw_chart(
        rows,
        png_path,
        f"MAT generator, {name}, torch {torch.__version__}",
        speedup_key="speedup_vs_reference",
        baseline="reference float32",
    )
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
