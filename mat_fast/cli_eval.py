"""``mat-fast masks`` and ``mat-fast evaluate``: the evaluation side of the CLI.

``add_subcommands(sub)`` adds both subparsers; each sets ``run`` to its function, which
``mat_fast.cli.main`` calls. ``evaluate`` runs alone or under torchrun (``torch.distributed``
with gloo: only CPU objects are exchanged), each rank on its own shard and device.
"""

from __future__ import annotations

import json
import os
import sys

from .distributed import agree, finish, gather, init, rank_device
from .metrics.deps import MissingExtraError, require
from .metrics.weights import WeightsError


def add_subcommands(sub) -> None:
    m = sub.add_parser(
        "masks", help="write a fixed, reproducible evaluation mask set (the paper's generator)"
    )
    m.add_argument("--out-dir", required=True, help="folder for mask_000000.png, ...")
    m.add_argument("--count", type=int, required=True, help="number of masks")
    m.add_argument("--resolution", type=int, default=512, help="side in pixels (default 512)")
    m.add_argument("--setting", default="large", choices=["large", "small"])
    m.add_argument("--seed", type=int, default=0, help="set seed (mask i uses seed and i)")
    m.add_argument(
        "--hole-range",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="keep masks whose hole ratio is strictly inside (LO, HI) (default 0 1)",
    )
    m.add_argument(
        "--mask-convention",
        default="keep",
        choices=["keep", "fill"],
        help="keep: white = known, black = hole (upstream's files; default); fill: white = hole",
    )
    m.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    m.set_defaults(run=cmd_masks)

    e = sub.add_parser("evaluate", help="FID, P-IDS, U-IDS, LPIPS, PSNR, SSIM, L1 of fills")
    e.add_argument("fake_dir", help="folder of fills (inpainted results)")
    e.add_argument("real_dir", help="folder of ground truths, named like the fills")
    e.add_argument("--metrics", default="fid,pids,uids,lpips,psnr,ssim,l1")
    e.add_argument("--detector", help="local inception-2015-12-05.pt (offline machines)")
    e.add_argument("--alexnet", help="local alexnet-owt-7be5be79.pth (LPIPS trunk)")
    e.add_argument("--lpips-weights", help="local lpips v0.1 alex.pth (LPIPS linear layers)")
    e.add_argument("--batch-size", type=int, default=16, help="images per device batch")
    e.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoders")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--json", help="write the report (and per-image scores) here")
    e.add_argument("--sheet", help="write a contact sheet PNG of a sample of pairs")
    e.add_argument("--sheet-count", type=int, default=8, help="pairs on the sheet")
    e.add_argument("--masks", help="mask folder, to show the input and mask on the sheet")
    e.add_argument(
        "--mask-convention",
        default="keep",
        choices=["keep", "fill"],
        help="of --masks: keep = black is the hole (upstream's, default); fill = white is",
    )
    e.set_defaults(run=cmd_evaluate)


def cmd_masks(args) -> int:
    from tqdm import tqdm

    from .mask_set import write_mask_set

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    with tqdm(total=args.count, unit="mask", file=sys.stderr, disable=None) as progress:
        write_mask_set(
            args.out_dir,
            args.count,
            resolution=args.resolution,
            setting=args.setting,
            seed=args.seed,
            hole_range=args.hole_range,
            convention=args.mask_convention,
            workers=args.workers,
            progress=progress,
        )
    meaning = "black = hole" if args.mask_convention == "keep" else "white = hole"
    print(
        f"wrote {args.count} masks to {args.out_dir} ({meaning}: "
        f"mat-fast inpaint --mask-convention {args.mask_convention})"
    )
    return 0


# ---------------------------------------------------------------------------------------
# evaluate


def _load_in_turn(load, local_rank: int, world: int):
    """Each machine's first rank first (it may download into the cache), then the others
    from the cache; a failure anywhere stops every rank."""
    result, error = None, None
    for first_turn in (True, False):
        if (local_rank == 0) == first_turn:
            try:
                result = load(download=first_turn)
            except (WeightsError, OSError, ValueError) as err:
                error = str(err)
        agree(world, error)
    return result


