"""Fused shifted-window attention in Triton: launchers, ``torch.library`` custom ops and
the backend entry point :func:`window_attention_triton`.

Layers (device code in ``triton_kernels.py``):

* ``window_attention_fwd`` / ``window_attention_bwd`` launch the kernels (one launch for
  out + new mask + log-sum-exp; one or two launches for the gradients);
* ``mat_fast::window_attention_fwd`` / ``mat_fast::window_attention_bwd`` wrap them as
  custom ops with fake implementations, so ``torch.compile`` and CUDA graphs capture them;
* the forward op's autograd formula calls the backward op: a Triton flash-attention style
  backward (P recomputed from the saved log-sum-exp; dk/dv per key tile, dq per query tile,
  or all three in one program when a single tile covers the window). The mask gets no
  gradient (upstream updates it under ``no_grad``). Gradients taken with
  ``create_graph=True`` are the reference's (:mod:`mat_fast.ops.double_backward`).

Runs on CUDA tensors, or on CPU tensors when this module was imported with
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests).
"""

from typing import Optional, Tuple

import torch
import triton

from ..double_backward import creating_graph, reference_grads
from ..triton_support import (
    alloc,
    check_device,
    device_context,
    kernels_interpreted,
    next_power_of_2,
)
from .checks import check_geometry, check_qkv_projection
from .reference import window_attention_reference
from .triton_kernels import (
    window_attention_bwd_dkdv_kernel,
    window_attention_bwd_dq_kernel,
    window_attention_fwd_kernel,
)

__all__ = [
    "window_attention_triton",
    "window_attention_qkv_triton",
    "window_attention_fwd",
    "window_attention_bwd",
    "window_attention_qkv_fwd",
]


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_OP = "window_attention (triton)"


def _config(
    window: int,
    head_dim: int,
    precision: str,
    dtype: torch.dtype,
    backward: bool,
    interpreted: Optional[bool] = None,
) -> dict:
    """Tile sizes: whole 64-token windows in one tile, 256-token windows in 64-token tiles
    (online softmax over key tiles); head_dim padded to a power of two >= 16 (tl.dot).

    fp32 'ieee' dots run on FMA units, whose operand layouts hold far more per thread than
    tensor-core ones: at 4 warps the 64-token tiles spilled on sm_90 (255 registers, up to
    7.4 KB of stack per thread in the window-16 dk/dv kernel). There the forward takes 8
    warps and the backward 16-token tiles at 8 warps: no stack at all (the sm_90 compile
    test checks every configuration). Triton's interpreter has no registers and pays per
    loop step, so it keeps the large tiles (a test runs it on the GPU tiles too);
    ``interpreted`` defaults to how the kernels were built."""
    if interpreted is None:
        interpreted = kernels_interpreted(window_attention_fwd_kernel)
    n_pad = max(16, next_power_of_2(window * window))
    block, num_warps = min(n_pad, 64), 4
    if dtype == torch.float32 and precision == "ieee" and not interpreted:
        block, num_warps = (16 if backward else block), 8
    return dict(
        BLOCK_M=block,
        BLOCK_N=block,
        BLOCK_D=max(16, next_power_of_2(head_dim)),
        num_warps=num_warps,
    )


