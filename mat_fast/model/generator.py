"""MAT's generator (paper Fig. 2): a coarse first stage (conv head, mask-aware transformer,
style-modulated conv tail) and a second stage (conv encoder + StyleGAN2-like decoder) that
refines the first stage's fill. Names, constructor arguments and random draws follow
upstream so that checkpoints load strictly and seeds reproduce upstream's outputs.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import sample_rng
from .layers import (
    NOISE_MODES,
    Conv2dLayer,
    Conv2dLayerPartial,
    FullyConnectedLayer,
    MappingNet,
    StyleConv,
    ToRGB,
)
from .transformer import BasicLayer, PatchMerging, PatchUpsampling, feature2token, token2feature


def nf(stage: int) -> int:
    """Channels of the second stage at resolution 2**stage."""
    return {512: 64, 256: 128, 128: 256, 64: 512, 32: 512, 16: 512, 8: 512, 4: 512}[2**stage]


def _dropout_half(x: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """Upstream's ``F.dropout(ones_like(x) * 0.5, training=True)``: a random 0/1 map that
    mixes features with a learned constant. It runs even in eval mode and is part of MAT's
    output. The draw follows memory order, so the map is built in the layout upstream's ``x``
    has there whatever layout ours has (fast backends keep channels_last activations):
    contiguous, or with the last two dimensions transposed when ``transposed``. It is drawn
    in fp32 and cast (its values are 0 and 1), so half-precision runs see fp32's map.
    """
    per_sample = sample_rng.half_map(x.shape, x.device)
    if per_sample is not None:  # inside sample_rng.per_sample: each sample its own draws
        return per_sample.to(x.dtype)
    shape = list(x.shape)
    if transposed:
        shape[-1], shape[-2] = shape[-2], shape[-1]
    ones = torch.ones(shape, dtype=torch.float32, device=x.device)
    if transposed:
        ones = ones.transpose(-1, -2)
    return F.dropout(ones * 0.5, p=0.5, training=True).to(x.dtype)


class DecStyleBlock(nn.Module):
    """First-stage decoder block: 2x upsampling style conv, skip, style conv, to-RGB."""

    def __init__(
        self,
        res,
        in_channels,
        out_channels,
        activation,
        style_dim,
        use_noise,
        demodulate,
        img_channels,
    ):
        super().__init__()
        self.res = res
        conv = dict(
            style_dim=style_dim,
            resolution=2**res,
            kernel_size=3,
            use_noise=use_noise,
            activation=activation,
            demodulate=demodulate,
        )
        self.conv0 = StyleConv(in_channels, out_channels, up=2, **conv)
        self.conv1 = StyleConv(out_channels, out_channels, **conv)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim, kernel_size=1, demodulate=False)

    def forward(self, x, img, style, skip, noise_mode="random"):
        x = self.conv0(x, style, noise_mode=noise_mode).add_(skip)  # (in place: a temporary)
        x = self.conv1(x, style, noise_mode=noise_mode)
        return x, self.toRGB(x, style, skip=img)


class FirstStage(nn.Module):
    """Coarse inpainting: partial convs down to a 64x64 token grid (for 512 input), five
    transformer stages 64 -> 32 -> 16 -> 32 -> 64, then style convs back to full size."""

    def __init__(
        self,
        img_channels,
        img_resolution=256,
        dim=180,
        w_dim=512,
        use_noise=False,
        demodulate=True,
        activation="lrelu",
    ):
        super().__init__()
        res = 64
        self.conv_first = Conv2dLayerPartial(
            img_channels + 1, dim, kernel_size=3, activation=activation
        )
        down_time = int(math.log2(img_resolution // res))
        self.enc_conv = nn.ModuleList(
            [
                Conv2dLayerPartial(dim, dim, kernel_size=3, down=2, activation=activation)
                for _ in range(down_time)
            ]
        )

        depths = [2, 3, 4, 3, 2]
        ratios = [1, 1 / 2, 1 / 2, 2, 2]
        window_sizes = [8, 16, 16, 16, 8]
        num_heads = 6
        self.tran = nn.ModuleList()
        for i, depth in enumerate(depths):
            res = int(res * ratios[i])
            merge = None
            if ratios[i] < 1:
                merge = PatchMerging(dim, dim, down=int(1 / ratios[i]))
            elif ratios[i] > 1:
                merge = PatchUpsampling(dim, dim, up=int(ratios[i]))
            self.tran.append(
                BasicLayer(dim, [res, res], depth, num_heads, window_sizes[i], downsample=merge)
            )

        # Global style from the transformer's bottleneck (style path: fp32 in half models).
        down_conv = [
            Conv2dLayer(dim, dim, kernel_size=3, down=2, activation=activation, keep_fp32=True)
            for _ in range(4)
        ]
        self.down_conv = nn.Sequential(*down_conv, nn.AdaptiveAvgPool2d((1, 1)))
        self.to_style = FullyConnectedLayer(dim, dim * 2, activation=activation, keep_fp32=True)
        self.ws_style = FullyConnectedLayer(w_dim, dim, activation=activation, keep_fp32=True)
        self.to_square = FullyConnectedLayer(dim, 16 * 16, activation=activation, keep_fp32=True)

        style_dim = dim * 3
        self.dec_conv = nn.ModuleList()
        for _ in range(down_time):
            res = res * 2
            self.dec_conv.append(
                DecStyleBlock(
                    res, dim, dim, activation, style_dim, use_noise, demodulate, img_channels
                )
            )

    def forward(
        self, images_in: Tensor, masks_in: Tensor, ws: Tensor, noise_mode: str = "random"
    ) -> Tensor:
        x = torch.cat([masks_in - 0.5, images_in * masks_in], dim=1)
        skips = []
        x, mask = self.conv_first(x, masks_in)
        skips.append(x)
        for i, block in enumerate(self.enc_conv):
            x, mask = block(x, mask)
            if i != len(self.enc_conv) - 1:
                skips.append(x)

        x_size = tuple(x.shape[-2:])
        x, mask = feature2token(x), feature2token(mask)
        mid = len(self.tran) // 2
        for i, block in enumerate(self.tran):
            if i < mid:  # encoder stages carry the mask
                x, x_size, mask = block(x, x_size, mask)
                skips.append(x)
            elif i > mid:  # decoder stages: every window is valid by now
                x, x_size, _ = block(x, x_size, None)
                x = x + skips[mid - i]
            else:  # bottleneck: mix in noise and derive the global style
                x, x_size, _ = block(x, x_size, None)
                # Upstream's tokens here are a transposed view for B = 1, contiguous for B > 1.
                mul_map = _dropout_half(x, transposed=x.shape[0] == 1)
                ws = self.ws_style(ws[:, -1])
                add_n = self.to_square(ws).unsqueeze(1)  # (B, 1, 256)
                add_n = F.interpolate(add_n, size=x.size(1), mode="linear", align_corners=False)
                add_n = add_n.squeeze(1).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
                x = x * mul_map + add_n * (1 - mul_map)
                gs = self.to_style(self.down_conv(token2feature(x, x_size)).flatten(start_dim=1))
                style = torch.cat([gs, ws], dim=1)

        x = token2feature(x, x_size)
        img = None
        for i, block in enumerate(self.dec_conv):
            x, img = block(x, img, style, skips[len(self.dec_conv) - i - 1], noise_mode=noise_mode)
        return img * (1 - masks_in) + images_in * masks_in


class EncFromRGB(nn.Module):
    def __init__(self, in_channels, out_channels, activation):
        super().__init__()
        self.conv0 = Conv2dLayer(in_channels, out_channels, kernel_size=1, activation=activation)
        self.conv1 = Conv2dLayer(out_channels, out_channels, kernel_size=3, activation=activation)

    def forward(self, x):
        return self.conv1(self.conv0(x))


class ConvBlockDown(nn.Module):
    def __init__(self, in_channels, out_channels, activation):
        super().__init__()
        self.conv0 = Conv2dLayer(
            in_channels, out_channels, kernel_size=3, activation=activation, down=2
        )
        self.conv1 = Conv2dLayer(out_channels, out_channels, kernel_size=3, activation=activation)

    def forward(self, x):
        return self.conv1(self.conv0(x))


class Encoder(nn.Module):
    """Second-stage conv encoder from the input size down to 16x16 (for 512 input).

    ``patch_size`` and ``channels`` are accepted only because upstream's signature has them
    (upstream ignores them too)."""

    def __init__(self, res_log2, img_channels, activation, patch_size=5, channels=16):
        super().__init__()
        self.resolution = []
        for i in range(res_log2, 3, -1):
            res = 2**i
            self.resolution.append(res)
            if i == res_log2:
                block = EncFromRGB(img_channels * 2 + 1, nf(i), activation)
            else:
                block = ConvBlockDown(nf(i + 1), nf(i), activation)
            setattr(self, f"EncConv_Block_{res}x{res}", block)

    def forward(self, x):
        features = {}
        for res in self.resolution:
            x = getattr(self, f"EncConv_Block_{res}x{res}")(x)
            features[int(math.log2(res))] = x
        return features


class ToStyle(nn.Module):
    """Global style code from the encoder's 16x16 features: three strided convs, average
    pooling, a linear layer. ``drop_rate`` is upstream's signature only (unused there too)."""

    def __init__(self, in_channels, out_channels, activation, drop_rate):
        super().__init__()
        self.conv = nn.Sequential(
            *[
                Conv2dLayer(
                    in_channels,
                    in_channels,
                    kernel_size=3,
                    activation=activation,
                    down=2,
                    keep_fp32=True,
                )
                for _ in range(3)
            ]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = FullyConnectedLayer(
            in_channels, out_channels, activation=activation, keep_fp32=True
        )

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(start_dim=1))


