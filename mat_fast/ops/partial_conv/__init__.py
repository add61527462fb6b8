"""Partial convolution: the mask update and the fused epilogue; public entry points and
dispatch."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import backend
from .reference import (
    partial_conv_epilogue_reference,
    partial_conv_fused_reference,
    partial_conv_mask_reference,
)

backend.register("partial_conv_mask", "reference", partial_conv_mask_reference)
backend.register("partial_conv_epilogue", "reference", partial_conv_epilogue_reference)
# Fast kernels, imported on first use. The native ones need the C++/CUDA extension: where it
# cannot load, the 'cpu' backend runs the reference for them (see mat_fast.backend).
backend.register_lazy(
    "partial_conv_mask", "triton", "mat_fast.ops.partial_conv.triton:partial_conv_mask_triton"
)
backend.register_lazy(
    "partial_conv_mask",
    "cpu",
    "mat_fast.ops.partial_conv.native:partial_conv_mask_native",
    layer="native",
)
backend.register_lazy(
    "partial_conv_mask",
    "cuda",
    "mat_fast.ops.partial_conv.native:partial_conv_mask_native",
    layer="native",
)
backend.register_lazy(
    "partial_conv_epilogue",
    "triton",
    "mat_fast.ops.partial_conv.triton:partial_conv_epilogue_triton",
)
backend.register_lazy(
    "partial_conv_epilogue",
    "cpu",
    "mat_fast.ops.partial_conv.native:partial_conv_epilogue_native",
    layer="native",
)
backend.register_lazy(
    "partial_conv_epilogue",
    "cuda",
    "mat_fast.ops.partial_conv.native:partial_conv_epilogue_native",
    layer="native",
)
# inplace=True: implementations that may overwrite x (the others are the functional ones).
backend.register("partial_conv_epilogue_inplace", "reference", partial_conv_epilogue_reference)
backend.register_lazy(
    "partial_conv_epilogue_inplace",
    "triton",
    "mat_fast.ops.partial_conv.triton:partial_conv_epilogue_triton",
)
backend.register_lazy(
    "partial_conv_epilogue_inplace",
    "cpu",
    "mat_fast.ops.partial_conv.native:partial_conv_epilogue_native_",
    layer="native",
)
backend.register_lazy(
    "partial_conv_epilogue_inplace",
    "cuda",
    "mat_fast.ops.partial_conv.native:partial_conv_epilogue_native",
    layer="native",
)
# Mask update + epilogue in one pass; backends without a fused kernel run the two ops above.
backend.register("partial_conv_fused", "reference", partial_conv_fused_reference)
backend.register_lazy(
    "partial_conv_fused", "triton", "mat_fast.ops.partial_conv.triton:partial_conv_fused_triton"
)


def partial_conv_mask(
    mask: torch.Tensor,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    *,
    backend_name: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(update_mask, ratio)`` of a partial convolution for ``mask`` (B, 1, H, W).

    ``update = clamp(box_sum, 0, 1)``, ``ratio = k*k / (box_sum + 1e-8) * update``, where
    ``box_sum`` sums the mask over each k x k window at the conv's stride and padding.
    """
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must have shape (B, 1, H, W); got {tuple(mask.shape)}")
    fn = backend.implementation("partial_conv_mask", mask.device, backend_name)
    return fn(mask, int(kernel_size), int(stride), int(padding))


def partial_conv_epilogue(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
    *,
    inplace: bool = False,
    backend_name: Optional[str] = None,
) -> torch.Tensor:
    """``clamp(leaky_relu(x + bias, alpha) * gain) * ratio``: a partial conv after its conv.

    Args:
        x: (B, C, H, W) convolution output before its bias (any memory format).
        bias: (C,) or None.
        ratio: (B, 1, H, W) from :func:`partial_conv_mask`, broadcast over channels.
        gain: scale after the activation (sqrt(2) for lrelu layers, times the layer's gain).
        alpha: leaky-ReLU slope (0.2 in MAT; 1.0 makes the activation the identity).
        clamp: clamp to [-clamp, clamp] after the gain and before the ratio, or None.
        inplace: let the implementation write the result into ``x`` (pass it only for a
            temporary nobody reads again, e.g. the fresh conv output); use the returned
            tensor either way, since not every implementation does.

    Returns a (B, C, H, W) tensor in x's dtype. The order (clamp before the ratio) is
    upstream's: its partial conv multiplies the output of a clamped ``Conv2dLayer``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W); got {tuple(x.shape)}")
    B, C, H, W = x.shape
    if bias is not None and tuple(bias.shape) != (C,):
        raise ValueError(
            f"bias must have shape ({C},) to match x {tuple(x.shape)}; got {tuple(bias.shape)}"
        )
    if tuple(ratio.shape) != (B, 1, H, W):
        raise ValueError(
            f"ratio must have shape {(B, 1, H, W)} to match x {tuple(x.shape)}; "
            f"got {tuple(ratio.shape)}"
        )
    op = "partial_conv_epilogue_inplace" if inplace else "partial_conv_epilogue"
    fn = backend.implementation(op, x.device, backend_name)
    return fn(x, bias, ratio, float(gain), float(alpha), None if clamp is None else float(clamp))


def partial_conv_fused(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    padding: int,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
    *,
    inplace: bool = False,
    backend_name: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(partial_conv_epilogue(x, bias, ratio, ...), update)`` with ``(update, ratio) =
    partial_conv_mask(mask, kernel_size, stride, padding)``: a partial conv after its conv,
    from the conv's input ``mask`` (B, 1, H, W); x is its (B, C, Ho, Wo) output. One pass
    over x where the backend has a fused kernel ('triton'), else the two ops. ``inplace``
    as :func:`partial_conv_epilogue` (x may be overwritten; use the return value)."""
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W); got {tuple(x.shape)}")
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0]:
        raise ValueError(
            f"mask must have shape ({x.shape[0]}, 1, H, W) for x {tuple(x.shape)}; "
            f"got {tuple(mask.shape)}"
        )
    name = backend.resolve(x.device, backend_name)
    if not backend.has_kernel("partial_conv_fused", x.device, name):  # compose the two ops
        update, ratio = partial_conv_mask(mask, kernel_size, stride, padding, backend_name=name)
        y = partial_conv_epilogue(
            x, bias, ratio, gain, alpha, clamp, inplace=inplace, backend_name=name
        )
        return y, update
    fn = backend.implementation("partial_conv_fused", x.device, name)
    return fn(
        x,
        bias,
        mask,
        int(kernel_size),
        int(stride),
        int(padding),
        float(gain),
        float(alpha),
        None if clamp is None else float(clamp),
    )


__all__ = [
    "partial_conv_epilogue",
    "partial_conv_epilogue_reference",
    "partial_conv_fused",
    "partial_conv_fused_reference",
    "partial_conv_mask",
    "partial_conv_mask_reference",
]
