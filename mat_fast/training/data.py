"""Training images and their free-form masks, the way upstream's datasets prepare them.

Upstream (``datasets/dataset_512.py``, ``dataset_256.py``): every image file in a folder
(walked recursively) or a zip, sorted by name; greyscale repeated to RGB; a random
``resolution`` x ``resolution`` crop; with ``mirror`` the dataset is doubled by x-flips; a
fresh free-form mask per sample (MAT's 'large' setting, hole ratio in (0, 1); ``small`` or
``mix`` on request). Images as uint8 CHW, masks float32 1 x H x W with 1 = known.

Differences, on purpose: every random choice (sample order, crop, mask) is drawn from a
generator keyed by the seed and the sample's position in the run's stream of samples, not
from each worker's global state, so a run is the same whatever the number of DataLoader
workers or processes, and a resumed run continues the exact stream. An image smaller than
the resolution is an error naming the file (upstream reflect-pads it silently).
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
from typing import Iterator, List, Optional

import numpy as np
import torch
from PIL import Image

from .. import masks as mask_gen

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MASK_SETTINGS = ("large", "small", "mix")


class DatasetError(ValueError):
    """The training data cannot be used (message names the file and the fix)."""


def list_images(path: str) -> List[str]:
    """Image names under a folder (recursively, relative paths) or in a zip, sorted."""
    if os.path.isdir(path):
        names = [
            os.path.relpath(os.path.join(root, f), path)
            for root, _dirs, files in os.walk(path)
            for f in files
        ]
    elif os.path.isfile(path) and path.lower().endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise DatasetError(f"--data {path}: not a readable zip file ({e})") from None
    else:
        raise DatasetError(f"--data {path}: expected a folder of images or a .zip of images")
    images = sorted(n for n in names if n.lower().endswith(IMAGE_EXTS))
    if not images:
        raise DatasetError(
            f"--data {path}: no image files ({', '.join(IMAGE_EXTS)}) found; point --data at "
            f"the folder or zip that holds the training images"
        )
    return images


class ImageMaskDataset(torch.utils.data.Dataset):
    """``dataset[position] -> (image uint8 [3,R,R], mask float32 [1,R,R], label [0])``.

    ``position`` is the sample's place in the run's endless stream: epoch ``position //
    len(self)`` is a seeded permutation of the (x-flip doubled) images."""

    def __init__(
        self,
        path: str,
        resolution: int,
        *,
        mirror: bool = False,
        seed: int = 0,
        mask_setting: str = "large",
        check_first: int = 8,
    ):
        if mask_setting not in MASK_SETTINGS:
            raise DatasetError(f"mask setting {mask_setting!r}: choose one of {MASK_SETTINGS}")
        self.path, self.resolution = os.fspath(path), int(resolution)
        self.mirror, self.seed, self.mask_setting = bool(mirror), int(seed), mask_setting
        self.names = list_images(self.path)
        self._zip: Optional[zipfile.ZipFile] = None
        for i in range(min(check_first, len(self.names))):  # fail now, not in a worker later
            self.load_image(i)

    def __len__(self) -> int:
        return len(self.names) * (2 if self.mirror else 1)

    def __getstate__(self):  # DataLoader workers open their own zip handle
        return dict(self.__dict__, _zip=None)

    def _read(self, name: str) -> bytes:
        if os.path.isdir(self.path):
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(name)

    def load_image(self, raw_index: int) -> np.ndarray:
        """The whole image as uint8 HWC RGB; errors name the file."""
        name = self.names[raw_index]
        where = os.path.join(self.path, name)
        try:
            with Image.open(io.BytesIO(self._read(name))) as im:
                im.load()
                if im.mode not in ("RGB", "L"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{where}: cannot read the image ({e}); remove or fix it") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        h, w = arr.shape[:2]
        if h < self.resolution or w < self.resolution:
            raise DatasetError(
                f"{where}: {w}x{h} is smaller than the training resolution {self.resolution}; "
                f"upscale or remove it, or train at a lower resolution"
            )
        return arr

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs, per dataset copy
    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(len(self))

    def index_at(self, position: int) -> int:
        return int(self.epoch_order(position // len(self))[position % len(self)])

    def draw_mask(self, rng: np.random.Generator) -> np.ndarray:
        setting = self.mask_setting
        if setting == "mix":
            setting = "large" if rng.random() < 0.5 else "small"
        return mask_gen.random_mask(self.resolution, setting=setting, rng=rng)[None]

    def __getitem__(self, position: int):
        index = self.index_at(int(position))
        raw_index, flip = index % len(self.names), index >= len(self.names)
        rng = np.random.default_rng([self.seed, 0xC0DE, int(position)])
        image = self.load_image(raw_index)
        h, w = image.shape[:2]
        y = int(rng.integers(0, h - self.resolution + 1))
        x = int(rng.integers(0, w - self.resolution + 1))
        image = image[y : y + self.resolution, x : x + self.resolution].transpose(2, 0, 1)
        if flip:
            image = image[:, :, ::-1]
        mask = self.draw_mask(rng)
        return torch.from_numpy(image.copy()), torch.from_numpy(mask), torch.zeros([0])


class StreamSampler(torch.utils.data.Sampler):
    """This rank's positions in the run's stream: step ``s`` takes the global batch
    ``[s*batch, (s+1)*batch)``, and rank ``r`` its ``r``-th contiguous share. Starting at
    ``start_step`` resumes the stream exactly."""

    def __init__(self, batch: int, rank: int, world_size: int, start_step: int = 0):
        self.batch, self.share = batch, batch // world_size
        self.rank, self.start_step = rank, start_step

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = step * self.batch + self.rank * self.share
            yield from range(base, base + self.share)
            step += 1


def next_batch(batches):
    """The next batch; a DatasetError raised in a DataLoader worker comes back as one line
    (the DataLoader re-raises it with the worker's whole traceback as its message)."""
    try:
        return next(batches)
    except DatasetError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        prefix = f"{DatasetError.__module__}.{DatasetError.__name__}: "
        raise DatasetError(last[len(prefix) :] if last.startswith(prefix) else last) from None


def make_loader(dataset, batch, rank, world_size, start_step, workers):
    sampler = StreamSampler(batch, rank, world_size, start_step)
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch // world_size,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
