"""The inpainting front door: real images of any size in, filled images out.

Sizes: each side is reflect-padded independently to a multiple of the network's resolution
(512) and cropped back - never padded to a square, which would waste up to 2x compute.
Large images with small holes use the crop strategy: each hole region plus a margin of
context is inpainted on its own canvas and pasted back. Equal-size canvases run as one batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .cpu_memory import keep_freed_memory_for
from .image_io import ImageData, InputError, compose, to_hole_mask, to_image_data
from .model import Generator

#: An image or mask as the Inpainter takes and returns it: a PIL image, a numpy array
#: (H, W[, C]) or a tensor (C, H, W) (masks: (H, W)).
ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

log = logging.getLogger("mat_fast")

Box = Tuple[int, int, int, int]  # top, left, bottom, right (exclusive)


def resolve_device(device: Any = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is visible; use --device cpu")
    return device


def random_generator(seed: int = 0, resolution: int = 512, use_noise: bool = True) -> Generator:
    """A seeded, randomly initialised MAT generator: runs the whole pipeline without
    downloading weights (smoke tests, demos). Its fills are colourful noise, not images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(512, 0, 512, resolution, 3, synthesis_kwargs=dict(use_noise=use_noise))
    return G.eval().requires_grad_(False)


@dataclass
class _Job:
    """One canvas to run: an image's (cropped) region, padded to the network's multiple."""

    index: int  # which input image
    box: Box  # region of the image this canvas covers (before padding)
    paste: Box  # part of the region whose hole pixels this job owns
    image: np.ndarray  # (h, w, 3) padded
    known: np.ndarray  # (h, w) float32 padded: 1 known, 0 hole
    pad: Tuple[int, int, int, int]  # top, bottom, left, right


def _pad_amounts(size: int, multiple: int) -> Tuple[int, int]:
    total = (-size) % multiple
    return total // 2, total - total // 2


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


