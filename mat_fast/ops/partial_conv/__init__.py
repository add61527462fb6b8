"""Partial-convolution mask update: public entry point and dispatch."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ... import backend
from .reference import partial_conv_mask_reference

backend.register("partial_conv_mask", "reference", partial_conv_mask_reference)
# Fast kernels, imported on first use; a missing module means that backend runs the reference.
backend.register_lazy("partial_conv_mask", "triton", "mat_fast.ops.partial_conv.triton:partial_conv_mask_triton")
backend.register_lazy("partial_conv_mask", "cpu", "mat_fast.ops.partial_conv.native:partial_conv_mask_native")
backend.register_lazy("partial_conv_mask", "cuda", "mat_fast.ops.partial_conv.native:partial_conv_mask_native")


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


__all__ = ["partial_conv_mask", "partial_conv_mask_reference"]
