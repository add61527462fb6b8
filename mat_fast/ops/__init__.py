"""MAT's hot ops. Model code calls these; :mod:`mat_fast.backend` picks the implementation.

Each op lives in its own subpackage, its pure-PyTorch reference twin beside the kernels;
the subpackage's ``__init__`` holds the public entry point and its dispatch. The package
names stay the subpackages (``mat_fast.ops.bias_act`` is the package, as upstream's
``torch_utils.ops.bias_act``): the two entry points named like their package are
``ops.bias_act.bias_act`` and ``ops.window_attention.window_attention``; the others are
re-exported here.
"""

from . import bias_act, modulated_conv, partial_conv, resample, window_attention
from .bias_act import default_gain
from .modulated_conv import modulated_conv2d
from .partial_conv import partial_conv_epilogue, partial_conv_fused, partial_conv_mask
from .resample import conv2d_resample, setup_filter, upfirdn2d, upsample2d
from .window_attention import shift_region_mask, window_attention_qkv

__all__ = [
    "bias_act",
    "conv2d_resample",
    "default_gain",
    "modulated_conv",
    "modulated_conv2d",
    "partial_conv",
    "partial_conv_epilogue",
    "partial_conv_fused",
    "partial_conv_mask",
    "resample",
    "setup_filter",
    "shift_region_mask",
    "upfirdn2d",
    "upsample2d",
    "window_attention",
    "window_attention_qkv",
]