def _canvas_box(box: Box, size: Tuple[int, int], multiple: int) -> Box:
    """Grow ``box`` to a multiple of ``multiple`` inside the image where possible, so the
    padding that the network needs is filled with real context instead of reflections."""
    out = []
    for lo, hi, limit in ((box[0], box[2], size[0]), (box[1], box[3], size[1])):
        length = min(math.ceil((hi - lo) / multiple) * multiple, limit)
        start = min(max(lo - (length - (hi - lo)) // 2, 0), limit - length)
        out.append((start, start + length))
    return out[0][0], out[1][0], out[0][1], out[1][1]


class _GraphedGenerator:
    """The generator's forward captured as CUDA graphs, one per (input shapes, truncation,
    noise mode), replayed with fresh inputs: after the first call for a shape, a forward is
    one graph launch instead of hundreds of kernel launches (CPU launch overhead gone).

    Random draws inside the forward (the dropout maps, 'random' noise) come from the CUDA
    generator at replay time, so a seed still gives the same result on every run; those
    draws differ from the eager path's. Each graph keeps its own memory pool: at most
    ``max_graphs`` are kept, the oldest released first."""

    def __init__(self, generator: Generator, max_graphs: int = 4):
        self.generator = generator
        self.max_graphs = max_graphs
        self.graphs: dict = {}

    def __call__(self, images, known, z, c, truncation_psi: float, noise_mode: str) -> torch.Tensor:
        key = (tuple(images.shape), tuple(z.shape), images.dtype, float(truncation_psi), noise_mode)
        if key not in self.graphs:
            if len(self.graphs) >= self.max_graphs:
                self.graphs.pop(next(iter(self.graphs)))
            self.graphs[key] = self._capture((images, known, z, c), truncation_psi, noise_mode)
        graph, static_inputs, static_out = self.graphs[key]
        for dst, src in zip(static_inputs, (images, known, z, c)):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def _capture(self, inputs, truncation_psi, noise_mode):
        static_inputs = [t.clone() for t in inputs]

        def forward():
            return self.generator(
                *static_inputs, truncation_psi=truncation_psi, noise_mode=noise_mode
            )

        # Warm-up on a side stream (lazy inits, kernel compilation, autotuning) and the
        # capture itself must not consume the caller's seeded random stream.
        with torch.random.fork_rng(devices=[static_inputs[0].device.index or 0]):
            stream = torch.cuda.Stream(static_inputs[0].device)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = forward()
        return graph, static_inputs, static_out


class Inpainter:
    """Fill holes in images with a MAT generator.

    >>> inpaint = Inpainter.from_checkpoint("Places_512_FullData.pkl")
    >>> result = inpaint(Image.open("photo.jpg"), Image.open("mask.png"))  # white = fill
    """

    def __init__(
        self,
        generator: Generator,
        *,
        device: Any = "auto",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 4,
        cuda_graphs: bool = False,
    ) -> None:
        """``cuda_graphs=True`` (CUDA only) captures the forward once per canvas shape and
        replays it: faster for repeated same-size images, at the cost of one capture per
        shape and a memory pool per captured shape (see :class:`_GraphedGenerator`)."""
        if not isinstance(generator, Generator):
            raise TypeError(f"Inpainter needs a mat_fast.Generator; got {type(generator).__name__}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = resolve_device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise InputError(
                f"cuda_graphs=True needs a CUDA device; this Inpainter runs on "
                f"{self.device.type} (drop --cuda-graphs or use --device cuda)"
            )
        self.dtype = dtype
        # On CPU, reuse freed memory instead of page-faulting every large activation anew
        # each forward (a quarter to a third of a 512 px forward; see mat_fast.cpu_memory).
        keep_freed_memory_for(self.device)
        self.generator = generator.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.batch_size = batch_size
        self._forward = _GraphedGenerator(self.generator) if cuda_graphs else None

    @classmethod
    def from_checkpoint(
        cls,
        path: Union[str, os.PathLike],
        *,
        device: Any = "auto",
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> "Inpainter":
        from .checkpoints import load_generator

        device = resolve_device(device)
        return cls(
            load_generator(path, device=device, dtype=dtype), device=device, dtype=dtype, **kwargs
        )

    @classmethod
    def random(
        cls, seed: int = 0, *, resolution: int = 512, device: Any = "auto", **kwargs: Any
    ) -> "Inpainter":
        """An Inpainter around :func:`random_generator` (no download needed)."""
        return cls(random_generator(seed, resolution), device=device, **kwargs)

    @property
    def resolution(self) -> int:
        return self.generator.img_resolution

    # ------------------------------------------------------------------------------------
    def __call__(
        self,
        image: Union[ImageLike, Sequence[ImageLike]],
        mask: Union[ImageLike, Sequence[ImageLike]],
        *,
        seed: Optional[int] = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "auto",
        mask_convention: str = "fill",
        strategy: str = "auto",
        crop_trigger: int = 1024,
        crop_margin: int = 128,
    ) -> Union[ImageLike, List[ImageLike]]:
        """Inpaint one image (or a list of images with a list of masks).

        Args:
            image: PIL image, numpy array (H, W[, C]) uint8/uint16/float in [0, 1], or tensor
                (C, H, W); RGB, RGBA (alpha kept), grayscale and 16-bit all work.
            mask: same size as the image. ``mask_convention='fill'``: white/nonzero = region
                to fill (inpainting apps); ``'keep'``: black = hole (upstream MAT's files).
            seed: makes the result reproducible (latent z, dropout and noise draws) without
                touching the global RNG; None draws fresh randomness.
            truncation_psi: < 1 pulls the style latent towards the average (safer fills).
            noise_mode: 'auto' ('const' at the training resolution, else 'random'; 'none'
                for checkpoints without noise), 'random', 'const' or 'none'.
            strategy: 'full' (pad the whole image), 'crop' (inpaint each hole region with
                ``crop_margin`` pixels of context) or 'auto' ('crop' once the longer side
                exceeds ``crop_trigger``).

        Returns:
            The filled image(s), same type, mode, dtype and size as the input(s); every
            pixel outside the holes is exactly the input's.
        """
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        masks = [mask] if single else list(mask) if isinstance(mask, (list, tuple)) else None
        if masks is None or len(masks) != len(images):
            raise InputError("pass one mask per image (a list of masks for a list of images)")
        if strategy not in ("auto", "full", "crop"):
            raise InputError(f"strategy must be 'auto', 'full' or 'crop'; got {strategy!r}")
        datas = [to_image_data(im) for im in images]
        holes = [to_hole_mask(m, d.size, mask_convention) for m, d in zip(masks, datas)]

        jobs: List[_Job] = []
        for index, (data, hole) in enumerate(zip(datas, holes)):
            jobs.extend(self._plan(index, data, hole, strategy, crop_trigger, crop_margin))
        filled = [d.rgb.copy() for d in datas]
        self._run(jobs, filled, seed, truncation_psi, noise_mode)
        results = [compose(d, f, h) for d, f, h in zip(datas, filled, holes)]
        return results[0] if single else results

    def _plan(
        self,
        index: int,
        data: ImageData,
        hole: np.ndarray,
        strategy: str,
        crop_trigger: int,
        crop_margin: int,
    ) -> List[_Job]:
        if not hole.any():
            log.info("mat_fast: image %d has no hole pixels; returned unchanged", index)
            return []
        H, W = hole.shape
        use_crop = strategy == "crop" or (strategy == "auto" and max(H, W) > crop_trigger)
        regions = hole_regions(hole, crop_margin) if use_crop else [(0, 0, H, W)]
        jobs = []
        for region in regions:
            box = _canvas_box(region, (H, W), self.resolution) if use_crop else region
            t, left, b, r = box
            h, w = b - t, r - left
            pads = (*_pad_amounts(h, self.resolution), *_pad_amounts(w, self.resolution))
            known = (~hole[t:b, left:r]).astype(np.float32)
            jobs.append(
                _Job(
                    index,
                    box,
                    region,
                    _reflect(data.rgb[t:b, left:r], pads),
                    _reflect(known, pads),
                    pads,
                )
            )
        return jobs

    def _noise_mode(self, noise_mode: str, canvas: Tuple[int, int]) -> str:
        if noise_mode != "auto":
            return noise_mode
        if not self.generator.use_noise:
            return "none"
        return "const" if canvas == (self.resolution, self.resolution) else "random"

    def _run(
        self, jobs: Sequence[_Job], filled: List[np.ndarray], seed, truncation_psi, noise_mode
    ):
        G = self.generator
        by_shape: dict = {}
        for job in jobs:
            by_shape.setdefault(job.image.shape[:2], []).append(job)
        rng_scope = contextlib.nullcontext()
        if seed is not None:
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            rng_scope = torch.random.fork_rng(devices=devices)
        with rng_scope, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(int(seed))
            for shape, group in by_shape.items():
                for start in range(0, len(group), self.batch_size):
                    batch = group[start : start + self.batch_size]
                    images = torch.from_numpy(np.stack([j.image for j in batch])).permute(
                        0, 3, 1, 2
                    )
                    known = torch.from_numpy(np.stack([j.known for j in batch]))[:, None]
                    images = (images * 2 - 1).to(self.device, self.dtype)
                    known = known.to(self.device, self.dtype)
                    # z and c stay fp32: the mapping network runs in fp32 in half models too
                    z = torch.randn(len(batch), G.z_dim).to(self.device)
                    c = torch.zeros(len(batch), G.c_dim, device=self.device)
                    mode = self._noise_mode(noise_mode, tuple(shape))
                    if self._forward is not None:
                        out = self._forward(images, known, z, c, truncation_psi, mode)
                    else:
                        out = G(images, known, z, c, truncation_psi=truncation_psi, noise_mode=mode)
                    out = ((out.float() + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
                    for job, result in zip(batch, out):
                        self._paste(job, result, filled[job.index])

    @staticmethod
    def _paste(job: _Job, result: np.ndarray, target: np.ndarray) -> None:
        pt, pb, pl, pr = job.pad
        result = result[pt : result.shape[0] - pb, pl : result.shape[1] - pr]
        t, left, _, _ = job.box
        qt, ql, qb, qr = job.paste
        # Only this job's region: neighbouring canvases may overlap its margin.
        target[qt:qb, ql:qr] = result[qt - t : qb - t, ql - left : qr - left]
