"""A tiny network pair with MAT's interfaces, for smoke runs, CI and the loop's own tests.

MAT's widths come from a fixed table, so its smallest generator (128 px) still has 57 M
parameters and takes tens of seconds per CPU training step. The training loop only needs
the interfaces: ``G.mapping(z, c, truncation_psi=..., skip_w_avg_update=...)``,
``G.synthesis(img, mask, ws, return_stg1=True)``, ``G(img, mask, z, c, noise_mode=...)``
and ``D(img, mask, img_stg1, c) -> (score, score_stg1)``. These networks provide them with
a few thousand parameters, built from mat_fast's own layers (so the ops and their backends
run, R1's double backward included) and with per-call noise (so the loop's random state
matters). Their fills mean nothing; ``mat-fast train --arch tiny`` is for testing setups.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.discriminator import MinibatchStdLayer
from ..model.layers import Conv2dLayer, FullyConnectedLayer, MappingNet


class TinySynthesis(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3, width: int = 8):
        super().__init__()
        self.img_resolution = img_resolution
        self.num_ws = 2
        self.enc = Conv2dLayer(img_channels + 1, width, 3, activation="lrelu")
        self.to_stg1 = Conv2dLayer(width, img_channels, 1)
        self.style = FullyConnectedLayer(w_dim, width, bias_init=1)
        self.dec = Conv2dLayer(width + img_channels, width, 3, activation="lrelu")
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.to_rgb = Conv2dLayer(width, img_channels, 1)

    def forward(self, images_in, masks_in, ws, noise_mode="random", return_stg1=False):
        x = self.enc(torch.cat([masks_in - 0.5, images_in * masks_in], dim=1))
        stg1 = self.to_stg1(x)
        stg1 = stg1 * (1 - masks_in) + images_in * masks_in
        x = self.dec(torch.cat([x, stg1], dim=1)) * self.style(ws[:, 1])[:, :, None, None]
        if noise_mode == "random":
            x = x + torch.randn_like(x[:, :1]) * self.noise_strength
        img = self.to_rgb(x)
        return (img, stg1) if return_stg1 else img


class TinyGenerator(nn.Module):
    def __init__(self, z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = TinySynthesis(w_dim, img_resolution, img_channels)
        self.mapping = MappingNet(z_dim, c_dim, w_dim, num_ws=2, num_layers=2)

    def forward(self, images_in, masks_in, z, c, truncation_psi=1, noise_mode="random", **kw):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, **kw)
        return self.synthesis(images_in, masks_in, ws, noise_mode=noise_mode)


class TinyDiscriminator(nn.Module):
    def __init__(self, c_dim=0, img_resolution=16, img_channels=3, mbstd_group_size=2):
        super().__init__()
        self.c_dim, self.img_resolution = c_dim, img_resolution

        def head(width):
            return nn.ModuleDict(
                dict(
                    conv=Conv2dLayer(img_channels + 1, width, 3, down=2, activation="lrelu"),
                    mbstd=MinibatchStdLayer(mbstd_group_size),
                    fc=FullyConnectedLayer((width + 1) * (img_resolution // 2) ** 2, 1),
                )
            )

        self.main, self.stg1 = head(8), head(4)

    @staticmethod
    def _score(head, x):
        return head["fc"](head["mbstd"](head["conv"](x)).flatten(1))

    def forward(self, images_in, masks_in, images_stg1, c):
        score = self._score(self.main, torch.cat([masks_in - 0.5, images_in], dim=1))
        score_stg1 = self._score(self.stg1, torch.cat([masks_in - 0.5, images_stg1], dim=1))
        return score, score_stg1


class TinyPerceptualLoss(nn.Module):
    """Stands in for the VGG19 perceptual loss with ``--arch tiny --vgg random``: VGG19's
    convolutions dominate a tiny network's step, and its random features mean nothing."""

    def forward(self, x, gt):
        pool = torch.nn.functional.avg_pool2d
        return (pool(x, 2) - pool(gt, 2)).abs().mean() + (pool(x, 4) - pool(gt, 4)).abs().mean()
