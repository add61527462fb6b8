"""Partial-convolution mask update in plain PyTorch (upstream semantics).

A partial convolution sees only valid (mask = 1) pixels. After the convolution, each output
is re-weighted by ``k*k / (number of valid inputs under the kernel)`` and the output pixel
becomes valid if any input under the kernel was valid. Masks may be non-binary; the sum is
then a soft count and the update is clamped to [0, 1].

:func:`partial_conv_epilogue_reference` is the rest of a partial conv layer: bias,
activation, gain, clamp and the re-weighting by the ratio.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def partial_conv_mask_reference(
    mask: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Box-sum ``mask`` (B, 1, H, W) over the conv's window and stride.

    Returns ``(update_mask, ratio)``: ``update = clamp(sum, 0, 1)`` and
    ``ratio = k*k / (sum + 1e-8) * update`` (0 where nothing under the kernel was valid).
    """
    # Half masks are summed and divided in fp32: in fp16 the 1e-8 rounds to 0 and an empty
    # window gives 9 / 0 * 0 = NaN. fp32 and fp64 masks compute exactly as upstream.
    work = mask.float() if mask.dtype in (torch.float16, torch.bfloat16) else mask
    ones = torch.ones(1, 1, kernel_size, kernel_size, dtype=work.dtype, device=mask.device)
    with torch.no_grad():
        window_sum = F.conv2d(work, ones, stride=stride, padding=padding)
        ratio = (kernel_size * kernel_size) / (window_sum + 1e-8)
        update = torch.clamp(window_sum, 0, 1)
        ratio = ratio * update
    return update.to(mask.dtype), ratio.to(mask.dtype)


def partial_conv_epilogue_reference(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """What a partial conv does after its convolution, in upstream's order of operations:
    bias, leaky ReLU, gain, clamp (the inner ``Conv2dLayer``'s bias_act), then the ratio.

    Args:
        x: (B, C, H, W) convolution output, before its bias.
        bias: (C,) or None.
        ratio: (B, 1, H, W) partial-convolution re-weighting, broadcast over channels.
        gain: scale applied after the activation (sqrt(2) for MAT's lrelu layers).
        alpha: negative slope of the leaky ReLU (1.0 makes it the identity: 'linear').
        clamp: clamp to [-clamp, clamp] after the gain, or None (or < 0) for no clamp.

    The steps are bias_act_reference's, one op each, so the reference generator's numbers
    stay bit for bit those of upstream's ``conv(x) * ratio``.
    """
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    x = F.leaky_relu(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x * ratio


def partial_conv_fused_reference(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    padding: int,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A whole partial conv after its convolution, from the conv's *input* mask: the mask
    update then the epilogue (what fused kernels do in one pass over ``x``).

    Args:
        x: (B, C, Ho, Wo) output of the conv over an input whose validity is ``mask``,
            before its bias.
        bias: (C,) or None.
        mask: (B, 1, H, W) the conv's input mask.
        kernel_size, stride, padding: the conv's window, as for
            :func:`partial_conv_mask_reference`.
        gain, alpha, clamp: as for :func:`partial_conv_epilogue_reference`.

    Returns ``(y, update_mask)``: y (B, C, Ho, Wo) in x's dtype, update_mask (B, 1, Ho, Wo)
    in mask's dtype.
    """
    update, ratio = partial_conv_mask_reference(mask, kernel_size, stride, padding)
    return partial_conv_epilogue_reference(x, bias, ratio, gain, alpha, clamp), update
