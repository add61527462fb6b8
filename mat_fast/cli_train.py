"""``mat-fast train``: train or fine-tune MAT (``torchrun --nproc_per_node N -m mat_fast
train ...`` for several processes). The options follow upstream's train.py."""

from __future__ import annotations

import os

from .training.config import ARCHS, CFG_SPECS, PRECISIONS


def add_subcommands(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train or fine-tune MAT on a folder or zip of images (upstream's loop)",
        description="Train MAT with upstream's objective and loop. Several processes: "
        "torchrun --nproc_per_node N -m mat_fast train ... (NCCL on GPUs, gloo on CPU).",
    )
    t.add_argument("--data", required=True, help="folder (searched recursively) or .zip of images")
    t.add_argument("--outdir", required=True, help="run folder: snapshots, stats.jsonl, PNG grids")
    t.add_argument("--cfg", default="auto", choices=sorted(CFG_SPECS), help="base config")
    t.add_argument(
        "--resolution", type=int, help="training resolution (default: the cfg's; auto 512)"
    )
    t.add_argument("--kimg", type=float, help="length in thousands of real images (cfg default)")
    t.add_argument("--batch", type=int, help="total batch over all processes (cfg default)")
    t.add_argument(
        "--batch-gpu",
        type=int,
        help="samples per process per round (default batch/processes, places*: 8)",
    )
    t.add_argument("--gamma", type=float, help="R1 weight (cfg default)")
    t.add_argument("--pr", type=float, help="perceptual loss ratio (default 1)")
    t.add_argument("--lr", type=float, help="learning rate (cfg default)")
    t.add_argument("--lrt", type=float, help="learning rate of G's transformer (default: --lr)")
    t.add_argument("--ema", type=float, help="G_ema half-life in kimg (cfg default)")
    t.add_argument("--mirror", action="store_true", help="add x-flipped copies of the images")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--snap", type=int, default=50, help="ticks between snapshots (default 50)")
    t.add_argument("--tick", type=float, default=4.0, help="kimg per tick (default 4)")
    t.add_argument(
        "--workers", type=int, default=min(3, os.cpu_count() or 1), help="DataLoader workers"
    )
    t.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="fp32 (default, upstream's numbers), bf16 autocast or fp16 autocast with a gradient scaler",
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)")
    t.add_argument(
        "--backend", default=None, help="op backend (default: $MAT_FAST_BACKEND or auto)"
    )
    t.add_argument(
        "--resume", help="continue a run exactly: its output folder or a snapshot-* folder"
    )
    t.add_argument(
        "--finetune",
        help="start from weights: an upstream .pkl (G, D, G_ema) or a snapshot-* folder",
    )
    t.add_argument(
        "--vgg",
        default="download",
        help="perceptual-loss VGG19: 'download' (torchvision's, cached), a path, or 'random' (smoke tests only)",
    )
    t.add_argument(
        "--mask-setting",
        default="large",
        choices=["large", "small", "mix"],
        help="free-form masks (upstream trains with large)",
    )
    t.add_argument(
        "--grid", type=int, default=8, help="validation images in the PNG grids (0: none)"
    )
    t.add_argument("--data-val", help="images for the grids (default: --data)")
    t.add_argument(
        "--arch",
        default="mat",
        choices=ARCHS,
        help="tiny: a few-thousand-parameter stand-in for smoke tests",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=cmd_train)  # fmt: skip


def cmd_train(args) -> int:
    from .training.config import TrainOptions
    from .training.loop import run_training

    options = TrainOptions(
        data=args.data, outdir=args.outdir, cfg=args.cfg, resolution=args.resolution,
        kimg=args.kimg, batch=args.batch, batch_gpu=args.batch_gpu, gamma=args.gamma,
        pr=args.pr, lr=args.lr, lrt=args.lrt, ema=args.ema, mirror=args.mirror, seed=args.seed,
        snap=args.snap, tick=args.tick, workers=args.workers, precision=args.precision,
        device=args.device, backend=args.backend, arch=args.arch,
        vgg=None if args.vgg == "random" else args.vgg, mask_setting=args.mask_setting,
        resume=args.resume, finetune=args.finetune, grid=args.grid, data_val=args.data_val,
        progress=not args.no_progress,
    )  # fmt: skip
    if args.snap < 1:
        raise ValueError("--snap must be at least 1")
    last = run_training(options)
    if last:
        print(f"wrote {last} (G_ema.safetensors loads with mat-fast inpaint --checkpoint)")
    return 0