def _check_outputs(args) -> None:
    for path, flag in ((args.json, "--json"),):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"folder for {flag} does not exist: {path}")
    if args.sheet:
        from .metrics.sheet import check_sheet_path

        check_sheet_path(args.sheet)
    if args.masks and not args.sheet:
        raise ValueError("--masks only serves the contact sheet: add --sheet PNG or drop it")
    if args.batch_size < 1 or args.workers < 0 or args.sheet_count < 1:
        raise ValueError("--batch-size and --sheet-count must be >= 1, --workers >= 0")


def _write_json(path: str, payload: dict) -> None:
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cmd_evaluate(args) -> int:
    try:
        return _evaluate(args)
    except MissingExtraError as err:
        raise ValueError(str(err)) from None
    finally:
        finish()


def _evaluate(args) -> int:
    from tqdm import tqdm

    from .metrics import evaluate as ev
    from .metrics.detector import load_inception_detector
    from .metrics.lpips import load_lpips

    metrics = ev.parse_metrics(args.metrics)
    _check_outputs(args)
    if "fid" in metrics:
        require("scipy.linalg", "FID")
    if "pids" in metrics or "uids" in metrics:
        require("sklearn.svm", "P-IDS/U-IDS")
    rank, world, local_rank = init()
    device = rank_device(args.device, local_rank)
    pairs = ev.pair_folders(args.fake_dir, args.real_dir)
    masks = None
    if args.sheet and args.masks:
        from .metrics.sheet import pair_masks

        masks = pair_masks(pairs, args.masks)
    detector = lpips_model = None
    if any(m in ev.FEATURE_METRICS for m in metrics):
        detector = _load_in_turn(
            lambda download: load_inception_detector(
                args.detector, device=device, download=download
            ),
            local_rank,
            world,
        )
    if "lpips" in metrics:
        lpips_model = _load_in_turn(
            lambda download: load_lpips(
                args.alexnet, args.lpips_weights, device=device, download=download
            ),
            local_rank,
            world,
        )
    mine = ev.shard(pairs, rank, world)
    results, error = None, None
    with tqdm(
        total=len(mine), unit="pair", file=sys.stderr, disable=True if rank else None
    ) as progress:
        try:
            results = ev.compute_shard(
                mine,
                metrics,
                detector=detector,
                lpips_model=lpips_model,
                device=device,
                batch_size=args.batch_size,
                workers=args.workers,
                progress=progress,
            )
        except (ValueError, OSError, RuntimeError) as err:
            error = f"rank {rank}: {err}" if world > 1 else str(err)
    agree(world, error)
    if world > 1:
        gathered = gather(results, rank, world)
        if rank != 0:
            return 0
        results = ev.merge_shards(gathered, len(pairs))
    report = ev.summarize(results, metrics)
    print(ev.format_table(report, len(pairs)))
    per_pair = [m for m in metrics if m not in ev.FEATURE_METRICS]
    if args.json:
        payload = {
            "metrics": ev.json_ready(report),
            "pairs": len(pairs),
            "fake_dir": os.path.abspath(args.fake_dir),
            "real_dir": os.path.abspath(args.real_dir),
            "ranks": world,
            "per_image": {
                pair.name: ev.json_ready({m: float(results[m][i]) for m in per_pair})
                for i, pair in enumerate(pairs)
            },
        }
        _write_json(args.json, payload)
    if args.sheet:
        from .image_io import save_image
        from .metrics.sheet import contact_sheet, sample_positions

        sheet = contact_sheet(
            pairs,
            sample_positions(len(pairs), args.sheet_count),
            masks=masks,
            convention=args.mask_convention,
            scores={m: results[m] for m in per_pair},
        )
        save_image(sheet, args.sheet)
    return 0
