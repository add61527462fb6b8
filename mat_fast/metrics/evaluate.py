"""Evaluate a folder of fills against a folder of ground truths, as upstream's scripts do.

Files pair by name (``photo.png`` with ``photo.jpg``: upstream compares the names before the
extension), and each pair must have one size. Pixels are read as upstream reads them (no
EXIF rotation; grayscale repeated to three channels). Decoding and the per-pair PSNR/SSIM/L1
run in DataLoader workers; the detector and LPIPS run batched on the device, on images of
one size at a time. Under torchrun every rank takes a disjoint, deterministic shard of the
pairs (every world_size-th pair) and rank 0 gathers the results in pair order, so the report
does not depend on the number of ranks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..distributed import shard  # noqa: F401 - ev.shard, as before
from . import pixel
from .detector import detector_features
from .features import fid_from_features, pids_uids_from_features

ALL_METRICS = ("fid", "pids", "uids", "lpips", "psnr", "ssim", "l1")
FEATURE_METRICS = ("fid", "pids", "uids")
PIXEL_METRICS = ("psnr", "ssim", "l1")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class EvaluationError(ValueError):
    """Bad folders or files for evaluation; the message names them and the fix."""


@dataclass(frozen=True)
class Pair:
    name: str  # the shared file name before the extension
    fake: str
    real: str
    size: tuple  # (width, height)


def parse_metrics(text: str) -> List[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown or not names:
        raise EvaluationError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{','.join(ALL_METRICS)}"
        )
    return [m for m in ALL_METRICS if m in names]  # canonical order, no repeats


def _listing(folder: str, flag: str) -> Dict[str, str]:
    if not os.path.isdir(folder):
        raise EvaluationError(f"{flag} {folder} is not a folder")
    by_name: Dict[str, List[str]] = {}
    for file in sorted(os.listdir(folder)):
        if file.lower().endswith(IMAGE_EXTS):
            by_name.setdefault(os.path.splitext(file)[0], []).append(file)
    clashes = [" and ".join(files) for files in by_name.values() if len(files) > 1]
    if clashes:
        raise EvaluationError(
            f"files in {folder} share a name apart from the extension: {'; '.join(clashes[:5])}"
        )
    if not by_name:
        raise EvaluationError(f"no images ({', '.join(IMAGE_EXTS)}) in {flag} {folder}")
    return {name: os.path.join(folder, files[0]) for name, files in by_name.items()}


def _header_size(path: str) -> tuple:
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as err:
        raise EvaluationError(f"cannot read {path} as an image ({err})") from None


def pair_folders(fake_dir: str, real_dir: str) -> List[Pair]:
    """Pairs sorted by name; every file must have a partner of the same size."""
    fakes, reals = _listing(fake_dir, "FAKE_DIR"), _listing(real_dir, "REAL_DIR")
    only_fake = sorted(set(fakes) - set(reals))
    only_real = sorted(set(reals) - set(fakes))
    if only_fake or only_real:
        parts = []
        if only_fake:
            parts.append(f"{len(only_fake)} in {fake_dir} only ({', '.join(only_fake[:5])})")
        if only_real:
            parts.append(f"{len(only_real)} in {real_dir} only ({', '.join(only_real[:5])})")
        raise EvaluationError(
            f"unmatched files: {'; '.join(parts)}; name each fill like its ground truth"
        )
    pairs, mismatched = [], []
    for name in sorted(fakes):
        fake_size, real_size = _header_size(fakes[name]), _header_size(reals[name])
        if fake_size != real_size:
            mismatched.append(
                f"{name} ({fake_size[0]}x{fake_size[1]} vs {real_size[0]}x{real_size[1]})"
            )
        pairs.append(Pair(name, fakes[name], reals[name], fake_size))
    if mismatched:
        raise EvaluationError(
            f"{len(mismatched)} pair(s) differ in size: {', '.join(mismatched[:5])}; a fill "
            f"must have its ground truth's size"
        )
    return pairs


def read_rgb8(path: str) -> np.ndarray:
    """(H, W, 3) uint8 as upstream reads it; other depths and alpha are refused."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            if im.mode not in ("L", "RGB"):
                raise EvaluationError(
                    f"{path} is a {im.mode} image; upstream's metrics take 8-bit RGB or "
                    f"grayscale: convert it (drop any alpha channel) first"
                )
            arr = np.array(im)  # a writable copy: it becomes a tensor
    except (UnidentifiedImageError, OSError) as err:
        raise EvaluationError(f"cannot read {path} as an image ({err})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


class _PairData(torch.utils.data.Dataset):
    """Decodes a pair and computes its pixel metrics (in a worker)."""

    def __init__(self, pairs: Sequence[Pair], pixel_metrics: Sequence[str]):
        self.pairs, self.pixel_metrics = pairs, tuple(pixel_metrics)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        # A failure comes back as a message: raised in a worker, it would reach the user as
        # a multi-line traceback from the DataLoader.
        pair = self.pairs[index]
        try:
            fake, real = read_rgb8(pair.fake), read_rgb8(pair.real)
            if fake.shape != real.shape:  # checked from the headers; a file may have changed
                raise EvaluationError(f"{pair.fake} and {pair.real} differ in size")
            scores = {m: getattr(pixel, m)(fake, real) for m in self.pixel_metrics}
        except (EvaluationError, ValueError, OSError) as err:
            return index, None, None, str(err)
        return index, torch.from_numpy(fake), torch.from_numpy(real), scores


def _collate(items):
    failed = [s for _, f, _, s in items if f is None]
    if failed:
        return None, None, None, failed[0]
    indices = [i for i, _, _, _ in items]
    fake = torch.stack([f for _, f, _, _ in items]).permute(0, 3, 1, 2)
    real = torch.stack([r for _, _, r, _ in items]).permute(0, 3, 1, 2)
    return indices, fake, real, [s for _, _, _, s in items]


def _signed_unit(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1], as upstream's LPIPS script scales its inputs."""
    return images.to(device=device, dtype=torch.float32) / 127.5 - 1


def size_batches(pairs: Sequence[Pair], batch_size: int) -> List[List[int]]:
    """Batches of positions into ``pairs``, each of one image size, in pair order."""
    by_size: Dict[tuple, List[int]] = {}
    for position, pair in enumerate(pairs):
        by_size.setdefault(pair.size, []).append(position)
    batches = []
    for positions in by_size.values():
        batches += [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    return sorted(batches, key=lambda b: b[0])


def compute_shard(
    pairs: Sequence[Pair],
    metrics: Sequence[str],
    *,
    detector=None,
    lpips_model=None,
    device="cpu",
    batch_size: int = 16,
    workers: int = 0,
    progress=None,
) -> dict:
    """Per-pair results for ``pairs``: features of fakes and reals (when FID/IDS are asked),
    LPIPS and the pixel metrics, each in the order of ``pairs``."""
    want_features = any(m in FEATURE_METRICS for m in metrics)
    if want_features and detector is None:
        raise EvaluationError("FID/P-IDS/U-IDS need a feature detector")
    if "lpips" in metrics and lpips_model is None:
        raise EvaluationError("LPIPS needs the LPIPS network")
    data = _PairData(pairs, [m for m in PIXEL_METRICS if m in metrics])
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=size_batches(pairs, batch_size),
        num_workers=workers,
        collate_fn=_collate,
    )
    n = len(pairs)
    out = {m: np.full(n, np.nan) for m in metrics if m not in FEATURE_METRICS}
    fake_rows, real_rows, order = [], [], []
    with torch.no_grad():
        for positions, fake, real, scores in loader:
            if positions is None:
                raise EvaluationError(scores)
            order += positions
            if want_features:
                fake_rows.append(detector_features(detector, fake.to(device)).cpu().numpy())
                real_rows.append(detector_features(detector, real.to(device)).cpu().numpy())
            if lpips_model is not None and "lpips" in metrics:
                distances = lpips_model(_signed_unit(fake, device), _signed_unit(real, device))
                out["lpips"][positions] = distances.cpu().numpy()
            for position, score in zip(positions, scores):
                for metric, value in score.items():
                    out[metric][position] = value
            if progress is not None:
                progress.update(len(positions))
    if want_features and not order:  # more ranks than pairs: this shard is empty
        out["fake_features"] = out["real_features"] = np.zeros((0, 0), np.float32)
    elif want_features:
        unsorted = np.argsort(order, kind="stable")
        out["fake_features"] = np.concatenate(fake_rows)[unsorted]
        out["real_features"] = np.concatenate(real_rows)[unsorted]
    return out


def merge_shards(shards: Sequence[dict], total: int) -> dict:
    """Undo ``shard``: per-pair arrays back in pair order."""
    world = len(shards)
    merged = {}
    for key in shards[0]:
        first = shards[0][key]
        merged[key] = np.empty((total,) + first.shape[1:], dtype=first.dtype)
        for rank, part in enumerate(shards):
            if len(part[key]):  # an empty shard's feature array has no width
                merged[key][rank::world] = part[key]
    return merged


def summarize(results: dict, metrics: Sequence[str]) -> Dict[str, float]:
    """The report's numbers: FID, P-IDS, U-IDS on all features; the rest averaged over
    pairs like upstream (PSNR is inf when some pair is identical)."""
    report: Dict[str, float] = {}
    if "fid" in metrics:
        report["fid"] = fid_from_features(results["real_features"], results["fake_features"])
    if "pids" in metrics or "uids" in metrics:
        pids, uids = pids_uids_from_features(results["real_features"], results["fake_features"])
        if "pids" in metrics:
            report["pids"] = pids
        if "uids" in metrics:
            report["uids"] = uids
    for metric in ("lpips",) + PIXEL_METRICS:
        if metric in metrics:
            report[metric] = float(np.mean(results[metric]))
    return report


def format_table(report: Dict[str, float], count: int) -> str:
    lines = [f"{'metric':<8} {'value':>12}", f"{'-' * 8} {'-' * 12}"]
    for metric, value in report.items():
        shown = "inf" if math.isinf(value) else f"{value:.4f}"
        lines.append(f"{metric:<8} {shown:>12}")
    lines.append(f"({count} pairs)")
    return "\n".join(lines)


def json_ready(report: Dict[str, float]) -> Dict[str, Optional[float]]:
    """inf (PSNR of identical pairs) becomes null: strict JSON has no infinity."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()
    }