def _geometry(q: torch.Tensor, H: int, W: int, window: int, shift: int, heads: int) -> dict:
    B, L, C = q.shape
    return dict(
        H=H,
        W=W,
        L=L,
        C=C,
        N_WIN=(H // window) * (W // window),
        N_WIN_W=W // window,
        HEADS=heads,
        scale=float((C // heads) ** -0.5),
        HEAD_DIM=C // heads,
        WINDOW=window,
        SHIFT=shift,
    )


def _precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    if dtype == torch.bfloat16 and kernels_interpreted(window_attention_fwd_kernel):
        return "upcast"  # the interpreter's tl.dot multiplies bf16 bit patterns as integers
    return "tf32" if allow_tf32 else "ieee"


# ----------------------------------------------------------------------------------------
# Launchers (inputs already validated and contiguous).


def window_attention_fwd(q, k, v, mask, H, W, window, shift, heads, allow_tf32=False):
    """q, k, v (B, L, C), mask (B, L, 1) or None -> out (B, L, C) in q's dtype,
    new_mask (B, L, 1) in mask's dtype (empty (0,) when mask is None), lse (B, heads, L) fp32."""
    B, L, C = q.shape
    geo = _geometry(q, H, W, window, shift, heads)
    precision = _precision(q.dtype, allow_tf32)
    cfg = _config(window, geo["HEAD_DIM"], precision, q.dtype, backward=False)
    out = alloc((B, L, C), q.dtype, q.device)
    lse = alloc((B, heads, L), torch.float32, q.device)
    new_mask = alloc((B, L, 1), mask.dtype, q.device) if mask is not None else q.new_empty(0)
    grid = (B * geo["N_WIN"], heads, triton.cdiv(window * window, cfg["BLOCK_M"]))
    with device_context(q.device):
        window_attention_fwd_kernel[grid](
            q,
            k,
            v,
            mask if mask is not None else q,
            out,
            new_mask if mask is not None else out,
            lse,
            lse,
            lse,  # inv_norm, bias: unused unless PACKED
            **geo,
            HAS_MASK=mask is not None,
            DOT_PRECISION=precision,
            **cfg,
        )
    return out, new_mask, lse


def window_attention_qkv_fwd(
    qkv, inv_norm, bias, mask, H, W, window, shift, heads, allow_tf32=False
):
    """Like :func:`window_attention_fwd` from packed raw projections: qkv (B, L, 3C) = W x,
    inv_norm (B, L) fp32, bias (3C,) or None; q, k, v are finished inside the kernel."""
    B, L, C3 = qkv.shape
    C = C3 // 3
    geo = _geometry(qkv[..., :C], H, W, window, shift, heads)
    precision = _precision(qkv.dtype, allow_tf32)
    cfg = _config(window, geo["HEAD_DIM"], precision, qkv.dtype, backward=False)
    out = alloc((B, L, C), qkv.dtype, qkv.device)
    lse = alloc((B, heads, L), torch.float32, qkv.device)
    new_mask = alloc((B, L, 1), mask.dtype, qkv.device) if mask is not None else qkv.new_empty(0)
    grid = (B * geo["N_WIN"], heads, triton.cdiv(window * window, cfg["BLOCK_M"]))
    with device_context(qkv.device):
        window_attention_fwd_kernel[grid](
            qkv,
            qkv,
            qkv,
            mask if mask is not None else qkv,
            out,
            new_mask if mask is not None else out,
            lse,
            inv_norm,
            bias if bias is not None else inv_norm,
            **geo,
            HAS_MASK=mask is not None,
            DOT_PRECISION=precision,
            PACKED=True,
            HAS_BIAS=bias is not None,
            **cfg,
        )
    return out, new_mask, lse


def window_attention_bwd(do, q, k, v, mask, out, lse, H, W, window, shift, heads, allow_tf32=False):
    """Gradients (dq, dk, dv), each (B, L, C) in q's dtype, of ``sum(do * out)``."""
    B, L, C = q.shape
    geo = _geometry(q, H, W, window, shift, heads)
    precision = _precision(q.dtype, allow_tf32)
    cfg = _config(window, geo["HEAD_DIM"], precision, q.dtype, backward=True)
    # delta = rowsum(dO * O) per token and head: (B, heads, L) fp32
    delta = (
        (do.float() * out.float())
        .view(B, L, heads, C // heads)
        .sum(-1)
        .transpose(1, 2)
        .contiguous()
    )
    dq, dk, dv = (alloc((B, L, C), q.dtype, q.device) for _ in range(3))
    n_tiles = triton.cdiv(window * window, cfg["BLOCK_N"])
    common = dict(**geo, HAS_MASK=mask is not None, DOT_PRECISION=precision, **cfg)
    m = mask if mask is not None else q
    with device_context(q.device):
        window_attention_bwd_dkdv_kernel[(B * geo["N_WIN"], heads, n_tiles)](
            q, k, v, m, do, lse, delta, dq, dk, dv, WITH_DQ=n_tiles == 1, **common
        )
        if n_tiles > 1:
            window_attention_bwd_dq_kernel[(B * geo["N_WIN"], heads, n_tiles)](
                q, k, v, m, do, lse, delta, dq, **common
            )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# Custom ops (opaque to torch.compile, capturable by CUDA graphs) and autograd.


@torch.library.custom_op("mat_fast::window_attention_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    H: int,
    W: int,
    window: int,
    shift: int,
    heads: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return window_attention_fwd(q, k, v, mask, H, W, window, shift, heads, allow_tf32)


@_fwd_op.register_fake
def _fwd_fake(q, k, v, mask, H, W, window, shift, heads, allow_tf32):
    B, L, C = q.shape
    out = q.new_empty((B, L, C))
    new_mask = mask.new_empty((B, L, 1)) if mask is not None else q.new_empty(0)
    return out, new_mask, q.new_empty((B, heads, L), dtype=torch.float32)


@torch.library.custom_op("mat_fast::window_attention_bwd", mutates_args=())
def _bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    out: torch.Tensor,
    lse: torch.Tensor,
    H: int,
    W: int,
    window: int,
    shift: int,
    heads: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return window_attention_bwd(
        do.contiguous(), q, k, v, mask, out, lse, H, W, window, shift, heads, allow_tf32
    )


@_bwd_op.register_fake
def _bwd_fake(do, q, k, v, mask, out, lse, H, W, window, shift, heads, allow_tf32):
    return tuple(q.new_empty(q.shape) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, mask, H, W, window, shift, heads, allow_tf32 = inputs
    out, new_mask, lse = output
    ctx.mark_non_differentiable(new_mask, lse)
    ctx.save_for_backward(q, k, v, mask, out, lse)
    ctx.args = (H, W, window, shift, heads, allow_tf32)


def _backward(ctx, grad_out, _grad_new_mask, _grad_lse):
    q, k, v, mask, out, lse = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 10
    if creating_graph():  # the Triton backward has no derivative: the twin's gradients have
        return _reference_grads(ctx, _twin(ctx), (q, k, v), grad_out)
    dq, dk, dv = _bwd_op(grad_out, q, k, v, mask, out, lse, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


def _twin(ctx):
    """The reference attention on q, k, v with this call's mask and geometry."""
    H, W, window, shift, heads, _ = ctx.args
    mask = ctx.saved_tensors[3]

    def attention(q, k, v):
        return window_attention_reference(q, k, v, mask, (H, W), window, shift, heads)[0]

    return attention


def _reference_grads(ctx, twin, inputs: tuple, grad_out):
    """The gradients of ``twin`` (one output) for the op's three leading inputs, then None
    for the mask and the geometry."""
    grads = reference_grads(_OP, twin, inputs, ctx.needs_input_grad[:3], (grad_out,))
    return (*grads, None, None, None, None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("mat_fast::window_attention_qkv_fwd", mutates_args=())
def _qkv_fwd_op(
    qkv: torch.Tensor,
    inv_norm: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    H: int,
    W: int,
    window: int,
    shift: int,
    heads: int,
    allow_tf32: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return window_attention_qkv_fwd(
        qkv, inv_norm, bias, mask, H, W, window, shift, heads, allow_tf32
    )


@_qkv_fwd_op.register_fake
def _qkv_fwd_fake(qkv, inv_norm, bias, mask, H, W, window, shift, heads, allow_tf32):
    B, L, C3 = qkv.shape
    out = qkv.new_empty((B, L, C3 // 3))
    new_mask = mask.new_empty((B, L, 1)) if mask is not None else qkv.new_empty(0)
    return out, new_mask, qkv.new_empty((B, heads, L), dtype=torch.float32)


def _finish_projections(qkv, inv_norm, bias):
    """q, k, v (B, L, C) as the packed kernel forms them: (W x) * inv_norm + b in fp32 for
    q and k, W x + b for v, rounded to the input dtype."""
    raw = qkv.float().unflatten(-1, (3, -1))  # (B, L, 3, C)
    scale = torch.stack([inv_norm, inv_norm, torch.ones_like(inv_norm)], -1)  # (B, L, 3)
    full = raw * scale[..., None]
    if bias is not None:
        full = full + bias.float().view(3, -1)
    return tuple(t.to(qkv.dtype).contiguous() for t in full.unbind(-2))


def _qkv_setup_context(ctx, inputs, output):
    qkv, inv_norm, bias, mask, H, W, window, shift, heads, allow_tf32 = inputs
    out, new_mask, lse = output
    ctx.mark_non_differentiable(new_mask, lse)
    ctx.save_for_backward(qkv, inv_norm, bias, mask, out, lse)
    ctx.args = (H, W, window, shift, heads, allow_tf32)


def _qkv_backward(ctx, grad_out, _grad_new_mask, _grad_lse):
    """Chain rule through q = (W x) * inv + b_q (k alike), v = W x + b_v around the fused
    attention's backward, which runs on q, k, v recomputed from the saved projections."""
    qkv, inv_norm, bias, mask, out, lse = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 10
    if creating_graph():  # the projections' finish, then the reference attention
        attention = _twin(ctx)

        def twin(qkv, inv_norm, bias):
            return attention(*_finish_projections(qkv, inv_norm, bias))

        return _reference_grads(ctx, twin, (qkv, inv_norm, bias), grad_out)
    q, k, v = _finish_projections(qkv, inv_norm, bias)
    dq, dk, dv = (t.float() for t in _bwd_op(grad_out, q, k, v, mask, out, lse, *ctx.args))
    raw_q, raw_k, _ = qkv.float().unflatten(-1, (3, -1)).unbind(-2)
    inv = inv_norm[..., None]
    d_qkv = torch.cat([dq * inv, dk * inv, dv], -1).to(qkv.dtype)
    d_inv = (dq * raw_q).sum(-1) + (dk * raw_k).sum(-1)
    d_bias = None
    if bias is not None:
        d_bias = torch.cat([dq.sum((0, 1)), dk.sum((0, 1)), dv.sum((0, 1))]).to(bias.dtype)
    return d_qkv, d_inv, d_bias, None, None, None, None, None, None, None


_qkv_fwd_op.register_autograd(_qkv_backward, setup_context=_qkv_setup_context)


# ----------------------------------------------------------------------------------------
# Backend entry point.


def _checked_mask(x, mask, H, W, window, shift, heads):
    """Validate dtype, geometry and mask of (B, L, C) tokens ``x``; the mask, contiguous."""
    if x.dtype not in _DTYPES:
        raise ValueError(f"{_OP}: dtype {x.dtype} is not supported (float32, float16, bfloat16)")
    B, L, C = x.shape
    check_geometry(B, L, C, mask, H, W, window, shift, heads)
    if mask is None:
        return None
    if not mask.is_floating_point():
        raise ValueError(f"{_OP}: mask must be floating point; got {mask.dtype}")
    return mask.contiguous()


def window_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
    *,
    allow_tf32: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fused contextual attention over (shifted) windows; same contract as
    :func:`mat_fast.ops.window_attention.reference.window_attention_reference`.

    Args:
        q, k, v: (B, H*W, C) fp32/fp16/bf16 tokens in row-major grid order, one dtype,
            C = num_heads * head_dim (any head_dim; padded to a power of two inside).
        mask: (B, H*W, 1) floating validity (0 hole, 1 valid, other values added to the
            logits) or None.
        x_size: (H, W), multiples of ``window_size``.
        window_size: w (w*w tokens per window; 8 and 16 in MAT, any w >= 1 works).
        shift_size: cyclic shift in [0, w).
        num_heads: heads.
        allow_tf32: let fp32 inputs use TF32 tensor-core dots (default: IEEE fp32).

    Returns:
        (out (B, H*W, C) in q's dtype, new_mask (B, H*W, 1) in mask's dtype or None).
        Gradients flow to q, k, v through a Triton backward; none to the mask.
    """
    H, W = (int(s) for s in x_size)
    window, shift, heads = int(window_size), int(shift_size), int(num_heads)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.ndim != 3:
            raise ValueError(f"{_OP}: {name} must be a (B, H*W, C) tensor")
        if t.shape != q.shape or t.dtype != q.dtype:
            raise ValueError(
                f"{_OP}: q, k, v must share shape and dtype; got {name} "
                f"{tuple(t.shape)} {t.dtype} vs q {tuple(q.shape)} {q.dtype}"
            )
    mask = _checked_mask(q, mask, H, W, window, shift, heads)
    check_device(_OP, window_attention_fwd_kernel, q, k, v, mask)
    out, new_mask, _ = _fwd_op(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        mask,
        H,
        W,
        window,
        shift,
        heads,
        bool(allow_tf32),
    )
    return out, (new_mask if mask is not None else None)


def window_attention_qkv_triton(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    x_size: Tuple[int, int],
    window_size: int,
    shift_size: int,
    num_heads: int,
    *,
    allow_tf32: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Fused projections + attention; same contract as
    :func:`mat_fast.ops.window_attention.reference.window_attention_qkv_reference`.

    One GEMM makes the raw projections W x for q, k and v at once (B, L, 3C); the
    normalisation is a per-token fp32 scale 1 / max(||x||, 1e-12) that the attention
    kernel applies to q and k, with the biases, as it loads them (W (x / ||x||) =
    (W x) / ||x||): no normalised copy of x, no separate q, k, v tensors. All-zero tokens
    give q = b_q and k = b_k, finite in every dtype. Gradients flow to x, the weight and
    the bias (the backward recomputes q, k, v from the saved projections).

    Args:
        x: (B, H*W, C) fp32/fp16/bf16 tokens; qkv_weight (3C, C); qkv_bias (3C,) or None
            (cast to x's dtype); the rest as :func:`window_attention_triton`.
    """
    check_qkv_projection(x, qkv_weight, qkv_bias)
    H, W = (int(s) for s in x_size)
    window, shift, heads = int(window_size), int(shift_size), int(num_heads)
    mask = _checked_mask(x, mask, H, W, window, shift, heads)
    check_device(_OP, window_attention_fwd_kernel, x, qkv_weight, qkv_bias, mask)
    qkv = torch.nn.functional.linear(x, qkv_weight.to(x.dtype)).contiguous()  # (B, L, 3C), one GEMM
    # fp32 norms: F.normalize's 1e-12 floor underflows to 0 in fp16 (0/0 on all-zero tokens)
    inv_norm = (
        torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).clamp_min(1e-12).reciprocal()
    )
    bias = qkv_bias.to(x.dtype).contiguous() if qkv_bias is not None else None
    out, new_mask, _ = _qkv_fwd_op(
        qkv, inv_norm, bias, mask, H, W, window, shift, heads, bool(allow_tf32)
    )
    return out, (new_mask if mask is not None else None)
