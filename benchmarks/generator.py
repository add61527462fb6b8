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
Output: a table and ``<out>/generator_<device>.json`` (benchmarks/results_io.py's schema),
both written row by row as measured (each row as soon as it is timed on GPU; per size and
batch on CPU, whose round-robin timer needs the whole group), then a PNG chart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mat_fast  # noqa: E402
from benchmarks.common import add_malloc_option, apply_malloc, time_group
from benchmarks.results_io import ResultsFile, draw
from mat_fast.inpaint import random_generator  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Dense peak TFLOP/s by device name fragment and dtype (fp32 = TF32 tensor cores off).
PEAK_TFLOPS = [
    ("H200", {"float32": 67, "bfloat16": 989, "float16": 989}),
    ("H100", {"float32": 67, "bfloat16": 989, "float16": 989}),
    ("A100", {"float32": 19.5, "bfloat16": 312, "float16": 312}),
]


def count_flops(size_hw, batch: int = 1, resolution: int = 512) -> float:
    """FLOPs of one forward, counted on the meta device (no compute, no memory)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G = mat_fast.Generator(512, 0, 512, resolution, 3).eval()
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
    parser.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="the network's resolution (512 as released; smaller for smoke runs)",
    )
    parser.add_argument("--budget", type=float, default=20.0, help="CPU seconds per configuration")
    parser.add_argument(
        "--min-rounds", type=int, default=5, help="CPU: timed calls of every row at least (5)"
    )
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
    # only the named backends are probed: probing 'cuda' builds the extension if missing
    status = mat_fast.available_backends(
        device, args.backends.split(",") if args.backends else None
    )
    backends = (
        args.backends.split(",")
        if args.backends
        else [b for b, why in status.items() if why is None]
    )
    malloc = apply_malloc(device, args.malloc)
    results = ResultsFile(
        Path(args.out) / f"generator_{'cuda' if gpu else 'cpu'}.json",
        "generator",
        device,
        threads=torch.get_num_threads(),
        malloc=malloc,
        resolution=args.resolution,
        timer="triton.testing.do_bench" if gpu else "round-robin perf_counter loop",
    )
    for b, why in status.items():
        if why is not None:  # named or not: a backend that cannot run here is skipped
            results.skip(b, why)
    backends = [b for b in backends if status.get(b) is None]
    print(
        f"device: {results.meta['device']}; backends: {', '.join(backends)}"
        + (f"; malloc: {malloc}" if malloc else "")
    )
    for b, why in results.skipped.items():
        print(f"  skipped {b}: {why}")
    header = (
        f"{'config':<12} {'impl':<22} {'median ms':>10} {'p20':>9} {'p80':>9} {'img/s':>8} "
        f"{'speedup':>8} {'rel err':>9} {'TFLOP/s':>8} {'%peak':>6} {'MiB':>7}"
    )
    print(header)
    print("-" * len(header), flush=True)
    with results:
        generators = {}
        for size in sizes:
            flops = count_flops((size, size), resolution=args.resolution)
            for batch in batches:
                _measure_config(
                    size, batch, flops, dtypes, backends, generators, device, args, results
                )
    print(f"\nwrote {results.path}")
    if not results.interrupted and results.rows:
        print(f"wrote {draw(results.path)}")
    return 130 if results.interrupted else 0


def _measure_config(size, batch, flops, dtypes, backends, generators, device, args, results):
    """Rows of one (size, batch): the fp32 reference first (every row's baseline), then
    each backend x dtype; on GPU each row is written as soon as it is timed."""
    gpu = device.type == "cuda"
    group = {}
    keys = [("reference", "float32")] + [
        (b, d) for d in dtypes for b in backends if (b, d) != ("reference", "float32")
    ]
    for backend, dtype in keys:
        if dtype not in generators:
            generators[dtype] = random_generator(0, args.resolution).to(device, DTYPES[dtype])
        inputs = make_inputs(batch, size, device, DTYPES[dtype])
        group[(backend, dtype)] = forward_fn(generators[dtype], inputs, backend)
    measured = ("reference", "float32") in [(b, d) for b in backends for d in dtypes]
    reference = group[("reference", "float32")]().float()
    todo = keys if measured else keys[1:]
    if not gpu:  # round-robin on CPU, so a shared machine's load spreads over all of them
        stats = time_group(
            {f"{b}/{d}": group[(b, d)] for b, d in keys},
            device,
            args.budget / len(keys),
            args.min_rounds,
        )
    else:
        stats = {"reference/float32": time_group({"r": group[keys[0]]}, device, 0)["r"]}
    base = stats["reference/float32"]["median_ms"]
    for backend, dtype in todo:
        key = f"{backend}/{dtype}"
        fn = group[(backend, dtype)]
        if gpu:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        out = fn().float()
        mem = torch.cuda.max_memory_allocated(device) / 2**20 if gpu else None
        if key not in stats:
            stats[key] = time_group({key: fn}, device, 0, args.min_rounds)[key]
        s = stats[key]
        tflops = flops * batch / (s["median_ms"] * 1e-3) / 1e12
        peak = peak_tflops(results.meta["device"], dtype)
        row = dict(
            config=f"{size}px B{batch}",
            impl=f"{backend} {dtype}",
            size=size,
            batch=batch,
            backend=backend,
            dtype=dtype,
            **s,
            images_per_s=batch / (s["median_ms"] * 1e-3),
            speedup_vs_reference=base / s["median_ms"],
            rel_rms_err=float(
                (out - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
            ),
            max_rel_err=float((out - reference).abs().max() / reference.abs().max()),
            peak_mem_mib=mem,
            gflop_per_image=flops / 1e9,
            tflops=tflops,
            pct_peak=(100 * tflops / peak) if peak else None,
        )
        results.add(row)
        _print_row(row)


def _print_row(r):
    pct = f"{r['pct_peak']:.0f}" if r["pct_peak"] else "n/a"
    mem = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] else "n/a"
    print(
        f"{r['config']:<12} {r['impl']:<22} {r['median_ms']:>10.1f} {r['p20_ms']:>9.1f} "
        f"{r['p80_ms']:>9.1f} {r['images_per_s']:>8.2f} {r['speedup_vs_reference']:>7.2f}x "
        f"{r['rel_rms_err']:>9.1e} {r['tflops']:>8.3f} {pct:>6} {mem:>7}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
