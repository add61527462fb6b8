"""Which canvases a call runs: the whole photo, a crop around each hole region, or a hole
region at a reduced size, chosen so that every canvas fits in the memory available.

- ``full``: the photo, each side reflect-padded to a multiple of the network's resolution.
- ``crop``: each group of hole pixels plus ``crop_margin`` pixels of context, grown to a
  multiple of the resolution inside the photo, at full resolution.
- ``resize``: like ``crop``, but a region whose longer side exceeds ``resize_limit`` is
  inpainted scaled down to it, and the fill is scaled back up; only the hole's pixels of
  the upscaled fill reach the result.
- ``auto``: ``full`` up to ``crop_trigger`` pixels on the longer side, ``crop`` above; a
  canvas that would not fit in memory is scaled down (as ``resize``) until it does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MemoryBudgetError
from .memory import gib

log = logging.getLogger("mat_fast")

Box = Tuple[int, int, int, int]  # top, left, bottom, right (exclusive)
STRATEGIES = ("auto", "full", "crop", "resize")


@dataclass
class Job:
    """One canvas to run: an image's (cropped, maybe scaled) region, padded to the
    network's multiple."""

    index: int  # which input image
    box: Box  # region of the image this canvas covers (before scaling and padding)
    paste: Box  # part of the region whose hole pixels this job owns
    image: np.ndarray  # (h, w, 3) padded
    known: np.ndarray  # (h, w) float32 padded: 1 known, 0 hole
    pad: Tuple[int, int, int, int]  # top, bottom, left, right
    cropped: bool = False  # one of several canvases of one photo
    scaled: bool = False  # the region was scaled down; the fill is scaled back up


def pad_amounts(size: int, multiple: int) -> Tuple[int, int]:
    total = (-size) % multiple
    return total // 2, total - total // 2


def _padded(h: int, w: int, multiple: int) -> int:
    return math.ceil(h / multiple) * multiple * math.ceil(w / multiple) * multiple


def _reflect(arr: np.ndarray, pads) -> np.ndarray:
    width = [(pads[0], pads[1]), (pads[2], pads[3])] + [(0, 0)] * (arr.ndim - 2)
    # 'reflect' needs at least 2 pixels along an axis; a 1-pixel axis repeats its edge.
    mode = "reflect" if min(arr.shape[:2]) > 1 else "edge"
    return np.pad(arr, width, mode=mode)


