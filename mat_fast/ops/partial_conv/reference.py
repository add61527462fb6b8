"""Partial-convolution mask update in plain PyTorch (upstream semantics).

A partial convolution sees only valid (mask = 1) pixels. After the convolution, each output
is re-weighted by ``k*k / (number of valid inputs under the kernel)`` and the output pixel
becomes valid if any input under the kernel was valid. Masks may be non-binary; the sum is
then a soft count and the update is clamped to [0, 1].
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def partial_conv_mask_reference(
    mask: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Box-sum ``mask`` (B, 1, H, W) over the conv's window and stride.

    Returns ``(update_mask, ratio)``: ``update = clamp(sum, 0, 1)`` and
    ``ratio = k*k / (sum + 1e-8) * update`` (0 where nothing under the kernel was valid).
    """
    ones = torch.ones(1, 1, kernel_size, kernel_size, dtype=mask.dtype, device=mask.device)
    with torch.no_grad():
        window_sum = F.conv2d(mask, ones, stride=stride, padding=padding)
        ratio = (kernel_size * kernel_size) / (window_sum + 1e-8)
        update = torch.clamp(window_sum, 0, 1)
        ratio = ratio * update
    return update, ratio

