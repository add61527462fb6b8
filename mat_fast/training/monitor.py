"""What a training run shows and writes (rank 0): a tqdm bar with kimg, sec/kimg, img/s
and the main losses; at every tick one JSON line in ``stats.jsonl`` with every value the
loss reports plus progress, timing and memory (upstream's names, each ``{num, mean, std}``
over the values of every rank, as upstream's training_stats: each rank collects its own and
rank 0 merges their counts, sums and sums of squares),
the same as TensorBoard scalars when the ``tensorboard`` package is installed; and PNG
grids of G_ema's output on fixed validation images (``reals.png``, ``masks.png``,
``fakes_init.png``, then ``fakes-NNNNNNNNN.png`` (images so far) with every snapshot)."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections import defaultdict

import numpy as np
import torch
from PIL import Image

from ..distributed import gather
from .data import ImageMaskDataset

log = logging.getLogger("mat_fast")

BAR_LOSSES = {"Loss/G/loss": "G", "Loss/D/loss": "D", "Loss/G/pcp_loss": "pcp"}


def save_image_grid(images: np.ndarray, path: str, drange, columns: int) -> None:
    lo, hi = drange
    img = (np.asarray(images, dtype=np.float32) - lo) * (255 / (hi - lo))
    img = np.rint(img).clip(0, 255).astype(np.uint8)
    n, c, h, w = img.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * h, columns * w, c), dtype=np.uint8)
    for i in range(n):
        y, x = divmod(i, columns)
        canvas[y * h : (y + 1) * h, x * w : (x + 1) * w] = img[i].transpose(1, 2, 0)
    Image.fromarray(canvas[:, :, 0] if c == 1 else canvas).save(path)


def _rss_gb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError):
        return float("nan")


def _moments(values) -> dict:
    """name -> (count, sum, sum of squares) in float64: what ranks exchange at a tick."""
    moments = {}
    for name, chunks in values.items():
        v = torch.cat(chunks).double()
        moments[name] = (v.numel(), float(v.sum()), float(v.square().sum()))
    return moments


def merge_moments(per_rank) -> dict:
    """Every rank's moments -> ``{name: {num, mean, std}}`` over all their values."""
    totals = defaultdict(lambda: [0, 0.0, 0.0])
    for moments in per_rank:
        for name, (num, total, squares) in moments.items():
            t = totals[name]
            t[0], t[1], t[2] = t[0] + num, t[1] + total, t[2] + squares
    stats = {}
    for name, (num, total, squares) in sorted(totals.items()):
        mean = total / num
        stats[name] = dict(num=num, mean=mean, std=max(squares / num - mean * mean, 0.0) ** 0.5)
    return stats


