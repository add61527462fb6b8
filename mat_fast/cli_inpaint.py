"""``mat-fast inpaint``: one image or a folder of images.

Everything a user can get wrong is checked before the network is built and before anything
is written: option values and combinations, inputs (readable, sizes), and destinations
(never an input, always writable). Results are written atomically (the image and its
comparison together), so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import List, Tuple

from .cli_common import DTYPES, WEIGHTS_HELP, CliError, non_negative_int, positive_int
from .destinations import check_destination
from .image_io import (
    load_image,
    mask_size_error,
    output_extension_error,
    output_metadata,
    storage_warnings,
    write_images,
)

log = logging.getLogger("mat_fast")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _seed(text: str) -> int:
    value = int(text)  # argparse reports a ValueError as "invalid _seed value"
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed {text} is out of range; use 0 to 2**63 - 1")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in (0, 1], such as 0.5")
    return value


def _memory(text: str) -> int:
    from .memory import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"quality {text} is not in 1..100")
    return value


_seed.__name__, _finite.__name__, _fraction.__name__ = "seed", "number", "fraction"
_memory.__name__, _quality.__name__ = "memory size", "quality"


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="fill the white region of MASK in IMAGE")
    p.set_defaults(run=cmd_inpaint)
    p.add_argument("image", nargs="?", help="input image file")
    p.add_argument(
        "mask", nargs="?", help="mask file, same size; white = fill (see --mask-convention)"
    )
    p.add_argument("-o", "--output", help="output file, or an existing folder")
    p.add_argument("--input-dir", help="folder of images (folder mode)")
    p.add_argument("--mask-dir", help="folder of masks, matched to images by file name")
    p.add_argument("--out-dir", help="folder for the results (created if missing)")
    p.add_argument(
        "--checkpoint",
        help="weights: upstream .pkl, .pth state dict or .safetensors "
        "(default: $MAT_FAST_CHECKPOINT)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="use a seeded random network (smoke tests; fills are noise)",
    )
    p.add_argument(
        "--random-resolution",
        type=int,
        choices=[128, 256, 512],
        help="network size for --random-weights (default 512; 256 is 4x cheaper, 128 the "
        "smallest, for tests)",
    )
    p.add_argument(
        "--comparison",
        help="also save a side-by-side picture: input with the hole marked | result "
        "(single-image mode)",
    )
    p.add_argument("--seed", type=_seed, default=240, help="random seed (default: 240, upstream's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute precision")
    p.add_argument("--backend", help="op backend (default: $MAT_FAST_BACKEND or auto)")
    p.add_argument("--noise-mode", default="auto", choices=["auto", "random", "const", "none"])
    p.add_argument("--truncation", type=_finite, default=1.0, help="truncation psi (1 = off)")
    p.add_argument(
        "--mask-convention",
        default="fill",
        choices=["fill", "keep"],
        help="fill: white = region to fill (default); keep: black = hole (upstream)",
    )
    p.add_argument(
        "--mask-threshold",
        type=_fraction,
        default=0.5,
        help="a mask pixel is white from this fraction of the full range (default 0.5)",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "full", "crop", "resize"],
        help="full: pad the whole image; crop: each hole region with context; resize: like "
        "crop, regions above --resize-limit inpainted scaled down; auto: what fits in memory",
    )
    p.add_argument(
        "--resize-limit",
        type=positive_int,
        help="longest side of a region inpainted by the resize strategy (default 2048)",
    )
    p.add_argument(
        "--max-memory",
        type=_memory,
        help="memory a call may use, e.g. 8G (default: what is available on the device)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        help="largest image accepted, in pixels (default: Pillow's decompression-bomb "
        "limit, about 89 Mpx)",
    )
    p.add_argument(
        "--quality",
        type=_quality,
        help="JPEG/WebP quality 1-100 (default: JPEG 95 without chroma subsampling, WebP lossless)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="folder mode: images of one size per Inpainter call (equal canvases share a "
        "forward; default 4)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        help="folder mode: processes that decode and prepare images, and writing threads "
        "(default: 1 on a CPU device, whose forward uses every core; up to 4 on a GPU; 0 = "
        "all in the main process)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="folder mode: keep outputs that exist (resume an interrupted run)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="folder mode: stop at the first bad pair (default: report it, do the rest)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="capture the forward as a CUDA graph per canvas size (CUDA only)",
    )


# ----------------------------------------------------------------------------------------
def _check_options(args) -> None:
    """Option values and combinations; the device. Nothing is loaded yet."""
    from .devices import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        raise CliError(f"--device {args.device}: {err}") from None
    if args.random_weights and args.checkpoint:
        raise CliError("--checkpoint and --random-weights exclude each other; pass one")
    if args.random_resolution and not args.random_weights:
        raise CliError(
            "--random-resolution applies to --random-weights only (a checkpoint has its own)"
        )
    if args.cuda_graphs and device.type != "cuda":
        raise CliError(f"--cuda-graphs needs a CUDA device; this run uses {device}")
    if args.dtype in ("float16", "fp16") and device.type == "cpu":
        log.warning(
            "mat-fast: --dtype %s on the CPU is about 10x slower than float32; "
            "use --dtype bf16 for a faster half precision there",
            args.dtype,
        )
    if args.resize_limit is not None and args.strategy in ("full", "crop"):
        log.warning("mat-fast: --resize-limit has no effect with --strategy %s", args.strategy)
    if not args.random_weights and not args.checkpoint:
        args.checkpoint = os.environ.get("MAT_FAST_CHECKPOINT")
        if not args.checkpoint:
            raise CliError(WEIGHTS_HELP)


def _make_inpainter(args):
    from .inpaint import Inpainter

    common = dict(
        device=args.device,
        dtype=DTYPES[args.dtype],
        batch_size=args.batch_size,
        cuda_graphs=args.cuda_graphs,
        max_memory=args.max_memory,
    )
    if args.random_weights:
        return Inpainter.random(args.seed, resolution=args.random_resolution or 512, **common)
    return Inpainter.from_checkpoint(args.checkpoint, **common)


def _pair_folders(input_dir: str, mask_dir: str) -> List[Tuple[str, str]]:
    """Pair images with masks by file stem; if no stem matches and the counts agree, pair
    in sorted order (upstream's test sets name masks mask1.png for test1.png)."""
    for folder, what in ((input_dir, "--input-dir"), (mask_dir, "--mask-dir")):
        if not os.path.isdir(folder):
            raise CliError(f"{what} {folder} is not a folder")

    def listing(folder):
        return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))

    if os.path.samefile(input_dir, mask_dir):
        raise CliError(
            f"--input-dir and --mask-dir are the same folder ({input_dir}); keep "
            f"the masks in a folder of their own"
        )
    images, masks = listing(input_dir), listing(mask_dir)
    if not images:
        raise CliError(f"no images ({', '.join(IMAGE_EXTS)}) in {input_dir}")
    for names, folder in ((images, input_dir), (masks, mask_dir)):
        # photo.jpg and photo.png would both be written to photo.png (or match one mask)
        by_stem: dict = {}
        for name in names:
            by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
        clashes = [" and ".join(group) for group in by_stem.values() if len(group) > 1]
        if clashes:
            raise CliError(
                f"files in {folder} share a name apart from the extension: "
                f"{'; '.join(clashes[:5])}; rename them"
            )
    mask_by_stem = {os.path.splitext(m)[0]: m for m in masks}
    stems = [os.path.splitext(i)[0] for i in images]
    if any(s in mask_by_stem for s in stems):
        missing = [i for i, s in zip(images, stems) if s not in mask_by_stem]
        if missing:
            raise CliError(
                f"no mask with the same name in {mask_dir} for: {', '.join(missing[:10])}"
            )
        return [
            (os.path.join(input_dir, i), os.path.join(mask_dir, mask_by_stem[s]))
            for i, s in zip(images, stems)
        ]
    if len(images) != len(masks):
        raise CliError(
            f"{len(images)} images but {len(masks)} masks and no file names in common; "
            f"name each mask like its image (photo.png -> masks/photo.png)"
        )
    log.warning("mat-fast: masks paired with images in sorted order")
    return [(os.path.join(input_dir, i), os.path.join(mask_dir, m)) for i, m in zip(images, masks)]


