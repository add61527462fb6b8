"""Building blocks shared by MAT's generator and discriminator (StyleGAN2 lineage).

Module and parameter names are upstream's: state-dict keys are a contract. Weights are
stored unscaled and multiplied by a fixed gain at run time ("equalised learning rate").
Every constructor draws its random initial weights in upstream's order, so the same torch
seed builds the same network.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from .. import ops
from ..ops.bias_act import bias_act
from . import sample_rng

_HALF = (torch.float16, torch.bfloat16)


class StyleCanStayFp32:
    """Mixin for the style path: the mapping network, the style affines and the global-style
    layers. With ``keep_fp32`` set, casting the model to fp16/bf16 (``.to``, ``.half()``,
    ``.bfloat16()``) leaves this module's fp32 tensors in fp32; device moves still apply.

    Why: every modulated conv is scaled by these styles, so their rounding error reaches all
    ~50 synthesis layers at once; in bf16 it was half of the generator's error at 256. They
    are ~0.1% of the FLOPs. The layers cast their input to their own dtype, and the model
    casts style-path outputs back to the activations' dtype where they join the main path.
    """

    keep_fp32 = False

    def _apply(self, fn, recurse=True):
        if self.keep_fp32:
            convert = fn

            def fn(t):
                # What does fn do to an fp32 tensor? If it would make it half, only move it.
                probe = convert(torch.zeros((), dtype=torch.float32, device=t.device))
                if t.dtype == torch.float32 and probe.dtype in _HALF:
                    return t.to(device=probe.device)
                return convert(t)

        return super()._apply(fn, recurse)


class FullyConnectedLayer(StyleCanStayFp32, nn.Module):
    """Linear layer with equalised learning rate and an optional fused activation."""

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        activation="linear",
        lr_multiplier=1.0,
        bias_init=0.0,
        keep_fp32=False,
    ):
        super().__init__()
        self.keep_fp32 = keep_fp32
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.activation = activation
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        x = x.to(w.dtype).matmul(w.t())
        if self.activation == "linear" and b is not None:
            return x + b
        return bias_act(x, b, dim=x.ndim - 1, act=self.activation)


class Conv2dLayer(StyleCanStayFp32, nn.Module):
    """Convolution with equalised learning rate, FIR up/down-sampling, bias and activation."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        bias=True,
        activation="linear",
        up=1,
        down=1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
        trainable=True,
        keep_fp32=False,
    ):
        super().__init__()
        self.keep_fp32 = keep_fp32
        self.activation = activation
        self.up = up
        self.down = down
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ops.default_gain(activation)
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias_value) if bias_value is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias_value)

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The (resampled) convolution alone, before bias and activation."""
        w = self.weight * self.weight_gain
        return ops.conv2d_resample(
            x.to(w.dtype), w, self.resample_filter, up=self.up, down=self.down, padding=self.padding
        )

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = self.convolve(x)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(
            x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True
        )  # x: the conv's own output


class Conv2dLayerPartial(nn.Module):
    """Partial convolution (Liu et al. 2018): convolve, then re-weight each output by the
    share of valid inputs under the kernel; the output pixel is valid if any input was."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        bias=True,
        activation="linear",
        up=1,
        down=1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
        trainable=True,
    ):
        super().__init__()
        self.conv = Conv2dLayer(
            in_channels,
            out_channels,
            kernel_size,
            bias,
            activation,
            up,
            down,
            resample_filter,
            conv_clamp,
            trainable,
        )
        if activation not in _EPILOGUE_SLOPE:  # the fused epilogue is a leaky ReLU
            raise ValueError(
                f"Conv2dLayerPartial supports activation 'lrelu' or 'linear' (MAT uses lrelu); "
                f"got {activation!r}"
            )
        self.kernel_size = kernel_size
        self.stride = down
        self.padding = kernel_size // 2 if kernel_size % 2 == 1 else 0

    def forward(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if mask is None:
            return self.conv(x), None
        conv = self.conv
        # conv(x) * ratio: the mask update, bias, activation, gain, clamp and ratio in one op.
        return ops.partial_conv_fused(
            conv.convolve(x),
            conv.bias,
            mask,
            self.kernel_size,
            self.stride,
            self.padding,
            conv.act_gain,
            _EPILOGUE_SLOPE[conv.activation],
            conv.conv_clamp,
            inplace=True,
        )


# Leaky-ReLU slope that makes the partial-conv epilogue compute each activation.
_EPILOGUE_SLOPE = {"lrelu": 0.2, "linear": 1.0}


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per sample by a style vector (then demodulated)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        style_dim,
        demodulate=True,
        up=1,
        down=1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
    ):
        super().__init__()
        if down != 1:
            raise ValueError("ModulatedConv2d in MAT never downsamples")
        self.demodulate = demodulate
        self.weight = nn.Parameter(
            torch.randn([1, out_channels, in_channels, kernel_size, kernel_size])
        )
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.up = up
        self.down = down
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(style_dim, in_channels, bias_init=1, keep_fp32=True)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        styles = self.affine(style)  # (B, Cin)
        return ops.modulated_conv2d(
            x,
            self.weight * self.weight_gain,
            styles,
            self.demodulate,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
        )


