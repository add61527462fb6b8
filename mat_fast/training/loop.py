"""``mat-fast train``: upstream's training loop (``training/training_loop.py``), drop-in.

Kept from upstream: Adam with betas (0, 0.99) and eps 1e-8; a separate learning rate for
the generator's transformer parameters (names containing 'tran'/'Tran') with ``--lrt``;
lazy regularisation (G every 4 steps, D every 16) with the lr and betas of each optimiser
corrected by ``interval / (interval + 1)`` and the regularisation gradients scaled by the
interval; the phases Gmain, Greg, Dmain, Dreg in that order, each accumulating
``batch / (batch_gpu x processes)`` rounds; NaN/inf gradients replaced before each step;
G_ema updated after every step with half-life ``ema_kimg`` and ramp-up; ticks every
``tick`` kimg, snapshots every ``snap`` ticks and at the end.

Different, on purpose: every random draw of a step (latents, the loss's style mixing,
noise and dropout) is keyed by (seed, step, phase, sample chunk) and every sample's crop,
flip and mask by its position in the stream, so the weights do not depend on the number of
processes or DataLoader workers, and a resumed run repeats the uninterrupted one exactly
(CPU, fp32). Networks start from the same seed on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .. import backend
from ..errors import CheckpointError
from ..ops.resample.cpu import half_convolutions_in_fp32
from . import config as cfg
from .data import ImageMaskDataset, make_loader, next_batch
from .loss import TwoStageLoss
from .monitor import Monitor
from .networks import build_networks, ema_update, load_start_weights
from .snapshots import read_snapshot, rng_state, set_rng_state, write_snapshot
from .vgg_weights import TORCHVISION_VGG19

log = logging.getLogger("mat_fast")


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


class MappingInFp32(torch.nn.Module):
    """G's mapping network with autocast off: it updates its fp32 ``w_avg`` from its output
    (which autocast would make bf16/fp16), and upstream keeps the style path in fp32."""

    def __init__(self, mapping: torch.nn.Module):
        super().__init__()
        self.mapping = mapping

    def forward(self, z, c, **kwargs):
        with torch.autocast(z.device.type, enabled=False):
            return self.mapping(z.float(), c, **kwargs)


def make_optimizer(module, lr, lrt, interval):
    """Adam with upstream's lazy-regularisation correction (and ``lrt`` for G's transformer)."""
    ratio = interval / (interval + 1)
    betas = tuple(b**ratio for b in cfg.ADAM_BETAS)
    if lrt is None:
        groups = [{"params": list(module.parameters())}]
    else:
        named = list(module.named_parameters())
        is_tran = [("tran" in n or "Tran" in n) for n, _ in named]
        groups = [
            {"params": [p for (_, p), t in zip(named, is_tran) if not t]},
            {"params": [p for (_, p), t in zip(named, is_tran) if t], "lr": lrt * ratio},
        ]
    return torch.optim.Adam(groups, lr=lr * ratio, betas=betas, eps=cfg.ADAM_EPS)


def _key(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


#: autocast's dtype per --precision (fp32: no autocast)
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def half_is_slow_here(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` autocasts on a CPU without oneDNN kernels for it: autocast
    then sends the perceptual loss's VGG convolutions and the transformer's matmuls to
    torch's generic half kernels, and a step takes many times fp32's."""
    if device.type != "cpu" or precision == "fp32":
        return False
    return half_convolutions_in_fp32(HALF_DTYPES[precision])


def warn_where_half_is_slow(precision: str, device: torch.device) -> None:
    """Log a warning that names the fix where :func:`half_is_slow_here`."""
    if not half_is_slow_here(precision, device):
        return
    log.warning(
        "mat-fast train: --precision %s on this CPU is many times slower than fp32: it has "
        "no oneDNN %s kernels, so autocast runs the perceptual loss's VGG and the "
        "transformer's matmuls on torch's generic ones (the VGG's forward and backward at "
        "256: 276 s vs 1.4 s in fp32 on a 2-core AVX2 box). Train with --precision fp32 "
        "(the default) here; %s pays off on GPUs and on CPUs with native %s kernels "
        "(AVX512-BF16, AMX).",
        precision, precision, precision, precision,
    )  # fmt: skip


