"""The networks a training run starts from, and G_ema's update."""

from __future__ import annotations

import copy
import os

import torch

from ..checkpoints import read_upstream_networks
from ..errors import CheckpointError
from ..model import Discriminator, Generator
from .tiny import TinyDiscriminator, TinyGenerator


def build_networks(options, spec, device):
    """G, D (train mode, gradients off, as upstream) and G_ema = a copy of G (eval)."""
    res = spec.resolution
    if options.arch == "tiny":
        G = TinyGenerator(img_resolution=res)
        D = TinyDiscriminator(img_resolution=res, mbstd_group_size=spec.mbstd)
    else:
        G = Generator(
            z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
            mapping_kwargs=dict(num_layers=spec.mapping_layers),
        )  # fmt: skip
        D = Discriminator(c_dim=0, img_resolution=res, img_channels=3, mbstd_group_size=spec.mbstd)
    G = G.train().requires_grad_(False).to(device)
    D = D.train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    return G, D, G_ema


def load_start_weights(path: str, G, D, G_ema) -> None:
    """Fine-tuning: G, D and G_ema from an upstream network pickle (read without running
    its code) or from a mat_fast snapshot folder (weights only; the run starts afresh)."""
    if os.path.isdir(path):
        from .snapshots import read_snapshot

        sources = read_snapshot(path)
    else:
        sources = read_upstream_networks(path)
    missing = [k for k in ("G", "D") if k not in sources]
    if missing:
        raise CheckpointError(f"--finetune {path}: no {' or '.join(missing)} network in it")
    sources.setdefault("G_ema", sources["G"])
    for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
        try:
            module.load_state_dict(sources[name], strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"--finetune {path}: its {name} does not fit the network being trained "
                f"({str(e).splitlines()[0]}...); check --cfg and --resolution"
            ) from None


@torch.no_grad()
def ema_update(G_ema, G, spec, nimg: int) -> None:
    """Upstream's EMA: half-life ``ema_kimg``, ramped up to ``nimg * ema_rampup``."""
    ema_nimg = spec.ema_kimg * 1000
    if spec.ema_rampup is not None:
        ema_nimg = min(ema_nimg, nimg * spec.ema_rampup)
    beta = 0.5 ** (spec.batch / max(ema_nimg, 1e-8))
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
