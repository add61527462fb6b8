"""Time per training step of MAT: each phase of upstream's loop, per backend and precision.

    python benchmarks/train.py                                  # CPU: 256, batch 1, fp32
    python benchmarks/train.py --resolutions 256,512 --batch 8 --precisions fp32,bf16  # GPU

For every resolution, backend (the 'reference' path first: plain PyTorch ops, upstream's
eager arithmetic) and precision it times the phases of one training step as
``mat-fast train`` runs them (loss, backward and Adam step): Gmain, Dmain and Dreg (R1; run
every 16 steps, so amortised as Dreg / 16), and reports the step time
``Gmain + Dmain + Dreg / 16``, images per second (``batch / step``), the speed-up over the
reference fp32 step of the same resolution, and the peak memory. The perceptual loss uses a
random VGG19 (the same work as the real one). On a CPU the rows of a resolution are timed
together, their phases in turn, so that the machine's drift spreads over all of them; on a
GPU one row at a time. Output: a table, ``<out>/train_<device>.json`` and
``<out>/train_<device>.png``.
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
from mat_fast.training.config import TrainOptions

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


def bench(args, resolution, combos, data, device) -> list:
    """One row per (backend, precision) of ``combos``. On a CPU they are all timed together,
    phase by phase in turn (time_group's round robin): a shared CPU's speed drifts by 15% or
    more between rows timed minutes apart, which made their ratios unsteady. On a GPU each
    is timed on its own, so that each row has its own peak memory."""
    rows = []
    for group in [combos] if device.type == "cpu" else [[combo] for combo in combos]:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fns = {}
        for name, precision in group:
            for phase, fn in trainer_phases(
                args, resolution, name, precision, data, device
            ).items():
                fns[f"{name} {precision} {phase}"] = fn
        stats = time_group(fns, device, args.budget_s)
        for name, precision in group:
            ms = {phase: stats[f"{name} {precision} {phase}"]["median_ms"] for phase in PHASES}
            step = ms["Gmain"] + ms["Dmain"] + ms["Dreg"] / 16
            rows.append(
                dict(
                    resolution=resolution,
                    backend=trainer_backend(name, device),
                    precision=precision,
                    phases_ms=ms,
                    step_ms=step,
                    img_per_s=args.batch / step * 1e3,
                    peak_mem_gb=_peak_gb(device),
                )  # fmt: skip
            )
        del fns  # the group's trainers
    return rows


def trainer_backend(name: str, device) -> str:
    return backend.resolve(device, name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resolutions", default="256", help="comma-separated (256,512)")
    p.add_argument("--batch", type=int, default=None, help="per step (default: GPU 8, CPU 1)")
    p.add_argument("--backends", default=None, help="comma-separated (default: all available)")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--budget-s", type=float, default=10.0, help="timing budget per phase")
    p.add_argument(
        "--arch", default="mat", choices=["mat", "tiny"], help="tiny: smoke-test the script"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    add_malloc_option(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.batch = args.batch or (8 if device.type == "cuda" else 1)
    malloc = apply_malloc(device, args.malloc)
    available = [n for n, why in backend.available_backends(device).items() if why is None]
    names = args.backends.split(",") if args.backends else available
    names = ["reference"] + [n for n in names if n != "reference"]
    out = Path(args.out)
    tag = "cuda" if device.type == "cuda" else "cpu"
    precisions = sorted(args.precisions.split(","), key=lambda p: p != "fp32")  # fp32 first
    results = ResultsFile(
        out / f"train_{tag}.json", "train", device, batch=args.batch, arch=args.arch,
        malloc=malloc, note="step = Gmain + Dmain + Dreg/16 (loss, backward, Adam step); "
        "reference = plain PyTorch ops in fp32; peak = the process's so far on CPU",
    )  # fmt: skip
    with results:
        for resolution in (int(r) for r in args.resolutions.split(",")):
            with tempfile.TemporaryDirectory() as data:
                _images(Path(data), resolution, 2)
                combos = [(name, precision) for name in names for precision in precisions]
                rows = bench(args, resolution, combos, data, device)
                base = next(
                    (r for r in rows if r["backend"] == "reference" and r["precision"] == "fp32"),
                    None,
                )
                for row in rows:
                    row["speedup_vs_reference"] = (base or row)["step_ms"] / row["step_ms"]
                    results.add(row)
                    print(json.dumps(row), flush=True)
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
