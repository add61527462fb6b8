"""MAT's discriminator: two residual conv discriminators, one on the final image and one
(half width) on the first stage's output, each seeing the mask as an extra channel."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .generator import nf
from .layers import Conv2dLayer, FullyConnectedLayer, MappingNet


class DisFromRGB(nn.Module):
    def __init__(self, in_channels, out_channels, activation):
        super().__init__()
        self.conv = Conv2dLayer(in_channels, out_channels, kernel_size=1, activation=activation)

    def forward(self, x):
        return self.conv(x)


class DisBlock(nn.Module):
    """Residual block halving the resolution; both branches scaled by sqrt(1/2)."""

    def __init__(self, in_channels, out_channels, activation):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, in_channels, kernel_size=3, activation=activation)
        self.conv1 = Conv2dLayer(
            in_channels, out_channels, kernel_size=3, down=2, activation=activation
        )
        self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, down=2, bias=False)

    def forward(self, x):
        skip = self.skip(x, gain=math.sqrt(0.5))
        return skip + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class MinibatchStdLayer(nn.Module):
    """Appends the across-group standard deviation as extra channels (mode-collapse cue)."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        if N % G:
            raise ValueError(f"batch size {N} must be a multiple of the minibatch-std group {G}")
        F_, c = self.num_channels, C // self.num_channels
        y = x.reshape(G, -1, F_, c, H, W)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)  # variance over the group
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4]).reshape(-1, F_, 1, 1)  # [n, F, 1, 1]
        y = y.repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


def _tower(
    img_channels, resolution_log2, activation, divisor, mbstd_group_size, mbstd_num_channels
):
    layers = [DisFromRGB(img_channels + 1, nf(resolution_log2) // divisor, activation)]
    for res in range(resolution_log2, 2, -1):
        layers.append(DisBlock(nf(res) // divisor, nf(res - 1) // divisor, activation))
    if mbstd_num_channels > 0:
        layers.append(MinibatchStdLayer(mbstd_group_size, mbstd_num_channels))
    layers.append(
        Conv2dLayer(
            nf(2) // divisor + mbstd_num_channels,
            nf(2) // divisor,
            kernel_size=3,
            activation=activation,
        )
    )
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """``forward(images_in, masks_in, images_stg1, c) -> (score, score_stg1)``.

    ``channel_base``, ``channel_max`` and ``channel_decay`` are kept for upstream's signature
    only: the widths come from the fixed table ``nf`` whatever they say (as upstream's)."""

    def __init__(
        self,
        c_dim,
        img_resolution,
        img_channels,
        channel_base=32768,
        channel_max=512,
        channel_decay=1,
        cmap_dim=None,
        activation="lrelu",
        mbstd_group_size=4,
        mbstd_num_channels=1,
    ):
        super().__init__()
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        resolution_log2 = int(math.log2(img_resolution))
        if img_resolution != 2**resolution_log2 or img_resolution < 8:
            raise ValueError(f"img_resolution must be a power of two >= 8; got {img_resolution}")
        self.resolution_log2 = resolution_log2
        if cmap_dim is None:
            cmap_dim = nf(2)
        if c_dim == 0:
            cmap_dim = 0
        self.cmap_dim = cmap_dim
        if c_dim > 0:
            self.mapping = MappingNet(
                z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None
            )

        self.Dis = _tower(
            img_channels, resolution_log2, activation, 1, mbstd_group_size, mbstd_num_channels
        )
        self.fc0 = FullyConnectedLayer(nf(2) * 4**2, nf(2), activation=activation)
        self.fc1 = FullyConnectedLayer(nf(2), 1 if cmap_dim == 0 else cmap_dim)

        self.Dis_stg1 = _tower(
            img_channels, resolution_log2, activation, 2, mbstd_group_size, mbstd_num_channels
        )
        self.fc0_stg1 = FullyConnectedLayer(nf(2) // 2 * 4**2, nf(2) // 2, activation=activation)
        self.fc1_stg1 = FullyConnectedLayer(nf(2) // 2, 1 if cmap_dim == 0 else cmap_dim)

    def forward(
        self,
        images_in: torch.Tensor,
        masks_in: torch.Tensor,
        images_stg1: torch.Tensor,
        c: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.Dis(torch.cat([masks_in - 0.5, images_in], dim=1))
        x = self.fc1(self.fc0(x.flatten(start_dim=1)))
        x_stg1 = self.Dis_stg1(torch.cat([masks_in - 0.5, images_stg1], dim=1))
        x_stg1 = self.fc1_stg1(self.fc0_stg1(x_stg1.flatten(start_dim=1)))
        if self.c_dim > 0:
            cmap = self.mapping(None, c).to(x.dtype)  # (the mapping stays fp32 in half models)
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
            x_stg1 = (x_stg1 * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x, x_stg1