class DecBlockFirstV2(nn.Module):
    def __init__(
        self,
        res,
        in_channels,
        out_channels,
        activation,
        style_dim,
        use_noise,
        demodulate,
        img_channels,
    ):
        super().__init__()
        self.res = res
        self.conv0 = Conv2dLayer(in_channels, in_channels, kernel_size=3, activation=activation)
        self.conv1 = StyleConv(
            in_channels,
            out_channels,
            style_dim,
            2**res,
            kernel_size=3,
            use_noise=use_noise,
            activation=activation,
            demodulate=demodulate,
        )
        self.toRGB = ToRGB(out_channels, img_channels, style_dim, kernel_size=1, demodulate=False)

    def forward(self, x, ws, gs, E_features, noise_mode="random"):
        x = self.conv0(x) + E_features[self.res]
        x = self.conv1(x, torch.cat([ws[:, 0], gs], dim=1), noise_mode=noise_mode)
        return x, self.toRGB(x, torch.cat([ws[:, 1], gs], dim=1), skip=None)


class DecBlock(nn.Module):
    def __init__(
        self,
        res,
        in_channels,
        out_channels,
        activation,
        style_dim,
        use_noise,
        demodulate,
        img_channels,
    ):
        super().__init__()
        self.res = res
        conv = dict(
            style_dim=style_dim,
            resolution=2**res,
            kernel_size=3,
            use_noise=use_noise,
            activation=activation,
            demodulate=demodulate,
        )
        self.conv0 = StyleConv(in_channels, out_channels, up=2, **conv)
        self.conv1 = StyleConv(out_channels, out_channels, **conv)
        self.toRGB = ToRGB(out_channels, img_channels, style_dim, kernel_size=1, demodulate=False)

    def forward(self, x, img, ws, gs, E_features, noise_mode="random"):
        # Block at 2**res reads latents 2*res-9 .. 2*res-7 (the 16x16 block used 0 and 1).
        x = self.conv0(x, torch.cat([ws[:, self.res * 2 - 9], gs], dim=1), noise_mode=noise_mode)
        x = x.add_(E_features[self.res])  # in place: x is conv0's temporary
        x = self.conv1(x, torch.cat([ws[:, self.res * 2 - 8], gs], dim=1), noise_mode=noise_mode)
        img = self.toRGB(x, torch.cat([ws[:, self.res * 2 - 7], gs], dim=1), skip=img)
        return x, img


