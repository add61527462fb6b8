"""Partial convolution in Triton: the mask update and the conv epilogue; launchers,
``torch.library`` custom ops and the backend entry points.

Layers (device code in ``triton_kernels.py``):

* ``partial_conv_mask_fwd``, ``partial_conv_epilogue_fwd`` / ``_bwd`` and
  ``partial_conv_fused_fwd`` launch the kernels;
* ``mat_fast::partial_conv_mask``, ``mat_fast::partial_conv_epilogue_fwd`` / ``_bwd`` and
  ``mat_fast::partial_conv_fused_fwd`` wrap them as custom ops with fake implementations,
  so ``torch.compile`` and CUDA graphs capture them;
* the epilogue's autograd: dx from a Triton kernel, dbias its fp32 channel sum, dratio (when
  the ratio requires grad) a torch formula. The fused op recomputes the ratio for its
  backward (one small launch) rather than saving it. Masks get no gradient (upstream
  updates them under ``no_grad``). Gradients taken with ``create_graph=True`` are the
  reference's (:mod:`mat_fast.ops.double_backward`).

Entry points, each with the signature of its reference twin in ``reference.py``:
:func:`partial_conv_mask_triton`, :func:`partial_conv_epilogue_triton` and
:func:`partial_conv_fused_triton` (mask update + epilogue in one launch, one pass over x).

Runs on CUDA tensors, or on CPU tensors when this module was imported with
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests).
"""

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..double_backward import creating_graph, reference_grads
from ..triton_support import alloc, alloc_like, check_device, device_context, next_power_of_2
from .reference import partial_conv_epilogue_reference, partial_conv_fused_reference
from .triton_kernels import (
    partial_conv_epilogue_bwd_kernel,
    partial_conv_epilogue_fwd_kernel,
    partial_conv_fused_fwd_kernel,
    partial_conv_mask_kernel,
)

__all__ = [
    "partial_conv_epilogue_triton",
    "partial_conv_fused_triton",
    "partial_conv_mask_triton",
    "partial_conv_epilogue_fwd",
    "partial_conv_epilogue_bwd",
    "partial_conv_fused_fwd",
    "partial_conv_mask_fwd",
]


_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MASK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_OP = "partial_conv (triton)"
#: Elements per epilogue tile (channels x pixels) and pixels per mask-kernel program.
_TILE = 4096
_MASK_BLOCK = 256
#: Channels per program of the fused kernel (at least; one box sum serves them all).
_FUSED_CHANNELS = 32


def _out_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel_size) // stride + 1


def _pixel_stride(t: torch.Tensor) -> Optional[int]:
    """Stride of the flat pixel index p = h * W + w of a (B, C, H, W) tensor, or None when
    its pixels do not form one strided run (then the caller copies)."""
    _, _, H, W = t.shape
    s_h, s_w = t.stride(2), t.stride(3)
    if H == 1:
        return s_w
    if W == 1 or s_h == W * s_w:
        return s_w if W > 1 else s_h
    return None