NOISE_MODES = ("random", "const", "none")


class StyleConv(nn.Module):
    """Modulated conv + per-pixel noise + bias + lrelu: one StyleGAN2 synthesis layer."""

    def __init__(
        self,
        in_channels,
        out_channels,
        style_dim,
        resolution,
        kernel_size=3,
        up=1,
        use_noise=True,
        activation="lrelu",
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
        demodulate=True,
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels,
            out_channels,
            kernel_size,
            style_dim,
            demodulate=demodulate,
            up=up,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.use_noise = use_noise
        self.resolution = resolution
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.activation = activation
        self.act_gain = ops.default_gain(activation)
        self.conv_clamp = conv_clamp

    def forward(
        self, x: torch.Tensor, style: torch.Tensor, noise_mode: str = "random", gain: float = 1.0
    ) -> torch.Tensor:
        x = self.conv(x, style)  # a temporary: the noise is added in place
        if self.use_noise and noise_mode == "random":
            # Drawn from the global generator in fp32 like upstream, so seeds reproduce it
            # (per sample inside sample_rng.per_sample).
            noise = sample_rng.randn([x.shape[0], 1, x.shape[2], x.shape[3]], x.device)
            x = x.add_((noise * self.noise_strength).to(x.dtype))
        elif self.use_noise and noise_mode == "const":
            if tuple(self.noise_const.shape) != tuple(x.shape[-2:]):
                raise ValueError(
                    f"noise_mode='const' needs the training resolution: this layer's constant "
                    f"noise is {tuple(self.noise_const.shape)} but the features are "
                    f"{tuple(x.shape[-2:])}; use noise_mode='random' or 'none' for other sizes"
                )
            x = x.add_((self.noise_const * self.noise_strength).to(x.dtype))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(
            x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp, inplace=True
        )  # x: this layer's own temporary


class ToRGB(nn.Module):
    """1x1 modulated conv to image channels, added to the upsampled image of the last scale."""

    def __init__(
        self,
        in_channels,
        out_channels,
        style_dim,
        kernel_size=1,
        resample_filter=(1, 3, 3, 1),
        conv_clamp=None,
        demodulate=False,
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels,
            out_channels,
            kernel_size,
            style_dim,
            demodulate=demodulate,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: Optional[torch.Tensor] = None):
        out = bias_act(self.conv(x, style), self.bias, clamp=self.conv_clamp, inplace=True)
        if skip is not None:
            if skip.shape != out.shape:
                skip = ops.upsample2d(skip, self.resample_filter)
            out = out + skip
        return out


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class MappingNet(StyleCanStayFp32, nn.Module):
    """z (and label c) -> intermediate latent w, broadcast to ``num_ws`` layers, with
    truncation towards the tracked average ``w_avg``."""

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        num_ws,
        num_layers=8,
        embed_features=None,
        layer_features=None,
        activation="lrelu",
        lr_multiplier=0.01,
        w_avg_beta=0.995,
    ):
        super().__init__()
        self.keep_fp32 = True  # (half models: w stays fp32, see StyleCanStayFp32)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        c: Optional[torch.Tensor],
        truncation_psi: float = 1,
        truncation_cutoff: Optional[int] = None,
        skip_w_avg_update: bool = False,
    ) -> torch.Tensor:
        # Normalise in fp32 (as upstream), then run in the parameters' dtype.
        dtype = self.fc0.weight.dtype
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.to(torch.float32)).to(dtype)
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.to(dtype)).to(torch.float32)).to(dtype)
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # (B, num_ws, w_dim)
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs a mapping network that tracks w_avg")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x