class Decoder(nn.Module):
    def __init__(self, res_log2, activation, style_dim, use_noise, demodulate, img_channels):
        super().__init__()
        self.Dec_16x16 = DecBlockFirstV2(
            4, nf(4), nf(4), activation, style_dim, use_noise, demodulate, img_channels
        )
        for res in range(5, res_log2 + 1):
            setattr(
                self,
                f"Dec_{2**res}x{2**res}",
                DecBlock(
                    res,
                    nf(res - 1),
                    nf(res),
                    activation,
                    style_dim,
                    use_noise,
                    demodulate,
                    img_channels,
                ),
            )
        self.res_log2 = res_log2

    def forward(self, x, ws, gs, E_features, noise_mode="random"):
        x, img = self.Dec_16x16(x, ws, gs, E_features, noise_mode=noise_mode)
        for res in range(5, self.res_log2 + 1):
            block = getattr(self, f"Dec_{2**res}x{2**res}")
            x, img = block(x, img, ws, gs, E_features, noise_mode=noise_mode)
        return img


class SynthesisNet(nn.Module):
    """Both stages: the transformer first stage, the conv encoder, the style path and the
    modulated decoder. ``channel_base``, ``channel_decay`` and ``channel_max`` are kept for
    upstream's signature only: its widths come from the fixed table ``nf`` whatever they say.
    """

    def __init__(
        self,
        w_dim,
        img_resolution,
        img_channels=3,
        channel_base=32768,
        channel_decay=1.0,
        channel_max=512,
        activation="lrelu",
        drop_rate=0.5,
        use_noise=True,
        demodulate=True,
    ):
        super().__init__()
        resolution_log2 = int(math.log2(img_resolution))
        if img_resolution != 2**resolution_log2 or img_resolution < 128:
            raise ValueError(f"img_resolution must be a power of two >= 128; got {img_resolution}")
        self.num_layers = resolution_log2 * 2 - 3 * 2
        self.img_resolution = img_resolution
        self.resolution_log2 = resolution_log2
        self.use_noise = use_noise

        # The first stage never uses noise, whatever use_noise says (upstream's choice).
        self.first_stage = FirstStage(
            img_channels,
            img_resolution=img_resolution,
            w_dim=w_dim,
            use_noise=False,
            demodulate=demodulate,
        )
        self.enc = Encoder(resolution_log2, img_channels, activation, patch_size=5, channels=16)
        # Style path (fp32 in half models, see StyleCanStayFp32).
        self.to_square = FullyConnectedLayer(w_dim, 16 * 16, activation=activation, keep_fp32=True)
        self.to_style = ToStyle(nf(4), nf(2) * 2, activation=activation, drop_rate=drop_rate)
        style_dim = w_dim + nf(2) * 2
        self.dec = Decoder(
            resolution_log2, activation, style_dim, use_noise, demodulate, img_channels
        )

    def forward(
        self,
        images_in: torch.Tensor,
        masks_in: torch.Tensor,
        ws: torch.Tensor,
        noise_mode: str = "random",
        return_stg1: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        out_stg1 = self.first_stage(images_in, masks_in, ws, noise_mode=noise_mode)

        x = images_in * masks_in + out_stg1 * (1 - masks_in)
        x = torch.cat([masks_in - 0.5, x, images_in * masks_in], dim=1)
        E_features = self.enc(x)

        fea_16 = E_features[4]
        mul_map = _dropout_half(fea_16)
        add_n = self.to_square(ws[:, 0]).view(-1, 16, 16).unsqueeze(1)
        add_n = F.interpolate(add_n, size=fea_16.size()[-2:], mode="bilinear", align_corners=False)
        add_n = add_n.to(fea_16.dtype)
        fea_16 = fea_16 * mul_map + add_n * (1 - mul_map)
        E_features[4] = fea_16

        gs = self.to_style(fea_16)
        img = self.dec(fea_16, ws, gs, E_features, noise_mode=noise_mode)
        img = img * (1 - masks_in) + images_in * masks_in
        return (img, out_stg1) if return_stg1 else img


class Generator(nn.Module):
    """MAT generator. ``forward(images_in, masks_in, z, c)`` with images in [-1, 1]
    (B, C, H, W), masks (B, 1, H, W) with 1 = known pixel and 0 = hole, latents z (B, z_dim).
    H and W must be multiples of ``img_resolution`` (the 512 network runs on 1024 input)."""

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        img_resolution,
        img_channels,
        synthesis_kwargs=None,
        mapping_kwargs=None,
    ):
        super().__init__()
        synthesis_kwargs = synthesis_kwargs or {}
        mapping_kwargs = mapping_kwargs or {}
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNet(
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            **synthesis_kwargs,
        )
        self.mapping = MappingNet(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            num_ws=self.synthesis.num_layers,
            **mapping_kwargs,
        )

    @property
    def use_noise(self) -> bool:
        return self.synthesis.use_noise

    def forward(
        self,
        images_in: torch.Tensor,
        masks_in: torch.Tensor,
        z: torch.Tensor,
        c: Optional[torch.Tensor],
        truncation_psi: float = 1,
        truncation_cutoff: Optional[int] = None,
        skip_w_avg_update: bool = False,
        noise_mode: str = "random",
        return_stg1: bool = False,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        self._check_inputs(images_in, masks_in, z, noise_mode)
        ws = self.mapping(
            z,
            c,
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            skip_w_avg_update=skip_w_avg_update,
        )
        return self.synthesis(
            images_in, masks_in, ws, noise_mode=noise_mode, return_stg1=return_stg1
        )

    def _check_inputs(self, images, masks, z, noise_mode):
        """Shape, dtype and device checks that cost no device sync."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}; got {noise_mode!r}")
        if not (
            torch.is_tensor(images) and images.ndim == 4 and images.shape[1] == self.img_channels
        ):
            raise ValueError(
                f"images_in must be a (B, {self.img_channels}, H, W) tensor; got "
                f"{tuple(images.shape) if torch.is_tensor(images) else type(images)}"
            )
        B, _, H, W = images.shape
        if not (torch.is_tensor(masks) and tuple(masks.shape) == (B, 1, H, W)):
            raise ValueError(
                f"masks_in must be a (B, 1, H, W) = {(B, 1, H, W)} tensor; got "
                f"{tuple(masks.shape) if torch.is_tensor(masks) else type(masks)}"
            )
        r = self.img_resolution
        if H == 0 or W == 0 or H % r or W % r:
            raise ValueError(
                f"this Generator (img_resolution={r}) needs height and width that are positive "
                f"multiples of {r}; got {H}x{W}. Pad the image first (mat_fast.Inpainter pads "
                f"and crops for you)"
            )
        if noise_mode == "const" and self.use_noise and (H, W) != (r, r):
            # Checked here, not only where the constant noise is added (after the whole first
            # stage has run).
            raise ValueError(
                f"noise_mode='const' needs the training resolution: the constant noise is "
                f"{r}x{r} but the input is {H}x{W}; use noise_mode='random' or 'none' for "
                f"other sizes"
            )
        param = self.synthesis.first_stage.conv_first.conv.weight  # (the style path stays fp32)
        for name, t in (("images_in", images), ("masks_in", masks)):
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor; got {t.dtype}")
            if t.dtype != param.dtype:
                raise TypeError(
                    f"{name} is {t.dtype} but the Generator's weights are "
                    f"{param.dtype}; convert one of them (e.g. G.to({t.dtype}))"
                )
            if t.device != param.device:
                raise ValueError(
                    f"{name} is on {t.device} but the Generator is on "
                    f"{param.device}; move one of them (e.g. tensor.to('{param.device}'))"
                )
        if self.z_dim > 0 and (not torch.is_tensor(z) or tuple(z.shape) != (B, self.z_dim)):
            raise ValueError(
                f"z must be a ({B}, {self.z_dim}) tensor; got "
                f"{tuple(z.shape) if torch.is_tensor(z) else type(z)}"
            )
