"""A contact sheet for people who would rather look: input, mask, fill, ground truth."""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .evaluate import Pair, read_rgb8

GAP = 6
HOLE_GREY = 128  # how the input column shows the hole


def sample_positions(total: int, count: int) -> List[int]:
    """``count`` positions spread evenly over ``total`` pairs (first and last included)."""
    count = max(1, min(count, total))
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def pair_masks(pairs: Sequence[Pair], mask_dir: str) -> List[str]:
    """A mask per pair: by name, else in sorted order when no names match and the counts
    agree (upstream's test sets pair mask1.png with test1.png that way)."""
    from .evaluate import EvaluationError, _listing

    masks = _listing(mask_dir, "--masks")
    if any(p.name in masks for p in pairs):
        missing = [p.name for p in pairs if p.name not in masks]
        if missing:
            raise EvaluationError(f"no mask named like {', '.join(missing[:5])} in {mask_dir}")
        return [masks[p.name] for p in pairs]
    if len(masks) != len(pairs):
        raise EvaluationError(
            f"{len(masks)} masks in {mask_dir} for {len(pairs)} pairs and no names in common; "
            f"name each mask like its image"
        )
    return [masks[name] for name in sorted(masks)]


def _hole(mask_path: str, size, convention: str) -> np.ndarray:
    from ..image_io import load_image, to_hole_mask

    return to_hole_mask(load_image(mask_path), (size[1], size[0]), convention)


def _thumb(arr: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(arr)
    width = max(1, round(im.width * height / im.height))
    return im.resize((width, height), Image.Resampling.LANCZOS)


def contact_sheet(
    pairs: Sequence[Pair],
    positions: Sequence[int],
    *,
    masks: Optional[Sequence[str]] = None,
    convention: str = "keep",
    scores: Optional[Dict[str, np.ndarray]] = None,
    height: int = 192,
) -> Image.Image:
    """One row per sampled pair: [input with the hole grey, mask (white = hole),] fill,
    ground truth; the row's label gives the name and its per-pair scores."""
    titles = (["input", "mask (white = hole)"] if masks else []) + ["fill", "ground truth"]
    rows = []
    for position in positions:
        pair = pairs[position]
        fake, real = read_rgb8(pair.fake), read_rgb8(pair.real)
        cells = []
        if masks:
            hole = _hole(masks[position], pair.size, convention)
            shown = real.copy()
            shown[hole] = HOLE_GREY
            cells += [shown, np.repeat((hole * 255).astype(np.uint8)[:, :, None], 3, axis=2)]
        cells += [fake, real]
        label = pair.name
        for metric, values in (scores or {}).items():
            value = float(values[position])
            label += f"  {metric} {'inf' if math.isinf(value) else f'{value:.3f}'}"
        rows.append(([_thumb(c, height) for c in cells], label))
    font = ImageFont.load_default()
    line = 14
    width = max(sum(t.width for t in cells) + GAP * (len(cells) + 1) for cells, _ in rows)
    total_height = line + GAP + sum(height + line + GAP for _ in rows) + GAP
    sheet = Image.new("RGB", (width, total_height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = GAP
    for title, thumb in zip(titles, rows[0][0]):
        draw.text((x, 2), title, fill=(0, 0, 0), font=font)
        x += thumb.width + GAP
    y = line + GAP
    for cells, label in rows:
        draw.text((GAP, y), label, fill=(60, 60, 60), font=font)
        x = GAP
        for thumb in cells:
            sheet.paste(thumb, (x, y + line))
            x += thumb.width + GAP
        y += height + line + GAP
    return sheet


def check_sheet_path(path: str) -> None:
    from ..image_io import output_extension_error

    error = output_extension_error(path)
    if error:
        raise ValueError(error)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"folder for --sheet does not exist: {folder}")
