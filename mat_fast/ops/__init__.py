"""MAT's hot ops. Model code calls these; :mod:`mat_fast.backend` picks the implementation.

Each op lives in its own folder with its pure-PyTorch reference twin beside the kernels.
"""

from .bias_act import bias_act, default_gain
from .modulated_conv import modulated_conv2d
from .partial_conv import partial_conv_epilogue, partial_conv_fused, partial_conv_mask
from .resample import conv2d_resample, setup_filter, upfirdn2d, upsample2d
from .window_attention import window_attention, window_attention_qkv

__all__ = [
    "bias_act",
    "conv2d_resample",
    "default_gain",
    "modulated_conv2d",
    "partial_conv_epilogue",
    "partial_conv_fused",
    "partial_conv_mask",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
    "window_attention",
    "window_attention_qkv",
]