def _feature_strides(t: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, channel, pixel) strides of a (B, C, H, W) tensor with a flat pixel stride."""
    return t.stride(0), t.stride(1), _pixel_stride(t)


def _as_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """x unchanged when the kernels can address it (contiguous NCHW, channels_last, or any
    layout whose pixels form one strided run and whose strides are non-overlapping and
    dense), else a contiguous copy."""
    if _pixel_stride(x) is not None and _is_dense(x):
        return x
    return x.contiguous()


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense, so ``empty_like`` keeps its strides."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


def _blocks(x: torch.Tensor) -> Tuple[int, int]:
    """(BLOCK_C, BLOCK_P): tiles long along the contiguous axis."""
    _, C, H, W = x.shape
    if x.stride(1) == 1 and C > 1:  # channels_last: channels are contiguous
        block_c = min(next_power_of_2(C), 128)
        block_p = min(next_power_of_2(H * W), max(1, _TILE // block_c))
    else:
        block_p = min(next_power_of_2(H * W), 512)
        block_c = min(next_power_of_2(C), max(1, _TILE // block_p))
    return block_c, block_p


def _grid(x: torch.Tensor, block_c: int, block_p: int):
    B, C, H, W = x.shape
    return (triton.cdiv(H * W, block_p), triton.cdiv(C, block_c), B)


def _acc(mask: torch.Tensor):
    """Box-sum accumulator: fp32 (fp64 for fp64 masks)."""
    return tl.float64 if mask.dtype == torch.float64 else tl.float32


def _clamp_args(clamp: Optional[float]) -> Tuple[bool, float]:
    has = clamp is not None and clamp >= 0
    return has, float(clamp) if has else 0.0


# ----------------------------------------------------------------------------------------
# Launchers (inputs already validated; x in a kernel layout).


def partial_conv_mask_fwd(mask, kernel_size, stride, padding):
    """mask (B, 1, H, W) -> (update, ratio), each contiguous (B, 1, Ho, Wo) in mask's dtype."""
    B, _, H, W = mask.shape
    Ho, Wo = (_out_size(s, kernel_size, stride, padding) for s in (H, W))
    update = alloc((B, 1, Ho, Wo), mask.dtype, mask.device)
    ratio = alloc((B, 1, Ho, Wo), mask.dtype, mask.device)
    if update.numel() == 0:
        return update, ratio
    block = min(_MASK_BLOCK, next_power_of_2(Ho * Wo))
    with device_context(mask.device):
        partial_conv_mask_kernel[(triton.cdiv(Ho * Wo, block), B)](
            mask,
            update,
            ratio,
            H,
            W,
            Ho,
            Wo,
            mask.stride(0),
            mask.stride(2),
            mask.stride(3),
            K=kernel_size,
            STRIDE=stride,
            PAD=padding,
            BLOCK_P=block,
            ACC=_acc(mask),
            num_warps=4,
        )
    return update, ratio


def partial_conv_epilogue_fwd(x, bias, ratio, gain, alpha, clamp):
    """y = clamp(lrelu(x + bias, alpha) * gain, -clamp, clamp) * ratio, x's dtype and strides."""
    B, C, H, W = x.shape
    y = alloc_like(x)
    if y.numel() == 0:
        return y
    has_clamp, clamp_v = _clamp_args(clamp)
    block_c, block_p = _blocks(x)
    with device_context(x.device):
        partial_conv_epilogue_fwd_kernel[_grid(x, block_c, block_p)](
            x,
            bias if bias is not None else x,
            ratio,
            y,
            C,
            H * W,
            W,
            *_feature_strides(x),
            *_feature_strides(y),
            ratio.stride(0),
            ratio.stride(2),
            ratio.stride(3),
            float(gain),
            float(alpha),
            clamp_v,
            HAS_BIAS=bias is not None,
            HAS_CLAMP=has_clamp,
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=4,
        )
    return y


def partial_conv_epilogue_bwd(dy, x, bias, ratio, gain, alpha, clamp):
    """dx (x's dtype and strides) of sum(dy * epilogue(x))."""
    B, C, H, W = x.shape
    dx = alloc_like(x)
    if dx.numel() == 0:
        return dx
    has_clamp, clamp_v = _clamp_args(clamp)
    block_c, block_p = _blocks(x)
    with device_context(x.device):
        partial_conv_epilogue_bwd_kernel[_grid(x, block_c, block_p)](
            dy,
            x,
            bias if bias is not None else x,
            ratio,
            dx,
            C,
            H * W,
            W,
            *_feature_strides(dy),
            *_feature_strides(x),
            *_feature_strides(dx),
            ratio.stride(0),
            ratio.stride(2),
            ratio.stride(3),
            float(gain),
            float(alpha),
            clamp_v,
            HAS_BIAS=bias is not None,
            HAS_CLAMP=has_clamp,
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            num_warps=4,
        )
    return dx


