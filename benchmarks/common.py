"""Shared by the benchmarks: timing, machine facts, and the PNG chart."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]


LONG_CALL_MS = 100.0  # on GPU, calls longer than this are timed directly, not by do_bench


def _synchronised_ms(fn: Callable, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def time_group(
    fns: Dict[str, Callable], device: torch.device, budget_s: float, min_rounds: int = 5
) -> Dict[str, Dict[str, float]]:
    """Median, p20, p80 in milliseconds of each function (each warmed up first).

    On GPU each function goes through ``triton.testing.do_bench``, unless one call takes
    longer than ``LONG_CALL_MS`` (a training phase): do_bench's estimate and warm-up alone
    would run it 7 times, so such a function runs ``budget_s``'s worth of synchronised calls
    instead (3 to 25). On CPU the functions run round-robin (at least ``min_rounds``), so
    load from other processes on a shared machine spreads over all of them instead of
    skewing one."""
    for fn in fns.values():
        fn()  # warm-up: JIT compiles, autotune, allocator
    if device.type == "cuda":
        import triton.testing

        stats = {}
        for name, fn in fns.items():
            first = _synchronised_ms(fn, device)
            if first < LONG_CALL_MS:
                med, p20, p80 = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
                stats[name] = dict(median_ms=med, p20_ms=p20, p80_ms=p80)
                continue
            calls = max(3, min(25, int(budget_s * 1e3 / first)))
            ts = [first] + [_synchronised_ms(fn, device) for _ in range(calls - 1)]
            stats[name] = _summary(ts)
        return stats
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max(2, min_rounds) or (  # two samples at least, for the deciles
        time.perf_counter() - start < budget_s * len(fns) and rounds < 100
    ):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: _summary(ts) for name, ts in times.items()}


def _summary(ts: List[float]) -> Dict[str, float]:
    deciles = statistics.quantiles(ts, n=10)
    return dict(median_ms=statistics.median(ts), p20_ms=deciles[1], p80_ms=deciles[7])


def ieee_fp32_knobs() -> List[tuple]:
    """(label, object, attribute, IEEE value) of every fp32-precision switch this torch has.
    fp32 on a GPU means IEEE fp32 in the benchmarks and in the tests' references: cuDNN
    convolutions default to TF32 (10 mantissa bits) in torch 2.11."""
    cudnn = torch.backends.cudnn
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9's API
        knobs = [("cuda.matmul", torch.backends.cuda.matmul, "fp32_precision", "ieee")]
        for sub in ("conv", "rnn"):
            if hasattr(getattr(cudnn, sub, None), "fp32_precision"):
                knobs.append((f"cudnn.{sub}", getattr(cudnn, sub), "fp32_precision", "ieee"))
        return knobs
    return [
        ("cuda.matmul", torch.backends.cuda.matmul, "allow_tf32", False),
        ("cudnn", cudnn, "allow_tf32", False),
    ]


def use_ieee_fp32() -> Dict[str, object]:
    """Switch fp32 matmuls and convolutions to IEEE; what the result files record."""
    state = {}
    for label, obj, name, value in ieee_fp32_knobs():
        setattr(obj, name, value)
        state[f"{label}.{name}"] = value
    return state


def add_malloc_option(parser) -> None:
    parser.add_argument(
        "--malloc",
        choices=["keep", "default"],
        default="keep",
        help="CPU: 'keep' freed memory for reuse, as mat_fast.Inpainter does "
        "(mat_fast.cpu_memory), or glibc's 'default', which maps and zeroes "
        "every large block afresh (page faults on each call)",
    )


def apply_malloc(device: torch.device, mode: str) -> Optional[str]:
    """Set up CPU memory reuse for every implementation alike; what the JSON records."""
    if device.type != "cpu":
        return None
    if mode == "default":
        return "glibc default (freed large blocks returned to the system)"
    from mat_fast.cpu_memory import keep_freed_memory

    return (
        "freed memory kept (mat_fast.cpu_memory)"
        if keep_freed_memory()
        else "malloc default (keeping freed memory is not available here)"
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def git_commit() -> Optional[str]:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def draw_chart(
    rows: List[dict],
    path: Path,
    title: str,
    speedup_key: str = "speedup_vs_eager",
    baseline: str = "eager",
) -> None:
    """Grouped horizontal bars (one group per ``config``, one bar per ``impl``), drawn with
    PIL so the chart exists wherever Pillow does."""
    from PIL import Image, ImageDraw

    configs = []
    for r in rows:
        if r["config"] not in configs:
            configs.append(r["config"])
    impls = []
    for r in rows:
        if r["impl"] not in impls:
            impls.append(r["impl"])
    palette = [
        (80, 80, 80),
        (150, 150, 150),
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
    ]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(impls)}
    bar_h, gap, left, width = 14, 12, 260, 560
    height = 60 + len(configs) * (len(impls) * bar_h + gap) + 20 * ((len(impls) + 3) // 4) + 20
    img = Image.new("RGB", (left + width + 170, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black")
    draw.text(
        (10, 26),
        f"median time per call (bar, relative to the slowest in each group); label: ms, speedup vs {baseline}",
        fill=(90, 90, 90),
    )
    y = 50
    for config in configs:
        group = [r for r in rows if r["config"] == config]
        slowest = max(r["median_ms"] for r in group)
        draw.text((10, y), config, fill="black")
        for impl in impls:
            r = next((g for g in group if g["impl"] == impl), None)
            if r is not None:
                w = max(1, int(width * r["median_ms"] / slowest))
                draw.rectangle([left, y, left + w, y + bar_h - 3], fill=colors[impl])
                label = f"{impl} {r['median_ms']:.3g} ms"
                if r.get(speedup_key) is not None:
                    label += f"  x{r[speedup_key]:.2f}"
                draw.text((left + w + 6, y), label, fill="black")
            y += bar_h
        y += gap
    x = 10
    for i, impl in enumerate(impls):
        draw.rectangle([x, y, x + 12, y + 10], fill=colors[impl])
        draw.text((x + 16, y), impl, fill="black")
        x += 140
        if i % 4 == 3:
            x, y = 10, y + 20
    img.save(path)


def triton_version() -> Optional[str]:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None
