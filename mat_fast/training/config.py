"""``mat-fast train``'s options and upstream's configs (train.py's ``cfg_specs``).

Upstream's places256/places512/celeba512: 8 reference GPUs, batch 64 (8 per GPU), minibatch
std group 8, lr 0.002, R1 gamma 10, EMA half-life 10 kimg, no EMA ramp-up, 8 mapping
layers. ``auto`` scales with the resolution and the number of processes (StyleGAN2-ADA's
heuristics, 2 mapping layers, ramp-up 0.05). Flags override them as in upstream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

PRECISIONS = ("fp32", "bf16", "fp16")
ARCHS = ("mat", "tiny")

CFG_SPECS = {
    "places256": dict(ref_gpus=8, kimg=50000, mb=64, mbstd=8, lrate=0.002, gamma=10, ema=10, ramp=None, map=8, res=256),
    "places512": dict(ref_gpus=8, kimg=50000, mb=64, mbstd=8, lrate=0.002, gamma=10, ema=10, ramp=None, map=8, res=512),
    "celeba512": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, lrate=0.002, gamma=10, ema=10, ramp=None, map=8, res=512),
    "auto": dict(ref_gpus=-1, kimg=25000, mb=-1, mbstd=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=2, res=None),
}  # fmt: skip

G_REG_INTERVAL = 4
D_REG_INTERVAL = 16
ADAM_BETAS = (0.0, 0.99)
ADAM_EPS = 1e-8


class ConfigError(ValueError):
    """Options that cannot make a training run (message says which and how to fix)."""


@dataclass
class TrainOptions:
    data: str
    outdir: str
    cfg: str = "auto"
    resolution: Optional[int] = None  # default: the cfg's (auto: 512)
    kimg: Optional[float] = None
    batch: Optional[int] = None
    batch_gpu: Optional[int] = None
    gamma: Optional[float] = None
    pr: Optional[float] = None  # perceptual loss ratio
    lr: Optional[float] = None
    lrt: Optional[float] = None  # the transformer's learning rate (G only)
    ema: Optional[float] = None  # EMA half-life in kimg
    mirror: bool = False
    seed: int = 0
    snap: int = 50  # ticks between snapshots
    tick: float = 4.0  # kimg per tick (upstream's kimg_per_tick)
    workers: int = 3
    precision: str = "fp32"
    device: str = "auto"
    backend: Optional[str] = None
    arch: str = "mat"
    vgg: Optional[str] = "download"  # 'download', a path, or None (random VGG)
    mask_setting: str = "large"
    resume: Optional[str] = None  # a run folder or snapshot folder of mat_fast
    finetune: Optional[str] = None  # an upstream .pkl or a mat_fast snapshot: weights only
    grid: int = 8  # validation images in the snapshot PNGs (0: none)
    data_val: Optional[str] = None
    progress: bool = True

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


#: Options a resumed run must share with the snapshot for the exact continuation.
RESUME_FIXED = ("cfg", "resolution", "batch", "batch_gpu", "gamma", "pr", "lr", "lrt", "ema",
                "mirror", "seed", "arch", "mask_setting", "precision")  # fmt: skip


@dataclass
class Spec:
    resolution: int
    total_kimg: float
    batch: int
    batch_gpu: int
    mbstd: int
    lr: float
    lrt: Optional[float]
    gamma: float
    pcp_ratio: float
    ema_kimg: float
    ema_rampup: Optional[float]
    mapping_layers: int


def resolve_spec(o: TrainOptions, world_size: int) -> Spec:
    """Upstream's train.py arithmetic for the config and flags."""
    if o.cfg not in CFG_SPECS:
        raise ConfigError(f"--cfg {o.cfg!r}: choose one of {', '.join(CFG_SPECS)}")
    if o.precision not in PRECISIONS:
        raise ConfigError(f"--precision {o.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if o.arch not in ARCHS:
        raise ConfigError(f"--arch {o.arch!r}: choose one of {', '.join(ARCHS)}")
    s = dict(CFG_SPECS[o.cfg])
    res = o.resolution or s["res"] or 512
    if res & (res - 1) or not (16 <= res <= 1024) or (o.arch == "mat" and res < 128):
        raise ConfigError(f"--resolution {res}: MAT trains at a power of two from 128 to 1024")
    if s["res"] and o.resolution and o.resolution != s["res"]:
        raise ConfigError(f"--cfg {o.cfg} trains at {s['res']}, not --resolution {res}")
    if o.cfg == "auto":
        s["ref_gpus"] = world_size
        s["mb"] = max(min(world_size * min(4096 // res, 32), 64), world_size)
        s["mbstd"] = min(s["mb"] // world_size, 4)
        s["lrate"] = 0.002 if res >= 1024 else 0.0025
        s["gamma"] = 0.0002 * res**2 / s["mb"]
        s["ema"] = s["mb"] * 10 / 32
    batch, batch_gpu = s["mb"], s["mb"] // s["ref_gpus"]
    if o.batch is not None:
        if o.batch < 1 or o.batch % world_size:
            raise ConfigError(
                f"--batch {o.batch}: must be at least 1 and divisible by {world_size} processes"
            )
        batch, batch_gpu = o.batch, o.batch // world_size
    if o.batch_gpu is not None:
        batch_gpu = o.batch_gpu
    if batch_gpu < 1 or batch % (batch_gpu * world_size):
        raise ConfigError(
            f"--batch {batch} must be a multiple of --batch-gpu {batch_gpu} x {world_size} processes"
        )
    mbstd = min(s["mbstd"], batch_gpu)
    if batch_gpu % mbstd:
        raise ConfigError(
            f"--batch-gpu {batch_gpu} must be a multiple of the minibatch-std group {mbstd}"
        )
    if o.gamma is not None and o.gamma < 0:
        raise ConfigError("--gamma must be non-negative")
    kimg = o.kimg if o.kimg is not None else s["kimg"]
    if kimg <= 0:
        raise ConfigError("--kimg must be positive")
    return Spec(
        resolution=res,
        total_kimg=kimg,
        batch=batch,
        batch_gpu=batch_gpu,
        mbstd=mbstd,
        lr=o.lr if o.lr is not None else s["lrate"],
        lrt=o.lrt,
        gamma=o.gamma if o.gamma is not None else s["gamma"],
        pcp_ratio=o.pr if o.pr is not None else 1.0,
        ema_kimg=o.ema if o.ema is not None else s["ema"],
        # fine-tuning from an upstream pickle turns the ramp-up off, as upstream's --resume
        ema_rampup=None if o.finetune else s["ramp"],
        mapping_layers=s["map"],
    )