def _load_pair(image_path: str, mask_path: str, max_pixels=None):
    image = load_image(image_path, max_pixels, full_depth=True)  # 16-bit RGB kept
    mask = load_image(mask_path, max_pixels)
    if image.size != mask.size:
        raise CliError(mask_size_error(image_path, image.size, mask_path, mask.size))
    return image, mask


def _comparison(image, mask, result, convention: str, threshold: float):
    """Input with the hole tinted red | result, side by side (for people who would rather look)."""
    import numpy as np
    from PIL import Image

    from .image_io import eight_bit_rgb, to_hole_mask

    hole = to_hole_mask(mask, (image.size[1], image.size[0]), convention, threshold)
    left = np.asarray(eight_bit_rgb(image)).astype(np.float32)
    left[hole] = 0.45 * left[hole] + 0.55 * np.array([230, 40, 40], dtype=np.float32)
    canvas = Image.new("RGB", (image.size[0] * 2 + 8, image.size[1]), (255, 255, 255))
    canvas.paste(Image.fromarray(left.astype(np.uint8)), (0, 0))
    canvas.paste(eight_bit_rgb(result), (image.size[0] + 8, 0))
    return canvas


def _single_destinations(args) -> str:
    """The output path of single-image mode, checked with the comparison's."""
    if not (args.image and args.mask and args.output):
        raise CliError(
            "usage: mat-fast inpaint IMAGE MASK -o OUT (or --input-dir/--mask-dir/--out-dir)"
        )
    out = args.output
    if os.path.isdir(out):
        out = os.path.join(out, os.path.splitext(os.path.basename(args.image))[0] + ".png")
    elif out.endswith((os.sep, "/")):
        raise CliError(f"output folder does not exist: {out}; create it first")
    inputs = [(args.image, "the input image"), (args.mask, "the mask")]
    for path, what in ((out, "-o"), (args.comparison, "--comparison")):
        if path:
            error = output_extension_error(path)
            if error:
                raise CliError(error)
            check_destination(path, what, inputs)
    if args.comparison:
        check_destination(args.comparison, "--comparison", [(out, "the output (-o)")])
    return out