def hole_regions(hole: np.ndarray, margin: int, cell: int = 16) -> List[Box]:
    """Boxes around groups of hole pixels, each grown by ``margin`` and merged while they
    overlap, so every hole pixel lies in exactly one box. Works on a coarse grid of
    ``cell`` x ``cell`` blocks so that it stays fast on large photos."""
    H, W = hole.shape
    gh, gw = math.ceil(H / cell), math.ceil(W / cell)
    padded = np.zeros((gh * cell, gw * cell), dtype=bool)
    padded[:H, :W] = hole
    occupied = padded.reshape(gh, cell, gw, cell).any(axis=(1, 3))
    labels = np.zeros((gh, gw), dtype=np.int32)
    boxes: List[List[int]] = []
    for start in zip(*np.nonzero(occupied)):
        if labels[start]:
            continue
        boxes.append([start[0], start[1], start[0] + 1, start[1] + 1])
        labels[start] = len(boxes)
        stack = [start]
        while stack:  # flood fill over 8-neighbours
            y, x = stack.pop()
            box = boxes[-1]
            box[0], box[1] = min(box[0], y), min(box[1], x)
            box[2], box[3] = max(box[2], y + 1), max(box[3], x + 1)
            for ny in range(max(y - 1, 0), min(y + 2, gh)):
                for nx in range(max(x - 1, 0), min(x + 2, gw)):
                    if occupied[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = len(boxes)
                        stack.append((ny, nx))
    grown = [
        (
            int(max(t * cell - margin, 0)),
            int(max(left * cell - margin, 0)),
            int(min(b * cell + margin, H)),
            int(min(right * cell + margin, W)),
        )
        for t, left, b, right in boxes
    ]
    merged = True
    while merged:  # merge overlapping boxes until none overlap
        merged = False
        for i in range(len(grown)):
            for j in range(i + 1, len(grown)):
                a, b = grown[i], grown[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    grown[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del grown[j]
                    merged = True
                    break
            if merged:
                break
    return grown


def canvas_box(box: Box, size: Tuple[int, int], multiple: int) -> Box:
    """Grow ``box`` to a multiple of ``multiple`` inside the image where possible, so the
    padding that the network needs is filled with real context instead of reflections."""
    out = []
    for lo, hi, limit in ((box[0], box[2], size[0]), (box[1], box[3], size[1])):
        length = min(math.ceil((hi - lo) / multiple) * multiple, limit)
        start = min(max(lo - (length - (hi - lo)) // 2, 0), limit - length)
        out.append((start, start + length))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def resize_rgb(arr: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(h, w, 3) float32 in [0, 1] to ``size`` (bicubic, antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
    shrink = size[0] < arr.shape[0] or size[1] < arr.shape[1]
    out = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=shrink)
    return out[0].permute(1, 2, 0).clamp_(0, 1).contiguous().numpy()


def _shrink_known(known: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Known where every source pixel under a reduced pixel is known: the reduced hole
    covers the whole hole once scaled back up."""
    area = F.interpolate(torch.from_numpy(known)[None, None], size=size, mode="area")[0, 0]
    return (area >= 1 - 1e-6).float().numpy()


class Planner:
    """Turns (image, hole) into canvases for one call. ``fits(canvas_pixels)`` tells
    whether a batch-1 forward on that canvas fits in memory; ``need(canvas_pixels)`` how
    much it takes (for messages)."""

    def __init__(
        self,
        resolution: int,
        fits: Callable[[int], bool],
        need: Callable[[int], int],
        budget: Optional[int],
    ):
        self.resolution = resolution
        self.fits, self.need, self.budget = fits, need, budget

    def _refuse(self, what: str, canvas: int, advice: str) -> MemoryBudgetError:
        return MemoryBudgetError(
            f"{what} needs about {gib(self.need(canvas))} of memory but "
            f"{gib(self.budget or 0)} is available; {advice}"
        )

    def plan(
        self,
        index: int,
        rgb: np.ndarray,
        hole: np.ndarray,
        strategy: str,
        crop_trigger: int,
        crop_margin: int,
        resize_limit: int,
    ) -> List[Job]:
        if not hole.any():
            return []
        H, W = hole.shape
        res = self.resolution
        advice = "use the 'auto' or 'resize' strategy, a bfloat16 dtype, or a larger memory budget"
        if strategy == "full" or (
            strategy == "auto" and max(H, W) <= crop_trigger and self.fits(_padded(H, W, res))
        ):
            if not self.fits(_padded(H, W, res)):
                raise self._refuse(
                    f"inpainting the whole {W}x{H} image", _padded(H, W, res), advice
                )
            return [self._job(index, rgb, hole, (0, 0, H, W), (0, 0, H, W), None, False)]
        regions = hole_regions(hole, crop_margin)
        jobs = []
        for region in regions:
            box = canvas_box(region, (H, W), res)
            bh, bw = box[2] - box[0], box[3] - box[1]
            if strategy == "crop" or (strategy == "auto" and self.fits(_padded(bh, bw, res))):
                if not self.fits(_padded(bh, bw, res)):
                    raise self._refuse(
                        f"the {bw}x{bh} crop around a hole", _padded(bh, bw, res), advice
                    )
                jobs.append(self._job(index, rgb, hole, box, region, None, len(regions) > 1))
                continue
            rh, rw = region[2] - region[0], region[3] - region[1]
            limit = resize_limit if strategy == "resize" else min(resize_limit, max(rh, rw))
            scale = min(1.0, limit / max(rh, rw))
            while True:
                size = (max(round(rh * scale), 1), max(round(rw * scale), 1))
                if self.fits(_padded(*size, res)):
                    break
                if max(size) <= res:
                    raise self._refuse(
                        f"a {res}x{res} canvas (the smallest there is)",
                        res * res,
                        "use a bfloat16 dtype, free some memory, or a larger memory budget",
                    )
                scale *= 0.85
            if strategy == "auto" and scale < 1:
                log.warning(
                    "mat_fast: the %dx%d hole region of image %d does not fit in memory at "
                    "full size; inpainting it at %dx%d and scaling the fill up",
                    rw,
                    rh,
                    index,
                    size[1],
                    size[0],
                )
            jobs.append(
                self._job(
                    index, rgb, hole, region, region, size if scale < 1 else None, len(regions) > 1
                )
            )
        return jobs

    def _job(self, index, rgb, hole, box: Box, paste: Box, size, cropped: bool) -> Job:
        t, left, b, r = box
        image, known = rgb[t:b, left:r], (~hole[t:b, left:r]).astype(np.float32)
        if size is not None:
            image, known = resize_rgb(image, size), _shrink_known(known, size)
        h, w = image.shape[:2]
        pads = (*pad_amounts(h, self.resolution), *pad_amounts(w, self.resolution))
        return Job(
            index,
            box,
            paste,
            _reflect(image, pads),
            _reflect(known, pads),
            pads,
            cropped,
            size is not None,
        )


def paste(job: Job, result: np.ndarray, target: np.ndarray) -> None:
    """Put a job's fill (h, w, 3 float, padded) into ``target``: only its own region, since
    neighbouring canvases may overlap its margin; scaled back up first if it was scaled."""
    pt, pb, pl, pr = job.pad
    result = result[pt : result.shape[0] - pb, pl : result.shape[1] - pr]
    t, left, b, r = job.box
    if job.scaled:
        result = resize_rgb(result, (b - t, r - left))
    qt, ql, qb, qr = job.paste
    target[qt:qb, ql:qr] = result[qt - t : qb - t, ql - left : qr - left]
