"""Triton device code of the fused shifted-window attention (launchers live in ``triton.py``).

One program owns one (image, window, head, token tile). Tokens stay where they are in the
(B, H*W, C) grid: the cyclic roll, the window partition and its reverse are index
arithmetic, the 9 shift regions come from rolled coordinates, the key bias from the mask
is computed on the fly, and softmax runs flash-attention style (online max/sum over key
tiles), so no N x N matrix or permuted copy ever reaches global memory.

Rolled coordinates of token ``t`` of window ``w`` (``nWw`` windows per grid row):
``r = (w // nWw) * WINDOW + t // WINDOW``, ``c = (w % nWw) * WINDOW + t % WINDOW``; it reads
and writes grid position ``((r + SHIFT) % H, (c + SHIFT) % W)`` (roll by -SHIFT, then back).
"""

import triton
import triton.language as tl

#: Added to logits across shift regions and on keys whose mask is exactly 0 (upstream's value).
MASK_PENALTY = tl.constexpr(-100.0)


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation. DOT_PRECISION 'ieee' / 'tf32' picks the fp32 path;
    'upcast' multiplies in fp32 (for Triton's interpreter, whose dot mishandles bf16; bf16
    products are exact in fp32, so the numbers match a bf16 tensor-core dot)."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _window_tokens(i_w, o_t, H, W, N_WIN_W, WINDOW: tl.constexpr, SHIFT: tl.constexpr):
    """Grid token index and shift region (0..8) of window tokens ``o_t`` of window ``i_w``."""
    r = (i_w // N_WIN_W) * WINDOW + o_t // WINDOW
    c = (i_w % N_WIN_W) * WINDOW + o_t % WINDOW
    if SHIFT > 0:
        tok = ((r + SHIFT) % H) * W + (c + SHIFT) % W
        band_r = (r >= H - WINDOW).to(tl.int32) + (r >= H - SHIFT).to(tl.int32)
        band_c = (c >= W - WINDOW).to(tl.int32) + (c >= W - SHIFT).to(tl.int32)
        region = band_r * 3 + band_c
    else:
        tok = r * W + c
        region = tl.zeros_like(o_t)
    return tok, region


@triton.jit
def _logits(b_q, b_k, reg_m, reg_n, b_kb, scale, SHIFT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """[M, D] q, [N, D] k -> [M, N] fp32 logits with the shift-region and key biases."""
    # [M, D] @ [D, N]
    b_s = _dot(b_q, tl.trans(b_k), DOT_PRECISION) * scale
    if SHIFT > 0:
        b_s += tl.where(reg_m[:, None] == reg_n[None, :], 0.0, MASK_PENALTY)
    # b_kb already holds -inf on padding keys
    return b_s + b_kb[None, :]


@triton.jit
def _key_bias(mask, i_b, L, tok_n, m_n, HAS_MASK: tl.constexpr):
    """[N] additive key bias (mask 0 -> -100, 1 -> 0, other v -> v; -inf past the window)
    and the [N] mask values (0 past the window) for the window sum."""
    if HAS_MASK:
        # [N]
        b_km = tl.load(mask + i_b * L + tok_n, mask=m_n, other=0.0).to(tl.float32)
        b_kb = tl.where(b_km == 0.0, MASK_PENALTY, tl.where(b_km == 1.0, 0.0, b_km))
    else:
        b_km = tl.zeros(tok_n.shape, dtype=tl.float32)
        b_kb = tl.zeros(tok_n.shape, dtype=tl.float32)
    return tl.where(m_n, b_kb, float("-inf")), b_km


@triton.jit
def _load_projected(
    qkv,
    inv_norm,
    bias,
    i_b,
    L,
    tok,
    m_tok,
    col,
    o_d,
    m_d,
    stride_l,
    PACKED: tl.constexpr,
    NORMALIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """[T, D] head slice starting at channel ``col`` of tokens ``tok``. PACKED: ``qkv`` holds
    raw projections W x (B, L, 3C), finished here as (W x) * inv_norm + b (NORMALIZE for q
    and k: W (x / ||x||) = (W x) / ||x||) in fp32, then rounded to the input dtype."""
    m_td = m_tok[:, None] & m_d[None, :]
    b_t = tl.load(
        qkv + i_b * L * stride_l + tok[:, None] * stride_l + col + o_d[None, :],
        mask=m_td,
        other=0.0,
    )
    if PACKED:
        b_f = b_t.to(tl.float32)
        if NORMALIZE:
            # [T]
            b_inv = tl.load(inv_norm + i_b * L + tok, mask=m_tok, other=0.0)
            b_f = b_f * b_inv[:, None]
        if HAS_BIAS:
            # [D]
            b_b = tl.load(bias + col + o_d, mask=m_d, other=0.0).to(tl.float32)
            b_f = tl.where(m_td, b_f + b_b[None, :], 0.0)
        b_t = b_f.to(b_t.dtype)
    return b_t


@triton.jit
def window_attention_fwd_kernel(
    q,
    k,
    v,
    mask,
    o,
    new_mask,
    lse,
    inv_norm,
    bias,
    H,
    W,
    L,
    C,
    N_WIN,
    N_WIN_W,
    HEADS,
    scale,
    HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PACKED: tl.constexpr = False,
    HAS_BIAS: tl.constexpr = False,
):
    """Grid (B * nW, heads, cdiv(N, BLOCK_M)): out, log-sum-exp and (head 0) the new mask of
    one query tile. q, k, v, o: (B, L, C); mask, new_mask: (B, L, 1); lse: (B, heads, L) fp32.

    PACKED: q = k = v = the raw projections W x, (B, L, 3C) with q, k, v in channel thirds;
    inv_norm (B, L) fp32 = 1 / max(||x||, 1e-12); bias (3C,) when HAS_BIAS. Otherwise
    inv_norm and bias are unused."""
    N: tl.constexpr = WINDOW * WINDOW
    i_bw, i_h, i_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b = (i_bw // N_WIN).to(tl.int64)
    i_w = i_bw % N_WIN

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < N
    m_d = o_d < HEAD_DIM
    tok_m, reg_m = _window_tokens(i_w, o_m, H, W, N_WIN_W, WINDOW, SHIFT)

    o_base = i_b * L * C + i_h * HEAD_DIM
    # column of this head's q, k, v and the token stride in the q/k/v tensors
    col_q = i_h * HEAD_DIM
    if PACKED:
        col_k, col_v, stride_l = col_q + C, col_q + 2 * C, 3 * C
    else:
        col_k, col_v, stride_l = col_q, col_q, C
    # [M, D]
    b_q = _load_projected(
        q, inv_norm, bias, i_b, L, tok_m, m_m, col_q, o_d, m_d, stride_l, PACKED, True, HAS_BIAS
    )

    b_mx = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    b_msum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        tok_n, reg_n = _window_tokens(i_w, o_n, H, W, N_WIN_W, WINDOW, SHIFT)
        # [N, D]
        b_k = _load_projected(
            k, inv_norm, bias, i_b, L, tok_n, m_n, col_k, o_d, m_d, stride_l, PACKED, True, HAS_BIAS
        )
        b_v = _load_projected(
            v,
            inv_norm,
            bias,
            i_b,
            L,
            tok_n,
            m_n,
            col_v,
            o_d,
            m_d,
            stride_l,
            PACKED,
            False,
            HAS_BIAS,
        )
        b_kb, b_km = _key_bias(mask, i_b, L, tok_n, m_n, HAS_MASK)
        b_msum += b_km
        # [M, N]; every tile holds a real key, so the running max is finite after tile 0
        b_s = _logits(b_q, b_k, reg_m, reg_n, b_kb, scale, SHIFT, DOT_PRECISION)
        b_mx_new = tl.maximum(b_mx, tl.max(b_s, 1))
        b_alpha = tl.exp(b_mx - b_mx_new)
        b_p = tl.exp(b_s - b_mx_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        # [M, N] @ [N, D]
        b_acc = b_acc * b_alpha[:, None] + _dot(b_p.to(b_v.dtype), b_v, DOT_PRECISION)
        b_mx = b_mx_new

    b_o = b_acc / b_l[:, None]
    tl.store(
        o + o_base + tok_m[:, None] * C + o_d[None, :],
        b_o.to(o.dtype.element_ty),
        mask=m_m[:, None] & m_d[None, :],
    )
    tl.store(lse + (i_b * HEADS + i_h) * L + tok_m, b_mx + tl.log(b_l), mask=m_m)
    if HAS_MASK:
        if i_h == 0:
            # window valid once any token is: clamp(sum, 0, 1) on every token (head 0 writes)
            b_valid = tl.minimum(tl.maximum(tl.sum(b_msum, 0), 0.0), 1.0)
            b_nm = tl.zeros([BLOCK_M], dtype=tl.float32) + b_valid
            tl.store(new_mask + i_b * L + tok_m, b_nm.to(new_mask.dtype.element_ty), mask=m_m)


@triton.jit
def window_attention_bwd_dkdv_kernel(
    q,
    k,
    v,
    mask,
    do,
    lse,
    delta,
    dq,
    dk,
    dv,
    H,
    W,
    L,
    C,
    N_WIN,
    N_WIN_W,
    HEADS,
    scale,
    HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    WITH_DQ: tl.constexpr,
):
    """Grid (B * nW, heads, cdiv(N, BLOCK_N)): dk, dv of one key tile, looping over query
    tiles with P recomputed from the saved log-sum-exp. With ``WITH_DQ`` (one tile covers
    the window) it also writes dq. delta: (B, heads, L) fp32 = rowsum(dO * O) per head."""
    N: tl.constexpr = WINDOW * WINDOW
    i_bw, i_h, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b = (i_bw // N_WIN).to(tl.int64)
    i_w = i_bw % N_WIN

    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_n = o_n < N
    m_d = o_d < HEAD_DIM
    m_nd = m_n[:, None] & m_d[None, :]
    tok_n, reg_n = _window_tokens(i_w, o_n, H, W, N_WIN_W, WINDOW, SHIFT)
    o_base = i_b * L * C + i_h * HEAD_DIM
    o_row = (i_b * HEADS + i_h) * L
    # [N, D]
    b_k = tl.load(k + o_base + tok_n[:, None] * C + o_d[None, :], mask=m_nd, other=0.0)
    b_v = tl.load(v + o_base + tok_n[:, None] * C + o_d[None, :], mask=m_nd, other=0.0)
    b_kb, b_km = _key_bias(mask, i_b, L, tok_n, m_n, HAS_MASK)

    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        o_m = start_m + tl.arange(0, BLOCK_M)
        m_m = o_m < N
        m_md = m_m[:, None] & m_d[None, :]
        tok_m, reg_m = _window_tokens(i_w, o_m, H, W, N_WIN_W, WINDOW, SHIFT)
        # [M, D]
        b_q = tl.load(q + o_base + tok_m[:, None] * C + o_d[None, :], mask=m_md, other=0.0)
        b_do = tl.load(do + o_base + tok_m[:, None] * C + o_d[None, :], mask=m_md, other=0.0)
        # [M]
        b_lse = tl.load(lse + o_row + tok_m, mask=m_m, other=0.0)
        b_delta = tl.load(delta + o_row + tok_m, mask=m_m, other=0.0)
        # [M, N]
        b_s = _logits(b_q, b_k, reg_m, reg_n, b_kb, scale, SHIFT, DOT_PRECISION)
        b_p = tl.where(m_m[:, None], tl.exp(b_s - b_lse[:, None]), 0.0)
        # [N, M] @ [M, D]
        b_dv += _dot(tl.trans(b_p.to(b_do.dtype)), b_do, DOT_PRECISION)
        # [M, D] @ [D, N]
        b_dp = _dot(b_do, tl.trans(b_v), DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        # [N, M] @ [M, D]
        b_dk += _dot(tl.trans(b_ds.to(b_q.dtype)), b_q, DOT_PRECISION)
        if WITH_DQ:
            # [M, N] @ [N, D]
            b_dq = _dot(b_ds.to(b_k.dtype), b_k, DOT_PRECISION) * scale
            tl.store(
                dq + o_base + tok_m[:, None] * C + o_d[None, :],
                b_dq.to(dq.dtype.element_ty),
                mask=m_md,
            )

    p_n = o_base + tok_n[:, None] * C + o_d[None, :]
    tl.store(dk + p_n, (b_dk * scale).to(dk.dtype.element_ty), mask=m_nd)
    tl.store(dv + p_n, b_dv.to(dv.dtype.element_ty), mask=m_nd)


@triton.jit
def window_attention_bwd_dq_kernel(
    q,
    k,
    v,
    mask,
    do,
    lse,
    delta,
    dq,
    H,
    W,
    L,
    C,
    N_WIN,
    N_WIN_W,
    HEADS,
    scale,
    HEAD_DIM: tl.constexpr,
    WINDOW: tl.constexpr,
    SHIFT: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Grid (B * nW, heads, cdiv(N, BLOCK_M)): dq of one query tile, looping over key tiles
    (used when a window spans several tiles, so no atomics are needed)."""
    N: tl.constexpr = WINDOW * WINDOW
    i_bw, i_h, i_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b = (i_bw // N_WIN).to(tl.int64)
    i_w = i_bw % N_WIN

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < N
    m_d = o_d < HEAD_DIM
    m_md = m_m[:, None] & m_d[None, :]
    tok_m, reg_m = _window_tokens(i_w, o_m, H, W, N_WIN_W, WINDOW, SHIFT)
    o_base = i_b * L * C + i_h * HEAD_DIM
    o_row = (i_b * HEADS + i_h) * L
    # [M, D]
    b_q = tl.load(q + o_base + tok_m[:, None] * C + o_d[None, :], mask=m_md, other=0.0)
    b_do = tl.load(do + o_base + tok_m[:, None] * C + o_d[None, :], mask=m_md, other=0.0)
    # [M]
    b_lse = tl.load(lse + o_row + tok_m, mask=m_m, other=0.0)
    b_delta = tl.load(delta + o_row + tok_m, mask=m_m, other=0.0)

    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)
        m_n = o_n < N
        m_nd = m_n[:, None] & m_d[None, :]
        tok_n, reg_n = _window_tokens(i_w, o_n, H, W, N_WIN_W, WINDOW, SHIFT)
        # [N, D]
        b_k = tl.load(k + o_base + tok_n[:, None] * C + o_d[None, :], mask=m_nd, other=0.0)
        b_v = tl.load(v + o_base + tok_n[:, None] * C + o_d[None, :], mask=m_nd, other=0.0)
        b_kb, b_km = _key_bias(mask, i_b, L, tok_n, m_n, HAS_MASK)
        # [M, N]
        b_s = _logits(b_q, b_k, reg_m, reg_n, b_kb, scale, SHIFT, DOT_PRECISION)
        b_p = tl.exp(b_s - b_lse[:, None])
        # [M, D] @ [D, N]
        b_dp = _dot(b_do, tl.trans(b_v), DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        # [M, N] @ [N, D]
        b_dq += _dot(b_ds.to(b_k.dtype), b_k, DOT_PRECISION)

    tl.store(
        dq + o_base + tok_m[:, None] * C + o_d[None, :],
        (b_dq * scale).to(dq.dtype.element_ty),
        mask=m_md,
    )