class Monitor:
    """Every rank collects what the loss reports (``report``, ``phase_time``) and calls
    ``tick``; only the writing rank (``enabled``: rank 0) shows the bar and writes files."""

    def __init__(self, trainer, enabled: bool):
        self.t, self.enabled = trainer, enabled
        self.values = defaultdict(list)
        self.jsonl = self.tb = self.bar = None
        self.grid = None

    # -- collection (every rank collects; only rank 0 writes) -----------------------------

    def report(self, name: str, value: torch.Tensor) -> None:
        self.values[name].append(value.detach().float().flatten())

    def phase_time(self, name: str, t0: float) -> None:
        if self.t.device.type == "cuda":
            torch.cuda.synchronize(self.t.device)
        self.values[f"Timing/{name}"].append(torch.tensor([(time.perf_counter() - t0) * 1e3]))

    # -- the run ----------------------------------------------------------------------------

    def start(self, total_nimg: int) -> None:
        self.start_time = self.tick_time = time.time()
        self.tick_nimg = self.t.nimg
        if not self.enabled:
            return
        outdir = self.t.o.outdir
        self.jsonl = open(os.path.join(outdir, "stats.jsonl"), "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(outdir)
        except ImportError:
            log.info("mat-fast train: no tensorboard package; stats go to stats.jsonl only")
        self._setup_grid()
        from tqdm import tqdm

        self.bar = tqdm(
            total=total_nimg, initial=self.t.nimg, unit="img", file=sys.stderr,
            disable=not self.t.o.progress, dynamic_ncols=True,
        )  # fmt: skip
        self.last_step_time = time.time()

    def step(self) -> None:
        if self.bar is None:
            return
        now = time.time()
        seconds, self.last_step_time = now - self.last_step_time, now
        batch = self.t.spec.batch
        post = {"kimg": f"{self.t.nimg / 1e3:.3f}", "sec/kimg": f"{seconds / batch * 1e3:.1f}"}
        post["img/s"] = f"{batch / max(seconds, 1e-9):.2f}"
        for name, short in BAR_LOSSES.items():
            if self.values.get(name):
                post[short] = f"{float(self.values[name][-1].mean()):.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(batch)

    def tick(self, snapshot: bool) -> None:
        """Every rank calls it (their values are gathered); the writing rank writes."""
        t = self.t
        per_rank = gather(_moments(self.values), t.rank, t.world_size)
        self.values.clear()
        if not self.enabled:
            return
        self.step()
        now = time.time()
        nimg = max(t.nimg - self.tick_nimg, 1)
        scalars = {
            "Progress/tick": t.tick,
            "Progress/kimg": t.nimg / 1e3,
            "Timing/total_sec": now - self.start_time,
            "Timing/sec_per_tick": now - self.tick_time,
            "Timing/sec_per_kimg": (now - self.tick_time) / nimg * 1e3,
            "Timing/img_per_sec": nimg / max(now - self.tick_time, 1e-9),
            "Resources/cpu_mem_gb": _rss_gb(),
            "Resources/peak_cpu_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "Resources/peak_gpu_mem_gb": 0.0,
        }
        if t.device.type == "cuda":
            scalars["Resources/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(t.device) / 2**30
            torch.cuda.reset_peak_memory_stats(t.device)
        stats = merge_moments(per_rank)
        for name, value in scalars.items():
            stats[name] = dict(num=1, mean=float(value), std=0.0)
        self.jsonl.write(json.dumps(dict(stats, timestamp=now)) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for name, value in stats.items():
                self.tb.add_scalar(name, value["mean"], global_step=int(t.nimg / 1e3), walltime=now)
            self.tb.flush()
        if snapshot and self.grid is not None:
            self._save_fakes(f"fakes-{t.nimg:09d}.png")  # as the snapshot folders
        self.tick_time, self.tick_nimg = time.time(), t.nimg

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()

    # -- the validation grid ------------------------------------------------------------------

    def _setup_grid(self) -> None:
        o, spec = self.t.o, self.t.spec
        if o.grid <= 0:
            return
        val = ImageMaskDataset(
            o.data_val or o.data, spec.resolution, seed=o.seed + 1, mask_setting=o.mask_setting,
            check_first=0,
        )  # fmt: skip
        n = min(o.grid, len(val))
        items = [val[i] for i in range(n)]
        images = np.stack([i[0].numpy() for i in items])
        masks = np.stack([i[1].numpy() for i in items])
        self.columns = min(n, 4)
        gen = torch.Generator().manual_seed(o.seed)
        self.grid = dict(
            img=torch.from_numpy(images).float() / 127.5 - 1,
            mask=torch.from_numpy(masks),
            z=torch.randn([n, self.t.G.z_dim], generator=gen),
        )
        outdir = o.outdir
        if not os.path.exists(os.path.join(outdir, "reals.png")):
            save_image_grid(images, os.path.join(outdir, "reals.png"), (0, 255), self.columns)
            save_image_grid(masks, os.path.join(outdir, "masks.png"), (0, 1), self.columns)
            self._save_fakes("fakes_init.png")

    @torch.no_grad()
    def _save_fakes(self, name: str) -> None:
        G, dev, bg = self.t.G_ema, self.t.device, self.t.spec.batch_gpu
        g = self.grid
        c = torch.zeros([len(g["z"]), G.c_dim], device=dev)
        out = []
        for i in range(0, len(g["z"]), bg):
            part = slice(i, i + bg)
            img = G(g["img"][part].to(dev), g["mask"][part].to(dev), g["z"][part].to(dev),
                    c[part], noise_mode="const")  # fmt: skip
            out.append(img.float().cpu())
        path = os.path.join(self.t.o.outdir, name)
        save_image_grid(torch.cat(out).numpy(), path, (-1, 1), self.columns)