def partial_conv_fused_fwd(x, bias, mask, kernel_size, stride, padding, gain, alpha, clamp):
    """(y, update): the epilogue with the ratio computed from ``mask`` on the fly."""
    B, C, H, W = x.shape
    y = alloc_like(x)
    update = alloc((B, 1, H, W), mask.dtype, x.device)
    if y.numel() == 0:
        if update.numel():  # no channels: the mask update alone
            update = partial_conv_mask_fwd(mask, kernel_size, stride, padding)[0]
        return y, update
    has_clamp, clamp_v = _clamp_args(clamp)
    block_c, block_p = _blocks(x)
    # >= _FUSED_CHANNELS channels per program share one box sum (9 mask loads per pixel)
    c_split = max(1, min(triton.cdiv(C, block_c), _FUSED_CHANNELS // block_c))
    grid = (triton.cdiv(H * W, block_p), triton.cdiv(C, block_c * c_split), B)
    with device_context(x.device):
        partial_conv_fused_fwd_kernel[grid](
            x,
            bias if bias is not None else x,
            mask,
            y,
            update,
            C,
            H * W,
            W,
            mask.shape[2],
            mask.shape[3],
            *_feature_strides(x),
            *_feature_strides(y),
            mask.stride(0),
            mask.stride(2),
            mask.stride(3),
            float(gain),
            float(alpha),
            clamp_v,
            K=kernel_size,
            STRIDE=stride,
            PAD=padding,
            ACC=_acc(mask),
            HAS_BIAS=bias is not None,
            HAS_CLAMP=has_clamp,
            BLOCK_C=block_c,
            BLOCK_P=block_p,
            C_SPLIT=c_split,
            num_warps=4,
        )
    return y, update


# ----------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, capturable by CUDA graphs) and autograd.


def _mask_fake(mask, kernel_size, stride, padding):
    B, _, H, W = mask.shape
    shape = (
        B,
        1,
        _out_size(H, kernel_size, stride, padding),
        _out_size(W, kernel_size, stride, padding),
    )
    return mask.new_empty(shape), mask.new_empty(shape)


@torch.library.custom_op("mat_fast::partial_conv_mask", mutates_args=())
def _mask_op(
    mask: torch.Tensor, kernel_size: int, stride: int, padding: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    return partial_conv_mask_fwd(mask, kernel_size, stride, padding)


_mask_op.register_fake(_mask_fake)


@torch.library.custom_op("mat_fast::partial_conv_epilogue_fwd", mutates_args=())
def _epilogue_op(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float],
) -> torch.Tensor:
    return partial_conv_epilogue_fwd(x, bias, ratio, gain, alpha, clamp)


@_epilogue_op.register_fake
def _epilogue_fake(x, bias, ratio, gain, alpha, clamp):
    return torch.empty_like(x, memory_format=torch.preserve_format)


@torch.library.custom_op("mat_fast::partial_conv_epilogue_bwd", mutates_args=())
def _epilogue_bwd_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float],
) -> torch.Tensor:
    return partial_conv_epilogue_bwd(_grad_like(dy, x), x, bias, ratio, gain, alpha, clamp)


@_epilogue_bwd_op.register_fake
def _epilogue_bwd_fake(dy, x, bias, ratio, gain, alpha, clamp):
    return torch.empty_like(x, memory_format=torch.preserve_format)


@torch.library.custom_op("mat_fast::partial_conv_fused_fwd", mutates_args=())
def _fused_op(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: torch.Tensor,
    kernel_size: int,
    stride: int,
    padding: int,
    gain: float,
    alpha: float,
    clamp: Optional[float],
) -> Tuple[torch.Tensor, torch.Tensor]:
    return partial_conv_fused_fwd(x, bias, mask, kernel_size, stride, padding, gain, alpha, clamp)


@_fused_op.register_fake
def _fused_fake(x, bias, mask, kernel_size, stride, padding, gain, alpha, clamp):
    B, _, H, W = x.shape
    return torch.empty_like(x, memory_format=torch.preserve_format), mask.new_empty((B, 1, H, W))


