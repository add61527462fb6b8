"""The inpainting front door: real images of any size in, filled images out.

Sizes: each side is reflect-padded independently to a multiple of the network's resolution
(512) and cropped back - never padded to a square, which would waste up to 2x compute.
Large images use the crop strategy (each hole region plus a margin of context on its own
canvas, pasted back) and, where even that would not fit in memory, the resize strategy (the
region inpainted at a reduced size, the fill scaled back up): see mat_fast.planning. The
memory a call needs is estimated before it runs (mat_fast.memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import cpu_memory
from .devices import resolve_device
from .errors import InputError, MemoryBudgetError
from .image16 import RGB16Image
from .image_io import compose, to_hole_mask, to_image_data
from .memory import PHOTO_BYTES_PER_PIXEL, available_bytes, forward_bytes, gib
from .model import Generator
from .model.sample_rng import derive_seed, per_sample
from .planning import STRATEGIES, Job, hole_regions, paste
from .prepare import (
    Prepared,
    Preparer,
    keeps_freed_memory,
    make_planner,
    warn_if_degenerate,
)

#: An image or mask as the Inpainter takes and returns it: a PIL image, a 16-bit RGB(A)
#: image (RGB16Image, which PIL has no mode for), a numpy array (H, W[, C]) or a tensor
#: (C, H, W) (masks: (H, W)).
ImageLike = Union[Image.Image, RGB16Image, np.ndarray, torch.Tensor]

log = logging.getLogger("mat_fast")

__all__ = [
    "Inpainter",
    "Prepared",
    "Preparer",
    "hole_regions",
    "random_generator",
    "resolve_device",
]


def random_generator(seed: int = 0, resolution: int = 512, use_noise: bool = True) -> Generator:
    """A seeded, randomly initialised MAT generator: runs the whole pipeline without
    downloading weights (smoke tests, demos). Its fills are colourful noise, not images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(512, 0, 512, resolution, 3, synthesis_kwargs=dict(use_noise=use_noise))
    return G.eval().requires_grad_(False)


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
        keep_freed_memory: Optional[bool] = None,
        max_memory: Optional[int] = None,
    ) -> None:
        """
        Args:
            device: 'auto' (a CUDA GPU if visible, else the CPU), 'cpu', 'cuda', 'cuda:N'.
            batch_size: at most this many equal-size canvases per forward; fewer where
                memory would not hold them, and on the CPU the canvases of one photo run
                one at a time (batching them doubles the peak for no speed gain).
            cuda_graphs: (CUDA only) capture the forward once per canvas shape and replay
                it: faster for repeated same-size images, at the cost of one capture and
                one memory pool per shape (see :class:`_GraphedGenerator`).
            keep_freed_memory: CPU only, and process-wide: glibc's malloc settings are
                changed for the whole process (see :mod:`mat_fast.cpu_memory`). True keeps
                freed memory for reuse (faster forwards, the process keeps its peak);
                False leaves malloc's settings alone; None (default) takes
                ``MAT_FAST_KEEP_FREED_MEMORY`` (1 or 0) when set, else keeps freed memory
                for calls whose canvases have at most ``prepare.KEEP_FREED_MAX_PIXELS`` pixels
                and restores glibc's defaults before larger ones (kept memory raises their
                peak).
            max_memory: bytes a call may use (default: the memory available on the device
                at the time of the call). Calls that would need more are planned smaller
                by the 'auto' strategy or refused with :class:`mat_fast.MemoryBudgetError`.
        """
        if not isinstance(generator, Generator):
            raise TypeError(f"Inpainter needs a mat_fast.Generator; got {type(generator).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        if max_memory is not None and max_memory <= 0:
            raise InputError(f"max_memory must be a positive number of bytes; got {max_memory!r}")
        self.device = resolve_device(device)
        if cuda_graphs and self.device.type != "cuda":
            raise InputError(
                f"cuda_graphs=True needs a CUDA device; this Inpainter runs on {self.device.type}"
            )
        self.dtype = dtype
        self.keep_freed_memory = keep_freed_memory
        self.max_memory = max_memory
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
        mask_threshold: float = 0.5,
        strategy: str = "auto",
        crop_trigger: int = 1024,
        crop_margin: int = 128,
        resize_limit: int = 2048,
    ) -> Union[ImageLike, List[ImageLike]]:
        """Inpaint one image (or a list of images with a list of masks).

        Args:
            image: PIL image, :class:`mat_fast.RGB16Image` (16-bit RGB(A), as
                ``image_io.load_image(path, full_depth=True)`` reads such files), numpy
                array (H, W[, C]) uint8/uint16/float in [0, 1], or tensor (C, H, W); RGB,
                RGBA (alpha kept), grayscale and 16-bit all work.
            mask: same size as the image. ``mask_convention='fill'``: white = region to fill
                (inpainting apps); ``'keep'``: black = hole (upstream MAT's files). A pixel
                is white when its value is at least ``mask_threshold`` of the full range
                (the brightest channel of a colour mask; transparent pixels of a mask with
                alpha are not painted).
            seed: makes the result reproducible (latent z, dropout and noise draws) without
                touching the global RNG; None draws fresh randomness. 0 <= seed < 2**63.
                A list (one seed per image) gives each image its own random draws: its
                fill then depends on its seed, not on the other images of the call or its
                place among them (exactly on the CPU, where such canvases run one at a
                time; on CUDA batched canvases may differ by float rounding).
            truncation_psi: < 1 pulls the style latent towards the average (safer fills).
            noise_mode: 'auto' ('const' at the training resolution, else 'random'; 'none'
                for checkpoints without noise), 'random', 'const' or 'none'.
            strategy: 'full' (pad the whole image), 'crop' (each hole region with
                ``crop_margin`` pixels of context), 'resize' (like crop; regions longer
                than ``resize_limit`` are inpainted scaled down to it and the fill scaled
                back up) or 'auto' (full up to ``crop_trigger`` px on the longer side, else
                crop; any canvas that would not fit in memory is scaled down until it
                does). See :mod:`mat_fast.planning`.

        Returns:
            The filled image(s), same type, mode, dtype and size as the input(s); every
            pixel outside the holes is exactly the input's.
        """
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
        masks = [mask] if single else list(mask) if isinstance(mask, (list, tuple)) else None
        if masks is None or len(masks) != len(images):
            raise InputError("pass one mask per image (a list of masks for a list of images)")
        self._check_plan_options(strategy, resize_limit)
        self._check_run_options(seed, truncation_psi, noise_mode)
        self._check_seeds(seed, len(images))
        datas = [to_image_data(im) for im in images]
        holes = [
            to_hole_mask(m, d.size, mask_convention, mask_threshold) for m, d in zip(masks, datas)
        ]
        for index, hole in enumerate(holes):
            warn_if_degenerate(hole, f"image {index}")
        kept = self._set_malloc(holes)
        budget = self._budget(sum(h.size for h in holes))
        planner = make_planner(self.resolution, self.device.type, self.dtype, kept, budget)
        prepared = [
            Prepared(
                d, h, planner.plan(0, d.rgb, h, strategy, crop_trigger, crop_margin, resize_limit)
            )
            for d, h in zip(datas, holes)
        ]
        results = self._fill(prepared, seed, truncation_psi, noise_mode, kept, budget)
        return results[0] if single else results

    # -- in two steps (folder mode: preparing in DataLoader workers) ---------------------

    def preparer(
        self,
        *,
        mask_convention: str = "fill",
        mask_threshold: float = 0.5,
        strategy: str = "auto",
        crop_trigger: int = 1024,
        crop_margin: int = 128,
        resize_limit: int = 2048,
    ) -> "Preparer":
        """What :meth:`__call__` does to an image before the network (its float view, the
        hole, the padded or cropped canvases), as a picklable callable that needs no
        network: DataLoader workers run it while the generator runs (folder mode), and
        :meth:`fill` takes its results. The arguments are :meth:`__call__`'s. The memory
        budget is taken now (``max_memory``, else what the device has free now) and each
        image's own pixels are subtracted from it, as a one-image call would."""
        self._check_plan_options(strategy, resize_limit)
        budget = self.max_memory if self.max_memory is not None else available_bytes(self.device)
        return Preparer(
            self.resolution, self.device.type, self.dtype, self._keep_choice(), budget,
            mask_convention, mask_threshold, strategy, crop_trigger, crop_margin, resize_limit,
        )  # fmt: skip

    def fill(
        self,
        prepared: Sequence["Prepared"],
        *,
        seed=None,
        truncation_psi: float = 1.0,
        noise_mode: str = "auto",
    ) -> List[ImageLike]:
        """Inpaint images a :meth:`preparer` prepared: the same results as :meth:`__call__`
        on those images with those options (``seed`` as there: one int, or a list with one
        seed per image)."""
        self._check_run_options(seed, truncation_psi, noise_mode)
        self._check_seeds(seed, len(prepared))
        holes = [p.hole for p in prepared]
        kept = self._set_malloc(holes)
        budget = self._budget(sum(h.size for h in holes))
        return self._fill(list(prepared), seed, truncation_psi, noise_mode, kept, budget)

    def _fill(self, prepared, seed, truncation_psi, noise_mode, kept, budget) -> List[ImageLike]:
        """Run every canvas of ``prepared`` and give back the images in the inputs' types."""
        jobs: List[Job] = [
            dataclasses.replace(job, index=index)
            for index, one in enumerate(prepared)
            for job in one.jobs
        ]
        filled = [one.data.rgb.copy() for one in prepared]
        try:
            self._run(jobs, filled, seed, truncation_psi, noise_mode, kept, budget)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not _is_out_of_memory(err):
                raise
            largest = max((j.image.shape[0] * j.image.shape[1] for j in jobs), default=0)
            need = forward_bytes(self.device.type, self.dtype, kept, largest)
            raise MemoryBudgetError(
                f"ran out of memory on the {self.device} (largest canvas "
                f"{largest / 1e6:.1f} Mpx, estimated {gib(need)}); free memory, "
                f"use a bfloat16 dtype, the 'resize' strategy or a smaller memory budget"
            ) from None
        return [compose(one.data, f, one.hole) for one, f in zip(prepared, filled)]

    def _check_seeds(self, seed, count: int) -> None:
        if isinstance(seed, (list, tuple)):
            if len(seed) != count or None in seed:
                raise InputError("pass one seed per image (a list of seeds for a list of images)")
            if self._forward is not None:
                raise InputError("per-image seeds do not work with cuda_graphs=True")

    def _check_plan_options(self, strategy, resize_limit) -> None:
        if strategy not in STRATEGIES:
            raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if resize_limit < self.resolution // 2:
            raise InputError(
                f"resize_limit must be at least {self.resolution // 2} px; got {resize_limit}"
            )

    def _check_run_options(self, seed, truncation_psi, noise_mode) -> None:
        if noise_mode not in ("auto", "random", "const", "none"):
            raise InputError(
                f"noise_mode must be 'auto', 'random', 'const' or 'none'; got {noise_mode!r}"
            )
        if noise_mode in ("random", "const") and not self.generator.use_noise:
            log.warning(
                "mat_fast: noise_mode=%r has no effect: this checkpoint has no noise inputs",
                noise_mode,
            )
        for one in seed if isinstance(seed, (list, tuple)) else [seed]:
            if one is not None and not (isinstance(one, (int, np.integer)) and 0 <= one < 2**63):
                raise InputError(f"seed must be an integer in [0, 2**63); got {one!r}")
        if not np.isfinite(truncation_psi):
            raise InputError(f"truncation_psi must be a finite number; got {truncation_psi!r}")

    def _keep_choice(self) -> Optional[bool]:
        """keep_freed_memory, else MAT_FAST_KEEP_FREED_MEMORY: True, False, or None (by size)."""
        choice = self.keep_freed_memory
        env = os.environ.get(cpu_memory.ENV_VAR, "").strip()
        if choice is None and env in ("0", "1"):
            choice = env == "1"
        return choice

    def _set_malloc(self, holes) -> bool:
        """Apply the keep_freed_memory choice for this call; whether freed memory is kept."""
        if self.device.type != "cpu":
            return False
        choice = self._keep_choice()
        if choice is False:  # malloc's settings left alone (kept only if other code did)
            return cpu_memory.freed_memory_kept()
        # by the largest photo (an upper bound of its canvases) unless kept by choice
        if keeps_freed_memory(choice, max((h.size for h in holes), default=0)):
            return cpu_memory.keep_freed_memory()
        if cpu_memory.freed_memory_kept():  # only a large photo with no choice gets here
            cpu_memory.return_freed_memory()
        return False

    def _budget(self, photo_pixels: int) -> Optional[int]:
        """Bytes the forwards may use: the budget less what the photos themselves take."""
        budget = self.max_memory if self.max_memory is not None else available_bytes(self.device)
        if budget is None:
            return None
        if self.device.type == "cpu":
            budget -= PHOTO_BYTES_PER_PIXEL * photo_pixels
        return max(budget, 0)

    def _noise_mode(self, noise_mode: str, canvas) -> str:
        if noise_mode != "auto":
            return noise_mode
        if not self.generator.use_noise:
            return "none"
        return "const" if canvas == (self.resolution, self.resolution) else "random"

    def _batches(self, group: Sequence[Job], kept: bool, budget: Optional[int]):
        """Split equal-shape jobs into batches that fit: canvases of one photo run one at a
        time on the CPU (a batch of crops doubles the peak for no gain there)."""
        canvas = group[0].image.shape[0] * group[0].image.shape[1]
        size = self.batch_size
        while size > 1 and budget is not None:
            if forward_bytes(self.device.type, self.dtype, kept, canvas, size) <= budget:
                break
            size -= 1
        batch: List[Job] = []
        for job in group:
            alone = self.device.type == "cpu" and job.cropped
            if batch and (
                len(batch) >= size or alone or batch[-1].cropped and self.device.type == "cpu"
            ):
                yield batch
                batch = []
            batch.append(job)
        if batch:
            yield batch

    def _run(self, jobs, filled: List[np.ndarray], seed, truncation_psi, noise_mode, kept, budget):
        G = self.generator
        by_shape: dict = {}
        for job in jobs:
            by_shape.setdefault(job.image.shape[:2], []).append(job)
        if isinstance(seed, (list, tuple)):
            # a canvas's seed: its image's and its place among that image's canvases (in
            # planning order, which depends on that image only)
            canvas_seeds, ordinal = {}, {}
            for job in jobs:
                number = ordinal[job.index] = ordinal.get(job.index, -1) + 1
                canvas_seeds[id(job)] = derive_seed(seed[job.index], number)
            self._run_per_image(
                by_shape, filled, canvas_seeds, truncation_psi, noise_mode, kept, budget
            )
            return
        rng_scope = contextlib.nullcontext()
        if seed is not None:
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            rng_scope = torch.random.fork_rng(devices=devices)
        with rng_scope, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(int(seed))
            for shape, group in by_shape.items():
                for batch in self._batches(group, kept, budget):
                    # z stays fp32: the mapping network runs in fp32 in half models too
                    z = torch.randn(len(batch), G.z_dim).to(self.device)
                    mode = self._noise_mode(noise_mode, tuple(shape))
                    self._forward_batch(batch, z, truncation_psi, mode, filled)

    def _run_per_image(
        self, by_shape, filled, canvas_seeds, truncation_psi, noise_mode, kept, budget
    ):
        """Like _run, but each canvas draws z, dropout and noise from its own generator
        (seeded by ``canvas_seeds[id(job)]``), so its fill does not depend on the other
        canvases of the call (on CUDA, batched canvases may differ by float rounding)."""
        with torch.inference_mode():
            for shape, group in by_shape.items():
                # On the CPU each canvas runs alone: batching gains nothing there, and a
                # batch's kernels round differently from one canvas's (a fill would then
                # depend on its batch by float rounding, +-1 level in a few pixels).
                alone = self.device.type == "cpu"
                for batch in [[j] for j in group] if alone else self._batches(group, kept, budget):
                    generators = [
                        torch.Generator(self.device).manual_seed(canvas_seeds[id(job)])
                        for job in batch
                    ]
                    z = torch.cat(
                        [
                            torch.randn(1, self.generator.z_dim, generator=g, device=self.device)
                            for g in generators
                        ]
                    )
                    mode = self._noise_mode(noise_mode, tuple(shape))
                    with per_sample(generators):
                        self._forward_batch(batch, z, truncation_psi, mode, filled)

    def _forward_batch(self, batch, z, truncation_psi, mode, filled) -> None:
        G = self.generator
        images = torch.from_numpy(np.stack([j.image for j in batch])).permute(0, 3, 1, 2)
        known = torch.from_numpy(np.stack([j.known for j in batch]))[:, None]
        images = (images * 2 - 1).to(self.device, self.dtype)
        known = known.to(self.device, self.dtype)
        c = torch.zeros(len(batch), G.c_dim, device=self.device)
        if self._forward is not None:
            out = self._forward(images, known, z, c, truncation_psi, mode)
        else:
            out = G(images, known, z, c, truncation_psi=truncation_psi, noise_mode=mode)
        out = ((out.float() + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        del images, known
        for job, result in zip(batch, out):
            paste(job, result, filled[job.index])


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text
