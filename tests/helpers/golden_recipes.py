"""Recipes shared by tools/make_golden.py (which writes the golden files from upstream) and
tests/test_upstream_parity.py (which checks ours against them): both sides must rebuild
inputs, seeded overrides, checksums and subsamples identically, so they live here once."""

from __future__ import annotations

import torch

FORMAT = 1  # golden file format version


def fp16_exact(t: torch.Tensor) -> torch.Tensor:
    """Round through fp16 so a value is stored exactly in a small golden file."""
    return t.half().float()


def regen(spec: dict) -> torch.Tensor:
    """Rebuild an input from its recorded recipe."""
    shape = list(spec["shape"])
    if spec["dist"] == "rect_holes":
        t = torch.ones(shape)
        for b, rects in enumerate(spec["rects"]):
            for y0, y1, x0, x1 in rects:
                t[b, :, y0:y1, x0:x1] = 0
        if spec.get("cells") is not None:  # extra holes: cells (1 = hole) of cell x cell px
            n = int(spec["cell"])
            t[spec["cells"].bool().repeat_interleave(n, 2).repeat_interleave(n, 3)] = 0
        return t
    g = torch.Generator().manual_seed(int(spec["seed"]))
    if spec["dist"] == "randn":
        return torch.randn(shape, generator=g)
    if spec["dist"] == "rand_pm1":
        return torch.rand(shape, generator=g) * 2 - 1
    raise ValueError(f"unknown input recipe {spec['dist']!r}")


def make_overrides(m, seed: int) -> dict:
    """Seeded, fp16-exact values for every bias, noise_strength and w_avg, drawn in the
    sorted order of the state-dict keys (upstream starts them at 0, which would leave
    the noise draws and biases untested)."""
    g = torch.Generator().manual_seed(seed)
    sd = m.state_dict()
    out = {}
    for key in sorted(sd):
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "bias":
            base = 1.0 if key.endswith("affine.bias") else 0.0  # affine biases start at 1
            t = base + 0.2 * torch.randn(sd[key].shape, generator=g)
        elif leaf == "noise_strength":
            t = 0.1 + 0.1 * torch.rand(sd[key].shape, generator=g)
        elif leaf == "w_avg":
            t = 0.5 * torch.randn(sd[key].shape, generator=g)
        else:
            continue
        out[key] = fp16_exact(t)
    return out


def checksum(t: torch.Tensor):
    """(sum, sum of |x|) in float64."""
    t = t.detach().double()
    return float(t.sum()), float(t.abs().sum())


def subsample(t: torch.Tensor, stride) -> torch.Tensor:
    return t[tuple(slice(None, None, s) for s in stride)]


def make_vgg_weights(pcp, seed: int) -> dict:
    """A seeded random VGG19 for the perceptual loss (He-normal convolutions, small biases),
    drawn in the sorted order of the state-dict keys that hold convolutions, so upstream's
    PerceptualLoss and ours (same keys) get the same weights."""
    g = torch.Generator().manual_seed(seed)
    sd = pcp.state_dict()
    out = {}
    for key in sorted(k for k in sd if ".vgg_net." in k):
        shape = sd[key].shape
        if key.endswith(".weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out


def grad_sample(t: torch.Tensor, k: int = 16) -> torch.Tensor:
    """``k`` evenly spaced elements of a flattened gradient (all of them if fewer)."""
    flat = t.detach().reshape(-1).float()
    if flat.numel() <= k:
        return flat.clone()
    return flat[torch.linspace(0, flat.numel() - 1, k).round().long()].clone()
