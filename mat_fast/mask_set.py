"""A fixed evaluation mask set drawn with the paper's mask generator (``mat_fast.masks``).

Mask ``i`` of seed ``S`` is drawn from its own generator, seeded by numpy's
``SeedSequence(S, spawn_key=(i,))`` (the ``i``-th child of ``SeedSequence(S)``), so a mask does
not depend on how many masks are written, in what order or by how many processes: the first
N masks of a larger set are the set of N. Files are ``mask_000000.png``, ... (8-bit
grayscale, 0 or 255), written atomically, in upstream's convention by default: white =
known, black = hole (``mat-fast inpaint --mask-convention keep``); ``convention='fill'``
writes white = hole (the CLI's default convention) instead.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from .image_io import save_image
from .masks import SETTINGS, random_mask

MAX_COUNT = 1_000_000  # six-digit names keep sorted order equal to index order
MANIFEST = "masks.json"
_NAME = re.compile(r"^mask_(\d{6})\.png$")


def mask_name(index: int) -> str:
    return f"mask_{index:06d}.png"


def draw_mask(
    seed: int,
    index: int,
    resolution: int,
    setting: str = "large",
    hole_range: Sequence[float] = (0.0, 1.0),
) -> np.ndarray:
    """Mask ``index`` of the set ``seed``: float32 (R, R), 1 = known, 0 = hole."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return random_mask(resolution, setting=setting, hole_range=hole_range, rng=rng)


def mask_image(known: np.ndarray, convention: str = "keep") -> Image.Image:
    """'L' image: 'keep' = white known / black hole (upstream), 'fill' = white hole."""
    if convention not in ("keep", "fill"):
        raise ValueError(f"mask convention must be 'keep' or 'fill', got {convention!r}")
    white = known >= 0.5 if convention == "keep" else known < 0.5
    return Image.fromarray(np.where(white, 255, 0).astype(np.uint8))


def _write_one(job: Tuple) -> str:
    out_dir, index, seed, resolution, setting, hole_range, convention = job
    known = draw_mask(seed, index, resolution, setting, hole_range)
    path = os.path.join(out_dir, mask_name(index))
    save_image(mask_image(known, convention), path)
    return path


def check_arguments(count, resolution, setting, seed, hole_range) -> None:
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"--count must be between 1 and {MAX_COUNT}, got {count}")
    if resolution < 16:
        raise ValueError(f"--resolution must be at least 16 pixels, got {resolution}")
    if setting not in SETTINGS:
        raise ValueError(f"--setting must be one of {sorted(SETTINGS)}, got {setting!r}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    lo, hi = hole_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"--hole-range must satisfy 0 <= LO < HI <= 1, got {lo} {hi}")


def _check_folder(out_dir: str, count: int) -> None:
    """Refuse a folder holding other images: a later --mask-dir would pair them too."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir} exists and is not a folder")
    if not os.path.isdir(out_dir):
        return
    foreign = []
    for file in sorted(os.listdir(out_dir)):
        found = _NAME.match(file)
        if found and int(found.group(1)) < count:
            continue
        if file == MANIFEST or not os.path.splitext(file)[1]:
            continue
        if file.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")):
            foreign.append(file)
    if foreign:
        raise ValueError(
            f"{out_dir} holds {len(foreign)} image(s) outside this set "
            f"({', '.join(foreign[:5])}); use an empty folder"
        )


def write_mask_set(
    out_dir: str,
    count: int,
    *,
    resolution: int = 512,
    setting: str = "large",
    seed: int = 0,
    hole_range: Sequence[float] = (0.0, 1.0),
    convention: str = "keep",
    workers: int = 1,
    progress=None,
) -> int:
    """Write masks 0..count-1 and ``masks.json`` (how they were made); returns ``count``."""
    hole_range = (float(hole_range[0]), float(hole_range[1]))
    check_arguments(count, resolution, setting, seed, hole_range)
    mask_image(np.ones((1, 1), np.float32), convention)  # checks the convention
    _check_folder(out_dir, count)
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(out_dir, i, seed, resolution, setting, hole_range, convention) for i in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=16):
                if progress is not None:
                    progress.update(1)
    else:
        for job in jobs:
            _write_one(job)
            if progress is not None:
                progress.update(1)
    _write_manifest(out_dir, count, resolution, setting, seed, hole_range, convention)
    return count


def _write_manifest(out_dir, count, resolution, setting, seed, hole_range, convention) -> None:
    from . import __version__

    manifest = {
        "generator": "mat_fast.masks.random_mask (the MAT paper's free-form masks)",
        "setting": setting,
        "resolution": resolution,
        "count": count,
        "seed": seed,
        "per_mask_seed": "numpy SeedSequence(seed, spawn_key=(index,))",
        "hole_range": list(hole_range),
        "convention": convention,
        "meaning": "white = known, black = hole (mat-fast inpaint --mask-convention keep)"
        if convention == "keep"
        else "white = hole (mat-fast inpaint --mask-convention fill)",
        "mat_fast": __version__,
    }
    path = os.path.join(out_dir, MANIFEST)
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