def _folder_destinations(args, pairs) -> List[str]:
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise CliError(f"--out-dir {args.out_dir} exists and is not a folder")
    for folder, what in ((args.input_dir, "--input-dir"), (args.mask_dir, "--mask-dir")):
        if os.path.isdir(args.out_dir) and os.path.samefile(args.out_dir, folder):
            raise CliError(
                f"--out-dir is the same folder as {what} ({folder}); results "
                f"would overwrite the inputs: choose another folder"
            )
    # the nearest existing folder must let us create --out-dir and write into it
    existing = os.path.abspath(args.out_dir)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    check_destination(os.path.join(existing, "probe.png"), "--out-dir")
    return [
        os.path.join(args.out_dir, os.path.splitext(os.path.basename(i))[0] + ".png")
        for i, _ in pairs
    ]


def _options(args) -> dict:
    """The Inpainter's keyword arguments besides the seed."""
    options = dict(
        truncation_psi=args.truncation,
        noise_mode=args.noise_mode,
        mask_convention=args.mask_convention,
        mask_threshold=args.mask_threshold,
        strategy=args.strategy,
    )
    if args.resize_limit is not None:
        options["resize_limit"] = args.resize_limit
    return options


def cmd_inpaint(args) -> int:
    folder_mode = any((args.input_dir, args.mask_dir, args.out_dir))
    if folder_mode:
        return _cmd_folder(args)
    if args.workers is not None or args.skip_existing or args.strict:
        raise CliError("--workers, --skip-existing and --strict are folder-mode options")
    _check_options(args)
    out = _single_destinations(args)
    image, mask = _load_pair(args.image, args.mask, args.max_pixels)  # before any work
    inpainter = _make_inpainter(args)
    result = inpainter(image, mask, seed=args.seed, **_options(args))
    metadata = output_metadata(image)
    for warning in storage_warnings(result, out, metadata):
        log.warning("mat-fast: %s", warning)
    items = [(result, out, metadata)]
    if args.comparison:
        comparison = _comparison(image, mask, result, args.mask_convention, args.mask_threshold)
        items.append((comparison, args.comparison, {}))
    write_images(items, quality=args.quality)
    print(f"wrote {out}" + (f" and {args.comparison}" if args.comparison else ""))
    return 0


