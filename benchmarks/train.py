"""Time per training step of MAT: each phase of upstream's loop, per backend and precision.

    python benchmarks/train.py                                  # CPU: 256, batch 1, fp32
    python benchmarks/train.py --resolutions 256,512 --batch 8 --precisions fp32,bf16  # GPU
    python benchmarks/train.py --resolutions 512 --rows reference:fp32,triton:bf16  # row by row

For every resolution, backend (the 'reference' path first: plain PyTorch ops, upstream's
eager arithmetic) and precision it times the phases of one training step as
``mat-fast train`` runs them (loss, backward and Adam step): Gmain, Dmain and Dreg (R1; run
every 16 steps, so amortised as Dreg / 16), and reports the step time
``Gmain + Dmain + Dreg / 16``, images per second (``batch / step``), the speed-up over the
reference fp32 step of the same resolution, and the peak memory. The perceptual loss uses a
random VGG19 (the same work as the real one). On a CPU the rows of a resolution are timed
together, their phases in turn, so that the machine's drift spreads over all of them; on a
GPU one row at a time. Half-precision rows are skipped, saying why, on a CPU without oneDNN
kernels for them (autocast would run torch's generic ones: minutes per phase). Output: a
table, ``<out>/train_<device>.json`` and ``<out>/train_<device>.png``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import add_malloc_option, apply_malloc, draw_chart, time_group
from benchmarks.results_io import ResultsFile
from mat_fast import backend
from mat_fast.training import loop
from mat_fast.training.config import PRECISIONS, TrainOptions

PHASES = ("Gmain", "Dmain", "Dreg")


def _images(folder: Path, resolution: int, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak


def trainer_phases(args, resolution, backend_name, precision, data, device) -> dict:
    """A Trainer for one row and its phases as functions that run under its backend."""
    o = TrainOptions(
        data=str(data), outdir=tempfile.mkdtemp(), arch=args.arch, resolution=resolution,
        batch=args.batch, batch_gpu=args.batch, vgg=None, workers=0, grid=0, progress=False,
        precision=precision, device=str(device), gamma=10.0,
    )  # fmt: skip
    with backend.use_backend(backend_name):
        trainer = loop.Trainer(o)
    img, mask, c = next(iter(loop.make_loader(trainer.dataset, args.batch, 0, 1, 0, 0)))
    imgs = [(img.to(device).float() / 127.5 - 1)]
    masks, cs = [mask.to(device)], [c.to(device)]
    z = [torch.randn([args.batch, trainer.G.z_dim], device=device)]
    phases = {p.name: (i, p) for i, p in enumerate(trainer.phases)}

    def run(name):
        index, phase = phases[name]
        with backend.use_backend(backend_name):
            trainer.run_phase(index, phase, imgs, masks, cs, z)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return {name: (lambda name=name: run(name)) for name in PHASES}


def bench(args, resolution, combos, data, device, results) -> None:
    """Time each (backend, precision) of ``combos`` and add its row to ``results`` as soon
    as it is measured (a run cut by a time limit keeps its rows). On a CPU the rows are
    timed together, phase by phase in turn (time_group's round robin): a shared CPU's speed
    drifts by 15% or more between rows timed minutes apart, which made their ratios
    unsteady. On a GPU each is timed on its own, so that each row has its own peak memory.
    The speed-up is over the reference fp32 row of the same resolution (timed first)."""
    base_ms = None
    for group in [combos] if device.type == "cpu" else [[combo] for combo in combos]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fns = {}
        for name, precision in group:
            for phase, fn in trainer_phases(
                args, resolution, name, precision, data, device
            ).items():
                fns[f"{name} {precision} {phase}"] = fn
        stats = time_group(fns, device, args.budget_s, args.min_rounds)
        for name, precision in group:
            ms = {phase: stats[f"{name} {precision} {phase}"]["median_ms"] for phase in PHASES}
            step = ms["Gmain"] + ms["Dmain"] + ms["Dreg"] / 16
            if base_ms is None and name == "reference" and precision == "fp32":
                base_ms = step
            row = dict(
                resolution=resolution,
                backend=trainer_backend(name, device),
                precision=precision,
                phases_ms=ms,
                step_ms=step,
                img_per_s=args.batch / step * 1e3,
                peak_mem_gb=_peak_gb(device),
                speedup_vs_reference=(base_ms or step) / step,
            )  # fmt: skip
            results.add(row)
            print(json.dumps(row), flush=True)
        del fns  # the group's trainers


def trainer_backend(name: str, device) -> str:
    return backend.resolve(device, name)


def planned_rows(args, device: torch.device) -> tuple:
    """The (backend, precision) rows to time, reference fp32 first; and what cannot run
    here, with why. ``--rows`` names them one by one, else every backend of ``--backends``
    (default: all available) at every precision of ``--precisions``. Only the named
    backends are probed: probing 'cuda' builds the native extension when it is missing."""
    if args.rows:
        combos = [tuple(item.split(":")) for item in args.rows.split(",")]
        if any(len(c) != 2 for c in combos):
            raise SystemExit(f"--rows wants BACKEND:PRECISION pairs, got {args.rows!r}")
        names = [n for n, _ in combos]
    else:
        names = args.backends.split(",") if args.backends else None
    try:
        available = backend.available_backends(device, ["reference", *names] if names else None)
    except ValueError as err:
        raise SystemExit(f"--rows/--backends: {err}") from None
    if not args.rows:
        names = names or [n for n, why in available.items() if why is None]
        combos = [(n, p) for n in names for p in args.precisions.split(",")]
    combos = list(dict.fromkeys([("reference", "fp32")] + combos))  # once each, in order
    bad = sorted({p for _, p in combos} - set(PRECISIONS))
    if bad:
        raise SystemExit(f"unknown precision(s) {bad}: choose from {list(PRECISIONS)}")
    skipped = {n: why for n, why in available.items() if why is not None}
    for name, precision in combos:
        if name not in skipped and loop.half_is_slow_here(precision, device):
            skipped[f"{name} {precision}"] = (
                f"{precision} on this CPU: no oneDNN {precision} kernels, so autocast takes "
                "torch's generic ones (the VGG alone: minutes per phase at 256); "
                "mat-fast train warns about it"
            )
    return [c for c in combos if c[0] not in skipped and " ".join(c) not in skipped], skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolutions", default="256", help="comma-separated (256,512)")
    p.add_argument("--batch", type=int, default=None, help="per step (default: GPU 8, CPU 1)")
    p.add_argument("--backends", default=None, help="comma-separated (default: all available)")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16")
    p.add_argument(
        "--rows",
        help="BACKEND:PRECISION pairs instead of --backends x --precisions "
        "(e.g. reference:fp32,cpu:fp32,cpu:bf16); reference:fp32 is always timed",
    )
    p.add_argument("--budget-s", type=float, default=10.0, help="timing budget per phase")
    p.add_argument(
        "--min-rounds", type=int, default=5, help="CPU: rounds of every phase at least (5)"
    )
    p.add_argument(
        "--arch", default="mat", choices=["mat", "tiny"], help="tiny: smoke-test the script"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    add_malloc_option(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.batch = args.batch or (8 if device.type == "cuda" else 1)
    malloc = apply_malloc(device, args.malloc)
    combos, skipped = planned_rows(args, device)
    out = Path(args.out)
    tag = "cuda" if device.type == "cuda" else "cpu"
    results = ResultsFile(
        out / f"train_{tag}.json", "train", device, batch=args.batch, arch=args.arch,
        malloc=malloc, note="step = Gmain + Dmain + Dreg/16 (loss, backward, Adam step); "
        "reference = plain PyTorch ops in fp32; peak = the process's so far on CPU",
    )  # fmt: skip
    with results:
        for name, why in skipped.items():
            results.skip(name, why)
            print(f"skipped {name}: {why}")
        for resolution in (int(r) for r in args.resolutions.split(",")):
            with tempfile.TemporaryDirectory() as data:
                _images(Path(data), resolution, 2)
                bench(args, resolution, combos, data, device, results)
    rows = results.rows
    print(f"\n{'res':>4} {'backend':<10} {'prec':<5} {'Gmain':>9} {'Dmain':>9} {'Dreg':>9} "
          f"{'step ms':>9} {'img/s':>7} {'x ref':>6} {'peak GB':>8}")  # fmt: skip
    for r in rows:
        ph = r["phases_ms"]
        print(f"{r['resolution']:>4} {r['backend']:<10} {r['precision']:<5} {ph['Gmain']:>9.1f} "
              f"{ph['Dmain']:>9.1f} {ph['Dreg']:>9.1f} {r['step_ms']:>9.1f} {r['img_per_s']:>7.2f} "
              f"{r['speedup_vs_reference']:>6.2f} {r['peak_mem_gb']:>8.2f}")  # fmt: skip
    chart = [
        dict(config=f"{r['resolution']} px, batch {args.batch}", impl=f"{r['backend']} {r['precision']}",
             median_ms=r["step_ms"], speedup_vs_reference=r["speedup_vs_reference"])
        for r in rows
    ]  # fmt: skip
    draw_chart(chart, out / f"train_{tag}.png", f"MAT training step ({results.meta['device']})",
               speedup_key="speedup_vs_reference", baseline="reference fp32")  # fmt: skip
    print(f"\nwrote {out / f'train_{tag}.json'} and {out / f'train_{tag}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
