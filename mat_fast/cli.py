"""``mat-fast`` command line: inpaint files or folders, convert checkpoints, show the setup.

Errors a user can cause print one line saying what is wrong and how to fix it (no
traceback) and exit with status 2; outputs are written atomically, after all inputs have
been checked, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from .backend import BackendUnavailableError, available_backends, get_backend, resolve
from .image_io import InputError, load_image, output_extension_error, save_image
from .serve import add_serve_parser, cmd_serve
from .version import __version__

WEIGHTS_HELP = (
    "no checkpoint given. MAT's weights are not shipped (CC BY-NC): download upstream's "
    "Places_512_FullData.pkl or CelebA-HQ_512.pkl (links in the README of github.com/"
    "fenglinglwb/MAT) or IOPaint's converted Places_512_FullData_G.pth, then pass "
    "--checkpoint PATH (or set MAT_FAST_CHECKPOINT). To try the pipeline without weights, "
    "use --random-weights."
)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mat-fast", description="Fast MAT inpainting.")
    parser.add_argument("--version", action="version", version=f"mat_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inpaint", help="fill the white (nonzero) region of MASK in IMAGE")
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
        default=os.environ.get("MAT_FAST_CHECKPOINT"),
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
        default=512,
        choices=[256, 512],
        help="network size for --random-weights (256 is 4x cheaper; tests use it)",
    )
    p.add_argument(
        "--comparison",
        help="also save a side-by-side picture: input with the "
        "hole marked | result (single-image mode)",
    )
    p.add_argument("--seed", type=int, default=240, help="random seed (default: 240, upstream's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="compute precision")
    p.add_argument(
        "--backend", default=None, help="op backend (default: $MAT_FAST_BACKEND or auto)"
    )
    p.add_argument("--noise-mode", default="auto", choices=["auto", "random", "const", "none"])
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1 = off)")
    p.add_argument(
        "--mask-convention",
        default="fill",
        choices=["fill", "keep"],
        help="fill: white = region to fill (default); keep: black = hole (upstream)",
    )
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "full", "crop"],
        help="full: pad whole image; crop: each hole region with context",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="capture the forward as a CUDA graph per canvas size (CUDA only; faster for many same-size images)",
    )

    c = sub.add_parser("convert", help="convert a checkpoint to .safetensors or .pth")
    c.add_argument("src", help="upstream .pkl, .pth/.pt or .safetensors")
    c.add_argument("dst", help="output path ending in .safetensors, .pth or .pt")

    sub.add_parser("info", help="versions, devices and backends (and why any cannot run)")
    from .cli_eval import add_subcommands as add_eval_subcommands

    add_eval_subcommands(sub)  # masks, evaluate: each sets args.run
    from .cli_train import add_subcommands as add_train_subcommands

    add_train_subcommands(sub)  # train
    add_serve_parser(sub)
    return parser


def _dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def _make_inpainter(args):
    from .inpaint import Inpainter

    if args.random_weights:
        return Inpainter.random(
            args.seed,
            resolution=args.random_resolution,
            device=args.device,
            dtype=_dtype(args.dtype),
            batch_size=args.batch_size,
            cuda_graphs=args.cuda_graphs,
        )
    if not args.checkpoint:
        raise CliError(WEIGHTS_HELP)
    return Inpainter.from_checkpoint(
        args.checkpoint,
        device=args.device,
        dtype=_dtype(args.dtype),
        batch_size=args.batch_size,
        cuda_graphs=args.cuda_graphs,
    )


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
    logging.getLogger("mat_fast").warning("mat-fast: masks paired with images in sorted order")
    return [(os.path.join(input_dir, i), os.path.join(mask_dir, m)) for i, m in zip(images, masks)]


def _load_pair(image_path: str, mask_path: str):
    image, mask = load_image(image_path), load_image(mask_path)
    if image.size != mask.size:
        raise CliError(
            f"{mask_path} is {mask.size[0]}x{mask.size[1]} but {image_path} is "
            f"{image.size[0]}x{image.size[1]}; a mask must have its image's size"
        )
    return image, mask


def _comparison(image, mask, result, convention: str):
    """Input with the hole tinted red | result, side by side (for people who would rather look)."""
    import numpy as np
    from PIL import Image

    from .image_io import eight_bit_rgb, to_hole_mask

    hole = to_hole_mask(mask, (image.size[1], image.size[0]), convention)
    left = np.asarray(eight_bit_rgb(image)).astype(np.float32)
    left[hole] = 0.45 * left[hole] + 0.55 * np.array([230, 40, 40], dtype=np.float32)
    canvas = Image.new("RGB", (image.size[0] * 2 + 8, image.size[1]), (255, 255, 255))
    canvas.paste(Image.fromarray(left.astype(np.uint8)), (0, 0))
    canvas.paste(eight_bit_rgb(result), (image.size[0] + 8, 0))
    return canvas


def _inpaint_kwargs(args) -> dict:
    return dict(
        seed=args.seed,
        truncation_psi=args.truncation,
        noise_mode=args.noise_mode,
        mask_convention=args.mask_convention,
        strategy=args.strategy,
    )


def cmd_inpaint(args) -> int:
    folder_mode = any((args.input_dir, args.mask_dir, args.out_dir))
    if folder_mode:
        if (
            not (args.input_dir and args.mask_dir and args.out_dir)
            or args.image
            or args.mask
            or args.comparison
        ):
            raise CliError(
                "folder mode needs --input-dir, --mask-dir and --out-dir "
                "(and no IMAGE MASK or --comparison)"
            )
        pairs = _pair_folders(args.input_dir, args.mask_dir)
        if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
            raise CliError(f"--out-dir {args.out_dir} exists and is not a folder")
        for folder, what in ((args.input_dir, "--input-dir"), (args.mask_dir, "--mask-dir")):
            if os.path.isdir(args.out_dir) and os.path.samefile(args.out_dir, folder):
                raise CliError(
                    f"--out-dir is the same folder as {what} ({folder}); results "
                    f"would overwrite the inputs: choose another folder"
                )
        outputs = [
            os.path.join(args.out_dir, os.path.splitext(os.path.basename(i))[0] + ".png")
            for i, _ in pairs
        ]
        for image_path, mask_path in pairs:  # check everything before writing anything
            _load_pair(image_path, mask_path)
    else:
        if not (args.image and args.mask and args.output):
            raise CliError(
                "usage: mat-fast inpaint IMAGE MASK -o OUT (or --input-dir/--mask-dir/--out-dir)"
            )
        out = args.output
        if os.path.isdir(out):
            out = os.path.join(out, os.path.splitext(os.path.basename(args.image))[0] + ".png")
        elif out.endswith((os.sep, "/")):
            raise CliError(f"output folder does not exist: {out}")
        for path in (out, args.comparison):  # before any work: a bad name would lose it
            error = path and output_extension_error(path)
            if error:
                raise CliError(error)
        _load_pair(args.image, args.mask)
        pairs, outputs = [(args.image, args.mask)], [out]
        if args.comparison and not os.path.isdir(os.path.dirname(os.path.abspath(args.comparison))):
            raise CliError(f"folder for --comparison does not exist: {args.comparison}")
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise CliError(f"output folder does not exist: {os.path.dirname(os.path.abspath(out))}")

    inpainter = _make_inpainter(args)
    if folder_mode:
        os.makedirs(args.out_dir, exist_ok=True)
    from tqdm import tqdm

    progress = tqdm(
        total=len(pairs), unit="image", disable=len(pairs) == 1 or None, file=sys.stderr
    )
    for start in range(0, len(pairs), args.batch_size):
        chunk = pairs[start : start + args.batch_size]
        loaded = [_load_pair(i, m) for i, m in chunk]
        results = inpainter(
            [im for im, _ in loaded], [m for _, m in loaded], **_inpaint_kwargs(args)
        )
        for result, out in zip(results, outputs[start : start + args.batch_size]):
            save_image(result, out)
            progress.update(1)
        if args.comparison and not folder_mode:
            image, mask = loaded[0]
            save_image(_comparison(image, mask, results[0], args.mask_convention), args.comparison)
    progress.close()
    if not folder_mode:
        print(f"wrote {outputs[0]}" + (f" and {args.comparison}" if args.comparison else ""))
    else:
        print(f"wrote {len(outputs)} images to {args.out_dir}")
    return 0


def cmd_convert(args) -> int:
    from .checkpoints import load_generator, save_generator

    if not args.dst.lower().endswith((".safetensors", ".pth", ".pt")):
        raise CliError(f"output {args.dst} must end in .safetensors, .pth or .pt")
    G = load_generator(args.src)
    save_generator(G, args.dst)
    print(f"wrote {args.dst} (img_resolution={G.img_resolution}, use_noise={G.use_noise})")
    return 0


def cmd_info(args) -> int:
    import numpy
    import PIL

    try:
        import triton

        triton_version = triton.__version__
    except Exception as err:  # noqa: BLE001 - any import failure is worth reporting
        triton_version = f"not importable ({type(err).__name__}: {err})"
    print(f"mat_fast {__version__}")
    print(f"python   {platform.python_version()} ({platform.platform()})")
    print(f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    print(f"triton   {triton_version}")
    print(f"numpy    {numpy.__version__}, pillow {PIL.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"device   cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print("device   cpu only (no CUDA GPU visible)")
    print(f"backend  requested: {get_backend()}")
    for device in (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]:
        try:
            chosen = resolve(device)
        except BackendUnavailableError as err:
            chosen = f"unavailable ({err})"
        print(f"  on {device}: runs {chosen}")
        for name, reason in available_backends(device).items():
            print(f"    {name:<10} {'ok' if reason is None else reason}")
    from .ops import native_build

    # The native kernels: a layer under the 'cpu' backend, all of the 'cuda' one.
    print(f"native   {native_build.describe()}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = _build_parser().parse_args(argv)
    from .checkpoints import CheckpointError

    try:
        if getattr(args, "backend", None):
            from .backend import set_backend

            # checked for the device the command will run on, not the default one
            device = getattr(args, "device", "auto")
            set_backend(args.backend, None if device == "auto" else device)
        commands = {
            "inpaint": cmd_inpaint,
            "convert": cmd_convert,
            "info": cmd_info,
            "serve": cmd_serve,
        }
        command = commands.get(args.command) or args.run
        return command(args)
    except (
        CliError,
        InputError,
        CheckpointError,
        BackendUnavailableError,
        ValueError,
        OSError,
    ) as err:
        print(f"mat-fast: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mat-fast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
