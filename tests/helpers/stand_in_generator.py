"""A stand-in for a 128 MAT generator, for the tests of what happens around the network
(Inpainter planning, padding and cropping, preparing, seeds, formats, memory budgets).

A real 128 Generator takes about 2 s per 128x128 canvas on the 2-core CI box, and those tests
run dozens of canvases while testing nothing inside the network. The stand-in keeps every
part of the Generator's contract that the code around it relies on, at a cost of
milliseconds:

* it *is* a ``mat_fast.Generator`` (the Inpainter accepts nothing else) with the same
  attributes (``img_resolution``, ``z_dim``, ``c_dim``, ``use_noise``) and the same input
  checks (``Generator._check_inputs``: canvas multiples, 'const' noise only at the training
  size, dtype and device);
* its output depends on the known pixels, the mask, ``z``, ``truncation_psi`` and the noise,
  so a seed, a truncation or a noise mode that gets lost shows up in the pixels;
* like the real network it draws random numbers in every forward, whatever the noise
  mode (MAT's first stage draws dropout maps even at inference), and it draws them through
  ``mat_fast.model.sample_rng`` as the real network does: per sample inside
  ``sample_rng.per_sample``, from torch's global generator outside it. Per-image seeds
  therefore stay the Inpainter's responsibility and are tested as such.

The network's own behaviour is tested on real generators in tests/model/ and through the
CLI tests, which run real random-weight networks end to end.
"""

from __future__ import annotations

import torch
import torch.nn as nn

import mat_fast
from mat_fast.model import sample_rng


class _Holder(nn.Module):
    """Gives the stand-in the attribute path ``synthesis.first_stage.conv_first.conv``
    that Generator._check_inputs reads the weights' dtype and device from."""


class StandInGenerator(mat_fast.Generator):
    def __init__(self, seed: int = 0, resolution: int = 128, use_noise: bool = True):
        nn.Module.__init__(self)  # not Generator.__init__: no real network is built
        self.z_dim, self.c_dim, self.w_dim = 512, 0, 512
        self.img_resolution, self.img_channels = resolution, 3
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            conv = nn.Conv2d(4, 3, 3, padding=1)
            self.style = nn.Linear(self.z_dim, 3)
            self.register_buffer("const_noise", torch.randn(1, 1, resolution, resolution))
        self.synthesis = _Holder()
        self.synthesis.use_noise = use_noise
        self.synthesis.first_stage = _Holder()
        self.synthesis.first_stage.conv_first = _Holder()
        self.synthesis.first_stage.conv_first.conv = conv
        self.eval().requires_grad_(False)

    def forward(
        self,
        images_in,
        masks_in,
        z,
        c,
        truncation_psi=1,
        truncation_cutoff=None,
        skip_w_avg_update=False,
        noise_mode="random",
        return_stg1=False,
    ):
        self._check_inputs(images_in, masks_in, z, noise_mode)
        B, _, H, W = images_in.shape
        conv = self.synthesis.first_stage.conv_first.conv
        x = conv(torch.cat([images_in * masks_in, masks_in], 1))
        style = self.style(z.to(self.style.weight)) * truncation_psi
        x = x + style[:, :, None, None].to(x.dtype)
        # a dropout-like map at 1/8 scale, drawn the way the real network draws its maps
        coarse = (B, 1, max(H // 8, 1), max(W // 8, 1))
        keep = sample_rng.half_map(coarse, images_in.device)
        if keep is None:
            keep = torch.empty(coarse, device=images_in.device).bernoulli_(0.5)
        x = x + nn.functional.interpolate(keep, size=(H, W)).to(x.dtype)
        if self.use_noise and noise_mode == "random":
            x = x + sample_rng.randn((B, 1, H, W), images_in.device).to(x.dtype)
        elif self.use_noise and noise_mode == "const":
            x = x + self.const_noise.to(x.dtype)
        out = torch.tanh(x)
        return (out, out) if return_stg1 else out