def _grad_like(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dy in a layout the kernel addresses (it arrives in any strides from autograd)."""
    if dy.shape == x.shape and _pixel_stride(dy) is not None and _is_dense(dy):
        return dy
    fmt = torch.channels_last if x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format
    return dy.contiguous(memory_format=fmt)


def _epilogue_grads(ctx, dy, x, bias, ratio):
    """(dx, dbias, dratio) of the epilogue given the (saved or recomputed) ratio."""
    gain, alpha, clamp = ctx.act
    needs_x, needs_bias, needs_ratio = ctx.needs_input_grad[:3]
    needs_ratio = needs_ratio and ctx.ratio_is_input
    dx = dbias = dratio = None
    if needs_x or needs_bias:
        dx = _epilogue_bwd_op(dy, x, bias, ratio, gain, alpha, clamp)
        if needs_bias:
            dbias = dx.sum((0, 2, 3), dtype=torch.float32).to(bias.dtype)
    if needs_ratio:
        # dratio = sum over channels of dy * clamp(lrelu(x + bias) * gain)
        pre = x.float() if bias is None else x.float() + bias.float().view(1, -1, 1, 1)
        v = torch.nn.functional.leaky_relu(pre, alpha) * gain
        if clamp is not None and clamp >= 0:
            v = v.clamp(-clamp, clamp)
        dratio = (dy.float() * v).sum(1, keepdim=True).to(ratio.dtype)
    return dx if needs_x else None, dbias, dratio


def _epilogue_setup_context(ctx, inputs, output):
    x, bias, ratio, gain, alpha, clamp = inputs
    ctx.save_for_backward(x, bias, ratio)
    ctx.act = (gain, alpha, clamp)
    ctx.ratio_is_input = True


def _epilogue_backward(ctx, dy):
    x, bias, ratio = ctx.saved_tensors
    if creating_graph():  # the Triton backward has no derivative: the twin's gradients have
        return reference_grads(
            _OP,
            partial_conv_epilogue_reference,
            (x, bias, ratio, *ctx.act),
            ctx.needs_input_grad,
            (dy,),
        )
    dx, dbias, dratio = _epilogue_grads(ctx, dy, x, bias, ratio)
    return dx, dbias, dratio, None, None, None


_epilogue_op.register_autograd(_epilogue_backward, setup_context=_epilogue_setup_context)


def _fused_setup_context(ctx, inputs, output):
    x, bias, mask, kernel_size, stride, padding, gain, alpha, clamp = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, bias, mask)
    ctx.geometry = (kernel_size, stride, padding)
    ctx.act = (gain, alpha, clamp)
    ctx.ratio_is_input = False  # the third input is the mask: no gradient


def _fused_backward(ctx, dy, _d_update):
    x, bias, mask = ctx.saved_tensors
    if dy is None:
        return (None,) * 9
    if creating_graph():
        grads = reference_grads(
            _OP,
            partial_conv_fused_reference,
            (x, bias, mask, *ctx.geometry, *ctx.act),
            ctx.needs_input_grad[:2] + (False,) * 7,  # (masks get no gradient)
            (dy,),
        )
        return grads[:2] + (None,) * 7
    _, ratio = _mask_op(mask, *ctx.geometry)  # recomputed: cheaper than saving it
    dx, dbias, _ = _epilogue_grads(ctx, dy, x, bias, ratio)
    return dx, dbias, None, None, None, None, None, None, None


_fused_op.register_autograd(_fused_backward, setup_context=_fused_setup_context)


# ----------------------------------------------------------------------------------------
# Validation and backend entry points.


def _check_geometry(kernel_size: int, stride: int, padding: int) -> Tuple[int, int, int]:
    k, s, p = int(kernel_size), int(stride), int(padding)
    if k < 1 or s < 1 or p < 0:
        raise ValueError(
            f"{_OP}: need kernel_size >= 1, stride >= 1, padding >= 0; got {k}, {s}, {p}"
        )
    return k, s, p


def _check_mask(mask: torch.Tensor, k: int, s: int, p: int) -> Tuple[int, int]:
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(
            f"{_OP}: mask must have shape (B, 1, H, W); got "
            f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)}"
        )
    if mask.dtype not in _MASK_DTYPES:
        raise ValueError(
            f"{_OP}: mask dtype {mask.dtype} is not supported (float32, float16, bfloat16, float64)"
        )
    Ho, Wo = _out_size(mask.shape[2], k, s, p), _out_size(mask.shape[3], k, s, p)
    if Ho < 1 or Wo < 1:
        raise ValueError(
            f"{_OP}: a {k}x{k} kernel with padding {p} does not fit a "
            f"{mask.shape[2]}x{mask.shape[3]} mask"
        )
    return Ho, Wo


def _check_x(x: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(
            f"{_OP}: x must have shape (B, C, H, W); got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}"
        )
    if x.dtype not in _X_DTYPES:
        raise ValueError(f"{_OP}: x dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    if bias is not None:
        if tuple(bias.shape) != (x.shape[1],):
            raise ValueError(
                f"{_OP}: bias must have shape ({x.shape[1]},) to match x "
                f"{tuple(x.shape)}; got {tuple(bias.shape)}"
            )
        if not bias.is_floating_point():
            raise ValueError(f"{_OP}: bias must be floating point; got {bias.dtype}")


def partial_conv_mask_triton(
    mask: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Partial-conv mask update; same contract as
    :func:`mat_fast.ops.partial_conv.reference.partial_conv_mask_reference`.

    Args:
        mask: (B, 1, H, W) validity, any floating dtype (fp32/fp16/bf16/fp64), non-binary
            values allowed, any strides.
        kernel_size, stride, padding: the convolution's (zero padding).

    Returns:
        (update, ratio), each contiguous (B, 1, Ho, Wo) in mask's dtype:
        ``update = clamp(S, 0, 1)``, ``ratio = k*k / (S + 1e-8) * update`` with S the k x k
        box sum, summed and divided in fp32 (fp64 for fp64 masks). No gradient.
    """
    k, s, p = _check_geometry(kernel_size, stride, padding)
    _check_mask(mask, k, s, p)
    check_device(_OP, partial_conv_mask_kernel, mask)
    return _mask_op(mask.detach(), k, s, p)


def partial_conv_epilogue_triton(
    x: torch.Tensor,
    bias: Optional[torch.Tensor],
    ratio: torch.Tensor,
    gain: float,
    alpha: float,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """The conv epilogue of a partial conv in one pass; same contract as
    :func:`mat_fast.ops.partial_conv.reference.partial_conv_epilogue_reference`.

    Args:
        x: (B, C, H, W) fp32/fp16/bf16 conv output before its bias; contiguous NCHW or
            channels_last are read in place (other layouts are copied first).
        bias: (C,) any float dtype, or None.
        ratio: (B, 1, H, W) any float dtype and strides.
        gain: scale after the activation; alpha: leaky-ReLU slope (1.0 = linear).
        clamp: clamp to [-clamp, clamp] after the gain and before the ratio; None or < 0: off.

    Returns:
        ``clamp(leaky_relu(x + bias, alpha) * gain) * ratio`` in x's dtype and memory format,
        computed in fp32. Gradients flow to x, bias and ratio.
    """
    _check_x(x, bias)
    B, C, H, W = x.shape
    if not isinstance(ratio, torch.Tensor) or tuple(ratio.shape) != (B, 1, H, W):
        raise ValueError(
            f"{_OP}: ratio must have shape {(B, 1, H, W)} to match x; got "
            f"{tuple(ratio.shape) if isinstance(ratio, torch.Tensor) else type(ratio)}"
        )
    if not ratio.is_floating_point():
        raise ValueError(f"{_OP}: ratio must be floating point; got {ratio.dtype}")
    check_device(_OP, partial_conv_epilogue_fwd_kernel, x, bias, ratio)
    return _epilogue_op(
        _as_kernel_layout(x),
        bias,
        ratio,
        float(gain),
        float(alpha),
        None if clamp is None else float(clamp),
    )


def partial_conv_fused_triton(
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
    """Mask update and epilogue in one launch (one pass over x); same contract as
    :func:`mat_fast.ops.partial_conv.reference.partial_conv_fused_reference`.

    Args:
        x: (B, C, Ho, Wo) fp32/fp16/bf16 output of the conv whose input mask is ``mask``,
            before its bias (NCHW or channels_last read in place).
        bias: (C,) or None.
        mask: (B, 1, H, W) the conv's input validity, any float dtype and strides.
        kernel_size, stride, padding: the conv's window (Ho, Wo must be its output size).
        gain, alpha, clamp: as for :func:`partial_conv_epilogue_triton`.

    Returns:
        (y, update): y = epilogue(x, bias, ratio) in x's dtype and memory format, update
        (B, 1, Ho, Wo) in mask's dtype, with (update, ratio) = partial_conv_mask(mask, ...);
        the ratio is rounded to mask's dtype before use, as the two-op path does.
        Gradients flow to x and bias, none to the mask.
    """
    k, s, p = _check_geometry(kernel_size, stride, padding)
    _check_x(x, bias)
    Ho, Wo = _check_mask(mask, k, s, p)
    if x.shape[0] != mask.shape[0] or tuple(x.shape[2:]) != (Ho, Wo):
        raise ValueError(
            f"{_OP}: x {tuple(x.shape)} is not the output of a {k}x{k} conv "
            f"(stride {s}, padding {p}) over mask {tuple(mask.shape)}: expected "
            f"({mask.shape[0]}, C, {Ho}, {Wo})"
        )
    check_device(_OP, partial_conv_fused_fwd_kernel, x, bias, mask)
    return _fused_op(
        _as_kernel_layout(x),
        bias,
        mask.detach(),
        k,
        s,
        p,
        float(gain),
        float(alpha),
        None if clamp is None else float(clamp),
    )