def _cmd_folder(args) -> int:
    """Folder mode, alone or as one rank of torchrun (see mat_fast.folder_inference)."""
    from . import distributed
    from .folder_inference import FolderPair, Summary, print_summary, run_folder

    if (
        not (args.input_dir and args.mask_dir and args.out_dir)
        or args.image
        or args.mask
        or args.comparison
        or args.output
    ):
        raise CliError(
            "folder mode needs --input-dir, --mask-dir and --out-dir "
            "(and no IMAGE MASK, -o or --comparison)"
        )
    rank, world, local_rank = distributed.init()
    try:
        if world > 1:  # one device per rank
            try:
                args.device = str(distributed.rank_device(args.device, local_rank))
            except ValueError as err:
                raise CliError(str(err)) from None
        _check_options(args)
        if args.cuda_graphs:  # a captured graph replays its own random draws
            raise CliError("--cuda-graphs does not work in folder mode (per-image seeds)")
        pairs = _pair_folders(args.input_dir, args.mask_dir)
        outputs = _folder_destinations(args, pairs)
        everything = [
            FolderPair(image, mask, out, os.path.relpath(image, args.input_dir))
            for (image, mask), out in zip(pairs, outputs)
        ]
        mine = distributed.shard(everything, rank, world)
        summary, error = Summary(), None
        try:
            inpainter = _make_inpainter(args)
            os.makedirs(args.out_dir, exist_ok=True)
            from tqdm import tqdm

            workers = args.workers
            if workers is None:
                # A CPU forward uses every core: more decoding processes only take cores
                # from it (measured on 2 cores: 0.86-0.96x the bare forward's img/s with 2,
                # 0.98x with 1; benchmarks/results/README.md).
                workers = 1 if inpainter.device.type == "cpu" else min(4, os.cpu_count() or 1)
            with tqdm(
                total=len(mine),
                unit="image",
                file=sys.stderr,
                disable=True if rank else None,
                desc=f"rank 0 of {world}" if world > 1 else None,
            ) as progress:
                summary = run_folder(
                    inpainter,
                    mine,
                    seed=args.seed,
                    options=_options(args),
                    batch_size=args.batch_size,
                    workers=workers,
                    strict=args.strict,
                    skip_existing=args.skip_existing,
                    max_pixels=args.max_pixels,
                    quality=args.quality,
                    progress=progress,
                )
        except (CliError, ValueError, OSError, RuntimeError) as err:
            if world == 1:
                raise
            error = f"rank {rank}: {err}"
        distributed.agree(world, error)
        total = Summary()
        for part in distributed.gather(summary, rank, world, everyone=True):
            total.merge(part)
        if rank == 0:
            print_summary(total, len(everything), args.out_dir, world)
        return 1 if total.failures else 0
    finally:
        distributed.finish()