class Trainer:
    def __init__(self, options: cfg.TrainOptions, rank: int = 0, world_size: int = 1):
        self.o, self.rank, self.world_size = options, rank, world_size
        self.spec = spec = cfg.resolve_spec(options, world_size)
        self.device = self._device()
        if rank == 0:
            warn_where_half_is_slow(options.precision, self.device)
        if options.backend:
            backend.set_backend(options.backend, self.device)
        self.rounds = spec.batch // (spec.batch_gpu * world_size)
        self.dataset = ImageMaskDataset(  # first: a bad dataset fails before any network
            options.data, spec.resolution, mirror=options.mirror, seed=options.seed,
            mask_setting=options.mask_setting,
        )  # fmt: skip
        np.random.seed(options.seed * world_size + rank)  # as upstream, for any global use
        torch.manual_seed(options.seed)  # the same initial networks on every rank
        self.G, self.D, self.G_ema = build_networks(options, spec, self.device)
        self.step = self.nimg = self.tick = self.tick_start_nimg = 0
        snapshot = read_snapshot(options.resume) if options.resume else None
        if snapshot is None and options.finetune:
            load_start_weights(options.finetune, self.G, self.D, self.G_ema)
        self._wrap_ddp()
        vgg = TORCHVISION_VGG19 if options.vgg == "download" else options.vgg
        self.loss = TwoStageLoss(
            self.device, self.G_mapping, self.G_synthesis, self.D_ddp, r1_gamma=spec.gamma,
            pcp_ratio=spec.pcp_ratio, vgg_weights=vgg, report=self._report,
        )  # fmt: skip
        if options.arch == "tiny" and options.vgg is None:
            from .tiny import TinyPerceptualLoss

            self.loss.pcp = TinyPerceptualLoss().to(self.device)
        self.phases = []
        for name, module, interval in (
            ("G", self.G, cfg.G_REG_INTERVAL),
            ("D", self.D, cfg.D_REG_INTERVAL),
        ):
            lrt = spec.lrt if name == "G" else None
            opt = make_optimizer(module, spec.lr, lrt, interval)
            self.phases += [Phase(name + "main", module, opt, 1)]
            self.phases += [Phase(name + "reg", module, opt, interval)]
        self.scaler = None
        if options.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        self.monitor = Monitor(self, enabled=rank == 0)
        if snapshot is not None:
            self._restore(snapshot)

    # ------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        want = self.o.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(want)
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            device = torch.device("cuda", device.index if device.index is not None else local)
            torch.cuda.set_device(device)
        return device

    def _wrap_ddp(self):
        mapping = self.G.mapping if self.o.precision == "fp32" else MappingInFp32(self.G.mapping)
        self.G_mapping, self.G_synthesis, self.D_ddp = mapping, self.G.synthesis, self.D
        if self.world_size == 1:
            return
        ids = [self.device] if self.device.type == "cuda" else None

        def wrap(module):
            module.requires_grad_(True)
            wrapped = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=ids, broadcast_buffers=False
            )
            module.requires_grad_(False)
            return wrapped

        self.G_mapping, self.G_synthesis = wrap(mapping), wrap(self.G.synthesis)
        self.D_ddp = wrap(self.D)

    def _report(self, name, value):
        self.monitor.report(name, value)

    def _autocast(self):
        if self.o.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=HALF_DTYPES[self.o.precision])

    # ------------------------------------------------------------------------------------

    def state(self) -> dict:
        return dict(
            step=self.step, nimg=self.nimg, tick=self.tick, tick_start_nimg=self.tick_start_nimg,
            opt={p.name: p.opt.state_dict() for p in self.phases if p.name.endswith("main")},
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=self._gather_rng(), world_size=self.world_size,
        )  # fmt: skip

    def _gather_rng(self) -> list:
        mine = rng_state()
        if self.world_size == 1:
            return [mine]
        everyone = [None] * self.world_size
        torch.distributed.all_gather_object(everyone, mine)
        return everyone

    def _restore(self, snap: dict) -> None:
        where = snap["path"]
        saved = snap["options"]
        differ = [k for k in cfg.RESUME_FIXED if saved.get(k) != getattr(self.o, k)]
        if differ:
            shown = ", ".join(f"{k} {saved.get(k)!r} vs {getattr(self.o, k)!r}" for k in differ)
            raise CheckpointError(
                f"--resume {where}: the run was started with other options ({shown}); "
                f"resume with the run's own options (only --kimg, --snap, --tick, --workers "
                f"may change)"
            )
        try:
            for name, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
                module.load_state_dict(snap[name], strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"--resume {where}: {str(e).splitlines()[0]}") from None
        st = snap["state"]
        self.step, self.nimg, self.tick = st["step"], st["nimg"], st["tick"]
        self.tick_start_nimg = st["tick_start_nimg"]
        for p in self.phases:
            if p.name.endswith("main"):
                p.opt.load_state_dict(st["opt"][p.name])
        if self.scaler is not None and st["scaler"]:
            self.scaler.load_state_dict(st["scaler"])
        rngs = st["rng"]
        set_rng_state(rngs[self.rank] if len(rngs) == self.world_size else rngs[0])
        self.tick += 1  # the snapshot was taken at the end of that tick
        self.tick_start_nimg = self.nimg

    # ------------------------------------------------------------------------------------

    def run_phase(self, index, phase, imgs, masks, cs, zs) -> None:
        phase.opt.zero_grad(set_to_none=True)
        phase.module.requires_grad_(True)
        for r, (img, mask, c, z) in enumerate(zip(imgs, masks, cs, zs)):
            chunk = self.rank * self.rounds + r
            torch.manual_seed(_key(self.o.seed, self.step, index, chunk))
            gain = phase.interval
            if self.scaler is not None:
                self.scaler.scale(torch.ones((), device=self.device))  # creates the scale
                gain = gain * self.scaler.get_scale()
            with self._autocast():
                self.loss.accumulate_gradients(
                    phase.name, img, mask, c, z, c, sync=r == self.rounds - 1, gain=gain
                )  # fmt: skip
        phase.module.requires_grad_(False)
        params = [p for p in phase.module.parameters() if p.grad is not None]
        if not params:
            return  # Greg: MAT has no path-length penalty, so no gradients and no step
        if self.scaler is not None:
            self.scaler.step(phase.opt)  # unscales, skips the step on inf/NaN
            self.scaler.update()
            return
        for p in params:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        phase.opt.step()

    def train_step(self, batch) -> None:
        spec = self.spec
        img, mask, c = (t.to(self.device, non_blocking=True) for t in batch)
        imgs = (img.to(torch.float32) / 127.5 - 1).split(spec.batch_gpu)
        masks = mask.to(torch.float32).split(spec.batch_gpu)
        cs = c.to(torch.float32).split(spec.batch_gpu)
        # Every phase's latents for the whole global batch, drawn alike on every rank.
        gen = torch.Generator().manual_seed(_key(self.o.seed, self.step, 0x2))
        all_z = torch.randn([len(self.phases) * spec.batch, self.G.z_dim], generator=gen)
        share = spec.batch // self.world_size
        for index, phase in enumerate(self.phases):
            if self.step % phase.interval:
                continue
            z = all_z[index * spec.batch :][self.rank * share :][:share].to(self.device)
            t0 = time.perf_counter()
            self.run_phase(index, phase, imgs, masks, cs, z.split(spec.batch_gpu))
            self.monitor.phase_time(phase.name, t0)
        ema_update(self.G_ema, self.G, spec, self.nimg)
        self.nimg += spec.batch
        self.step += 1

    def train(self) -> Optional[str]:
        """Run to ``kimg``; returns the last snapshot's folder (rank 0) or None."""
        o, spec = self.o, self.spec
        total = int(round(spec.total_kimg * 1000))
        tick_nimg = max(1, int(round(o.tick * 1000)))
        loader = make_loader(
            self.dataset, spec.batch, self.rank, self.world_size, self.step, o.workers
        )
        batches = iter(loader)
        self.monitor.start(total)
        last = None
        while self.nimg < total:
            self.train_step(next_batch(batches))
            done = self.nimg >= total
            if not done and self.tick != 0 and self.nimg < self.tick_start_nimg + tick_nimg:
                self.monitor.step()
                continue
            snap = done or self.tick % o.snap == 0
            state = self.state() if snap else None  # (every rank: the RNGs are gathered)
            self.monitor.tick(snapshot=snap)  # every rank: their stats are gathered
            if self.rank == 0 and snap:
                nets = dict(G=self.G, G_ema=self.G_ema, D=self.D)
                last = write_snapshot(o.outdir, self.nimg, nets, state, o.to_json())
            self.tick += 1
            self.tick_start_nimg = self.nimg
        self.monitor.close()
        del batches
        return last


def run_training(options: cfg.TrainOptions) -> Optional[str]:
    """Entry point for one process: torchrun's environment (WORLD_SIZE, RANK) makes it one
    of several (NCCL on GPUs, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    initialised = False
    if world_size > 1 and not torch.distributed.is_initialized():
        use_cuda = options.device != "cpu" and torch.cuda.is_available()
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        initialised = True
    try:
        if not options.resume and os.path.isfile(os.path.join(options.outdir, "latest")):
            raise CheckpointError(
                f"--outdir {options.outdir} holds a training run already: pass --resume "
                f"{options.outdir} to continue it, or choose another --outdir"
            )
        if rank == 0:
            os.makedirs(options.outdir, exist_ok=True)
        return Trainer(options, rank, world_size).train()
    finally:
        if initialised:
            torch.distributed.destroy_process_group()
