"""Preparing an image for the network, apart from running it: its float view, its hole
and its canvases (padded to the network's multiple, or cropped and scaled: see
:mod:`mat_fast.planning`), sized to the memory budget. :class:`mat_fast.Inpainter` prepares
every image of a call this way; folder mode runs a :class:`Preparer` in DataLoader
workers while the generator runs (``Inpainter.preparer`` and ``Inpainter.fill``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import List, Optional

import numpy as np
import torch

from . import cpu_memory
from .image_io import ImageData, to_hole_mask, to_image_data
from .memory import PHOTO_BYTES_PER_PIXEL, forward_bytes
from .planning import Job, Planner

log = logging.getLogger("mat_fast")

__all__ = [
    "KEEP_FREED_MAX_PIXELS",
    "Prepared",
    "Preparer",
    "keeps_freed_memory",
    "make_planner",
    "warn_if_degenerate",
]

# With freed memory kept (mat_fast.cpu_memory) a 512 px forward runs 20-30% faster, but the
# process keeps its high-water mark, and on large canvases the peak itself grows (measured
# 20.7 vs 13.8 GiB at 2560x2048 fp32, docs/MEASUREMENTS.md of the shared folder). By default
# (keep_freed_memory=None and no MAT_FAST_KEEP_FREED_MEMORY) it is kept for calls whose
# photos have at most this many pixels, and glibc's defaults restored for larger ones.
KEEP_FREED_MAX_PIXELS = 1024 * 1024


@dataclasses.dataclass
class Prepared:
    """One image ready for the network: its views, its hole and its canvases."""

    data: ImageData
    hole: np.ndarray  # (H, W) bool, True = fill
    jobs: List[Job]  # its canvases (their ``index`` is set when a call runs them)


@dataclasses.dataclass(frozen=True)
class Preparer:
    """:meth:`Inpainter.preparer`'s result: prepares one image without the network (plain
    values only, so DataLoader workers can run it in other processes)."""

    resolution: int
    device_type: str
    dtype: torch.dtype
    keep_choice: Optional[bool]  # Inpainter._keep_choice() when made
    budget: Optional[int]  # bytes free for the calls when made (None: unknown)
    mask_convention: str
    mask_threshold: float
    strategy: str
    crop_trigger: int
    crop_margin: int
    resize_limit: int

    def __call__(self, image, mask, name: str = "the image") -> Prepared:
        """``image`` and ``mask`` as :meth:`Inpainter.__call__` takes them; ``name`` for
        warnings."""
        data = to_image_data(image)
        hole = to_hole_mask(mask, data.size, self.mask_convention, self.mask_threshold)
        warn_if_degenerate(hole, name)
        # what Inpainter._set_malloc will decide for a call on this image alone
        kept = self.device_type == "cpu" and keeps_freed_memory(self.keep_choice, hole.size)
        budget = None
        if self.budget is not None:
            photo = PHOTO_BYTES_PER_PIXEL * hole.size if self.device_type == "cpu" else 0
            budget = max(self.budget - photo, 0)
        planner = make_planner(self.resolution, self.device_type, self.dtype, kept, budget)
        jobs = planner.plan(
            0, data.rgb, hole, self.strategy, self.crop_trigger, self.crop_margin,
            self.resize_limit,
        )  # fmt: skip
        return Prepared(data, hole, jobs)


def keeps_freed_memory(choice: Optional[bool], largest_pixels: int) -> bool:
    """Whether a CPU call on photos of at most ``largest_pixels`` keeps freed memory:
    ``choice`` is the Inpainter's keep_freed_memory (or its environment variable); None
    decides by size; False still finds it kept when other code kept it (process-wide)."""
    if choice is None:
        return largest_pixels <= KEEP_FREED_MAX_PIXELS
    return choice or cpu_memory.freed_memory_kept()


def make_planner(
    resolution: int, device_type: str, dtype: torch.dtype, kept: bool, budget: Optional[int]
) -> Planner:
    """A Planner whose canvases must fit in ``budget`` bytes (None: any fits)."""

    def need(canvas: int) -> int:
        return forward_bytes(device_type, dtype, kept, canvas)

    return Planner(
        resolution, lambda canvas: budget is None or need(canvas) <= budget, need, budget
    )


def warn_if_degenerate(hole: np.ndarray, what: str) -> None:
    if not hole.any():
        log.warning("mat_fast: the mask of %s has nothing to fill", what)
    elif hole.all():
        log.warning(
            "mat_fast: the mask of %s covers the whole image; the result is generated from "
            "nothing (check the mask convention)",
            what,
        )
