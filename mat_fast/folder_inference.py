"""Folder-mode inference at scale: ``mat-fast inpaint --input-dir ... --out-dir ...``, alone
or under torchrun.

- Each rank takes a disjoint, deterministic shard of the pairs (every world-th pair) and
  runs on its own device; rank 0 shows the progress of its shard and prints the summary
  of all ranks (counts and failures gathered over gloo).
- Decoding and preparing (the float view, the hole, the padded or cropped canvases:
  :class:`mat_fast.prepare.Preparer`) run in ``workers`` DataLoader processes and encoding
  in as many writer threads (Pillow's encoders release the GIL) while the generator runs;
  pairs of equal image size go to :meth:`Inpainter.fill` together, ``batch_size`` at a time
  (equal canvases share a forward). ``workers=0`` does all of it in this process, between
  forwards (the better choice where the forward uses every CPU core: see the CLI's default).
- An image's fill depends only on the image, its mask, the checkpoint and the seed: its
  random draws come from its own generator, seeded from ``seed`` and its path relative to
  the input folder (:func:`image_seed`), never from its batch, worker or rank.
- A bad pair (unreadable, sizes that differ) is reported by name and skipped; the run
  finishes the rest. ``strict`` stops at the first. Outputs are written atomically;
  ``skip_existing`` leaves finished outputs alone, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from .errors import InputError
from .image_io import (
    load_image,
    mask_size_error,
    output_metadata,
    storage_warnings,
    write_images,
)
from .model.sample_rng import derive_seed

log = logging.getLogger("mat_fast")

__all__ = ["FolderPair", "Summary", "image_seed", "run_folder"]


@dataclass(frozen=True)
class FolderPair:
    image: str
    mask: str
    out: str
    name: str  # the image's path relative to the input folder: its seed and its report name


@dataclass
class Summary:
    """What one rank (or, merged, the whole run) did."""

    written: int = 0
    skipped: int = 0  # outputs that existed (skip_existing)
    failures: List[Tuple[str, str]] = field(default_factory=list)  # (name, reason)

    def merge(self, other: "Summary") -> None:
        self.written += other.written
        self.skipped += other.skipped
        self.failures += other.failures


class PairFailed(InputError):
    """A pair could not be read or does not fit together (``strict`` mode raises it)."""


#: The Inpainter options that :meth:`Inpainter.fill` takes; the others go to its preparer.
FILL_OPTIONS = ("truncation_psi", "noise_mode")


def image_seed(seed: int, name: str) -> int:
    """The seed of one image: from the run's seed and the image's relative path (with '/'
    separators), so it is the same on every machine, rank and batch."""
    return derive_seed("mat_fast folder image", seed, name.replace(os.sep, "/"))


def _header_size(pair: FolderPair) -> Tuple[int, int]:
    """The image's size from the file headers (no decoding), checked against the mask's."""
    sizes = []
    for path in (pair.image, pair.mask):
        try:
            with Image.open(path) as im:
                sizes.append(im.size)
        except (OSError, SyntaxError, ValueError) as err:
            raise PairFailed(f"cannot read {path} as an image ({err})") from None
    # EXIF rotation swaps the sides of both alike; the decoded sizes are checked again
    if sizes[0] != sizes[1] and sizes[0] != sizes[1][::-1]:
        raise PairFailed(mask_size_error(pair.image, sizes[0], pair.mask, sizes[1]))
    return sizes[0]


class _Prepared(torch.utils.data.Dataset):
    """Decodes and prepares a pair (in a DataLoader worker): ``(index, prepared, metadata,
    error)``; a failure comes back as its message."""

    def __init__(self, pairs: Sequence[FolderPair], max_pixels: Optional[int], preparer):
        self.pairs, self.max_pixels, self.preparer = pairs, max_pixels, preparer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        try:
            image = load_image(pair.image, self.max_pixels, full_depth=True)
            mask = load_image(pair.mask, self.max_pixels)
            if image.size != mask.size:
                raise PairFailed(mask_size_error(pair.image, image.size, pair.mask, mask.size))
            prepared = self.preparer(image, mask, name=pair.name)
        except (InputError, OSError, ValueError) as err:
            return index, None, None, str(err)
        return index, prepared, output_metadata(image), None


def _as_list(items):
    return items


def _size_batches(sizes: Dict[int, Tuple[int, int]], batch_size: int) -> List[List[int]]:
    """Positions grouped by image size, ``batch_size`` at a time, in order of first position."""
    by_size: Dict[Tuple[int, int], List[int]] = {}
    for position, size in sizes.items():
        by_size.setdefault(size, []).append(position)
    batches = []
    for positions in by_size.values():
        batches += [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    return sorted(batches, key=lambda b: b[0])


def run_folder(
    inpainter,
    pairs: Sequence[FolderPair],
    *,
    seed: int,
    options: dict,
    batch_size: int = 4,
    workers: int = 0,
    strict: bool = False,
    skip_existing: bool = False,
    max_pixels: Optional[int] = None,
    quality: Optional[int] = None,
    progress=None,
) -> Summary:
    """Inpaint ``pairs`` (this rank's shard) into their ``out`` paths. ``options``: the
    Inpainter's keyword arguments besides ``seed``. Returns what was done; with ``strict``
    the first bad pair raises :class:`PairFailed` instead of being skipped."""
    summary = Summary()
    fill_options = {k: v for k, v in options.items() if k in FILL_OPTIONS}
    preparer = inpainter.preparer(**{k: v for k, v in options.items() if k not in FILL_OPTIONS})

    def failed(pair: FolderPair, reason: str) -> None:
        if strict:
            raise PairFailed(f"{pair.name}: {reason}")
        summary.failures.append((pair.name, reason))
        log.warning("mat-fast: skipped %s: %s", pair.name, reason)
        if progress is not None:
            progress.update(1)

    todo: Dict[int, Tuple[int, int]] = {}
    for position, pair in enumerate(pairs):
        if skip_existing and os.path.exists(pair.out):
            summary.skipped += 1
            if progress is not None:
                progress.update(1)
            continue
        try:
            todo[position] = _header_size(pair)
        except PairFailed as err:
            failed(pair, str(err))
    loader = torch.utils.data.DataLoader(
        _Prepared(pairs, max_pixels, preparer),
        batch_sampler=_size_batches(todo, batch_size),
        num_workers=workers,
        collate_fn=_as_list,
    )
    warned: set = set()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as writers:
        pending = []
        for items in loader:
            good = []
            for index, prepared, metadata, error in items:
                if error is not None:
                    failed(pairs[index], error)
                else:
                    good.append((pairs[index], prepared, metadata))
            if not good:
                continue
            seeds = [image_seed(seed, pair.name) for pair, _, _ in good]
            results = inpainter.fill([p for _, p, _ in good], seed=seeds, **fill_options)
            for (pair, _, metadata), result in zip(good, results):
                for warning in storage_warnings(result, pair.out, metadata):
                    if warning not in warned:
                        warned.add(warning)
                        log.warning("mat-fast: %s", warning)
                pending.append(
                    (pair, writers.submit(write_images, [(result, pair.out, metadata)], quality))
                )
            pending = _collect(pending, summary, failed, progress, wait=False)
        _collect(pending, summary, failed, progress, wait=True)
    return summary


def _collect(pending, summary: Summary, failed, progress, wait: bool):
    """Account for finished writes (all of them when ``wait``); the rest stay pending."""
    still = []
    for pair, future in pending:
        if not wait and not future.done():
            still.append((pair, future))
            continue
        try:
            future.result()
        except (InputError, OSError) as err:
            failed(pair, str(err))
            continue
        summary.written += 1
        if progress is not None:
            progress.update(1)
    return still


def print_summary(summary: Summary, total: int, out_dir: str, world: int) -> None:
    ranks = f" on {world} ranks" if world > 1 else ""
    line = f"wrote {summary.written} of {total} images to {out_dir}{ranks}"
    if summary.skipped:
        line += f" ({summary.skipped} already there, skipped)"
    print(line)
    if summary.failures:
        print(f"mat-fast: {len(summary.failures)} failed:", file=sys.stderr)
        for name, reason in sorted(summary.failures):
            print(f"  {name}: {reason}", file=sys.stderr)
