"""Triton device code of the partial convolution (launchers live in ``triton.py``).

Three forward kernels and one backward kernel:

* ``partial_conv_mask_kernel``: the mask update alone. One program owns ``BLOCK_P`` output
  pixels of one image; the k x k box sum of the mask (zero padding, conv stride) is summed
  in fp32, then ``update = clamp(S, 0, 1)`` and ``ratio = k*k / (S + 1e-8) * update``.
* ``partial_conv_epilogue_fwd_kernel``: the conv's epilogue given the ratio,
  ``y = clamp(lrelu(x + bias, alpha) * gain, -clamp, clamp) * ratio``.
* ``partial_conv_fused_fwd_kernel``: the same epilogue with the box sum computed on the fly
  from the mask (one launch, one pass over x), also writing the update mask. Each program
  sums one pixel tile's windows once and reuses them for ``C_SPLIT`` channel tiles.
* ``partial_conv_epilogue_bwd_kernel``: dx of the epilogue.

The epilogue kernels work on a [BLOCK_C, BLOCK_P] tile (channels x pixels) of one image.
A feature map is addressed as ``base + b * s_b + c * s_c + p * s_p`` with ``p = h * W + w``
the flat pixel index, which covers both contiguous NCHW (``s_p = 1``) and channels_last
(``s_c = 1``) without copies; Triton specialises unit strides, so loads are vectorised
along whichever axis is contiguous. Those offsets are int64 (channel and pixel indices are
widened before the stride multiply): at 4096x4096 input one image's (C, H, W) map passes
2^31 elements once C > 128, and ``c * s_c`` alone overflows int32 there.
"""

import triton
import triton.language as tl


@triton.jit
def _box_sum(
    mask,
    i_b,
    o_h,
    o_w,
    m_p,
    H,
    W,
    s_mb,
    s_mh,
    s_mw,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    ACC: tl.constexpr,
):
    """[P] sum in ``ACC`` of ``mask`` (B, 1, H, W) over the K x K windows of output pixels
    (o_h, o_w); zero padding."""
    b_s = tl.zeros(o_h.shape, dtype=ACC)
    p_m = mask + i_b * s_mb
    for kh in tl.static_range(K):
        o_ih = o_h * STRIDE - PAD + kh
        m_h = m_p & (o_ih >= 0) & (o_ih < H)
        for kw in tl.static_range(K):
            o_iw = o_w * STRIDE - PAD + kw
            m_hw = m_h & (o_iw >= 0) & (o_iw < W)
            # [P]
            b_s += tl.load(p_m + o_ih * s_mh + o_iw * s_mw, mask=m_hw, other=0.0).to(ACC)
    return b_s


@triton.jit
def _update_and_ratio(b_s, K: tl.constexpr, ACC: tl.constexpr):
    """update = clamp(S, 0, 1); ratio = K*K / (S + 1e-8) * update in S's dtype, rounded as
    torch rounds ``k*k / t`` (a correctly rounded reciprocal, then the product)."""
    b_update = tl.minimum(tl.maximum(b_s, 0.0), 1.0)
    b_one = tl.full(b_s.shape, 1.0, dtype=ACC)
    if ACC == tl.float64:
        b_inv = b_one / (b_s + 1e-8)  # fp64 division is IEEE
    else:
        b_inv = tl.math.div_rn(b_one, b_s + 1e-8)  # '/' may be approximate in fp32
    b_ratio = b_inv * (K * K) * b_update
    return b_update, b_ratio


@triton.jit
def _act(b_pre, gain, alpha, clamp, HAS_CLAMP: tl.constexpr):
    """clamp(leaky_relu(pre, alpha) * gain, -clamp, clamp), fp32."""
    b_v = tl.where(b_pre > 0, b_pre, b_pre * alpha) * gain
    if HAS_CLAMP:
        b_v = tl.minimum(tl.maximum(b_v, -clamp), clamp)
    return b_v


@triton.jit
def partial_conv_mask_kernel(
    mask,
    update,
    ratio,
    H,
    W,
    HO,
    WO,
    s_mb,
    s_mh,
    s_mw,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    """Grid (cdiv(HO * WO, BLOCK_P), B). mask: (B, 1, H, W) any strides; update, ratio:
    contiguous (B, 1, HO, WO) in mask's dtype; ACC: fp32 (fp64 for fp64 masks)."""
    i_p, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < HO * WO
    o_h, o_w = o_p // WO, o_p % WO
    b_s = _box_sum(mask, i_b, o_h, o_w, m_p, H, W, s_mb, s_mh, s_mw, K, STRIDE, PAD, ACC)
    b_update, b_ratio = _update_and_ratio(b_s, K, ACC)
    o_out = i_b * HO * WO + o_p
    tl.store(update + o_out, b_update.to(update.dtype.element_ty), mask=m_p)
    tl.store(ratio + o_out, b_ratio.to(ratio.dtype.element_ty), mask=m_p)


@triton.jit
def _epilogue_tile(
    x,
    bias,
    y,
    i_b,
    o_c,
    o_p,
    m_p,
    b_r,
    C,
    s_xb,
    s_xc,
    s_xp,
    s_yb,
    s_yc,
    s_yp,
    gain,
    alpha,
    clamp,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
):
    """y = act(x + bias) * ratio on one [C, P] tile; b_r: the tile's [P] fp32 ratio."""
    m_c = o_c < C
    m_cp = m_c[:, None] & m_p[None, :]
    # [C, P]
    b_x = tl.load(
        x + i_b * s_xb + o_c[:, None].to(tl.int64) * s_xc + o_p[None, :].to(tl.int64) * s_xp,
        mask=m_cp,
        other=0.0,
    )
    b_pre = b_x.to(tl.float32)
    if HAS_BIAS:
        # [C]
        b_pre += tl.load(bias + o_c, mask=m_c, other=0.0).to(tl.float32)[:, None]
    b_y = _act(b_pre, gain, alpha, clamp, HAS_CLAMP) * b_r[None, :]
    tl.store(
        y + i_b * s_yb + o_c[:, None].to(tl.int64) * s_yc + o_p[None, :].to(tl.int64) * s_yp,
        b_y.to(y.dtype.element_ty),
        mask=m_cp,
    )


@triton.jit
def partial_conv_epilogue_fwd_kernel(
    x,
    bias,
    ratio,
    y,
    C,
    HW,
    W,
    s_xb,
    s_xc,
    s_xp,
    s_yb,
    s_yc,
    s_yp,
    s_rb,
    s_rh,
    s_rw,
    gain,
    alpha,
    clamp,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Grid (cdiv(HW, BLOCK_P), cdiv(C, BLOCK_C), B). x, y: (B, C, H, W) with a flat pixel
    stride; ratio: (B, 1, H, W) any strides; bias: (C,)."""
    i_p, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_p = o_p < HW
    # [P]
    b_r = tl.load(ratio + i_b * s_rb + (o_p // W) * s_rh + (o_p % W) * s_rw, mask=m_p, other=0.0)
    _epilogue_tile(
        x,
        bias,
        y,
        i_b,
        o_c,
        o_p,
        m_p,
        b_r.to(tl.float32),
        C,
        s_xb,
        s_xc,
        s_xp,
        s_yb,
        s_yc,
        s_yp,
        gain,
        alpha,
        clamp,
        HAS_BIAS,
        HAS_CLAMP,
    )


@triton.jit
def partial_conv_fused_fwd_kernel(
    x,
    bias,
    mask,
    y,
    update,
    C,
    HW,
    W,
    H_IN,
    W_IN,
    s_xb,
    s_xc,
    s_xp,
    s_yb,
    s_yc,
    s_yp,
    s_mb,
    s_mh,
    s_mw,
    gain,
    alpha,
    clamp,
    K: tl.constexpr,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    ACC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    C_SPLIT: tl.constexpr,
):
    """Grid (cdiv(HW, BLOCK_P), cdiv(C, BLOCK_C * C_SPLIT), B): one box sum per pixel tile,
    then C_SPLIT channel tiles. x, y: (B, C, H, W) conv output with a flat pixel stride;
    mask: (B, 1, H_IN, W_IN) conv input mask, any strides; update: contiguous (B, 1, H, W)
    in mask's dtype (written by the programs of channel block 0)."""
    i_p, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m_p = o_p < HW

    # [P] box sum of the input mask under each output pixel's kernel window
    b_s = _box_sum(
        mask, i_b, o_p // W, o_p % W, m_p, H_IN, W_IN, s_mb, s_mh, s_mw, K, STRIDE, PAD, ACC
    )
    b_update, b_ratio = _update_and_ratio(b_s, K, ACC)
    if i_c == 0:
        tl.store(update + i_b * HW + o_p, b_update.to(update.dtype.element_ty), mask=m_p)
    # the ratio is rounded to the mask's dtype, exactly as the two-kernel path stores it
    b_r = b_ratio.to(update.dtype.element_ty).to(tl.float32)
    for i_s in tl.static_range(C_SPLIT):
        o_c = (i_c * C_SPLIT + i_s) * BLOCK_C + tl.arange(0, BLOCK_C)
        _epilogue_tile(
            x,
            bias,
            y,
            i_b,
            o_c,
            o_p,
            m_p,
            b_r,
            C,
            s_xb,
            s_xc,
            s_xp,
            s_yb,
            s_yc,
            s_yp,
            gain,
            alpha,
            clamp,
            HAS_BIAS,
            HAS_CLAMP,
        )


@triton.jit
def partial_conv_epilogue_bwd_kernel(
    dy,
    x,
    bias,
    ratio,
    dx,
    C,
    HW,
    W,
    s_gb,
    s_gc,
    s_gp,
    s_xb,
    s_xc,
    s_xp,
    s_db,
    s_dc,
    s_dp,
    s_rb,
    s_rh,
    s_rw,
    gain,
    alpha,
    clamp,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Grid (cdiv(HW, BLOCK_P), cdiv(C, BLOCK_C), B): dx = dy * ratio * gain * lrelu'(pre),
    zero where the clamp was active (|v| > clamp, as torch.clamp's gradient)."""
    i_p, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_p, m_c = o_p < HW, o_c < C
    m_cp = m_c[:, None] & m_p[None, :]

    # [C, P]
    b_pre = tl.load(
        x + i_b * s_xb + o_c[:, None].to(tl.int64) * s_xc + o_p[None, :].to(tl.int64) * s_xp,
        mask=m_cp,
        other=0.0,
    ).to(tl.float32)
    if HAS_BIAS:
        b_pre += tl.load(bias + o_c, mask=m_c, other=0.0).to(tl.float32)[:, None]
    b_dy = tl.load(
        dy + i_b * s_gb + o_c[:, None].to(tl.int64) * s_gc + o_p[None, :].to(tl.int64) * s_gp,
        mask=m_cp,
        other=0.0,
    ).to(tl.float32)
    # [P]
    b_r = tl.load(ratio + i_b * s_rb + (o_p // W) * s_rh + (o_p % W) * s_rw, mask=m_p, other=0.0)
    b_d = b_dy * tl.where(b_pre > 0, gain, gain * alpha) * b_r.to(tl.float32)[None, :]
    if HAS_CLAMP:
        b_v = tl.where(b_pre > 0, b_pre, b_pre * alpha) * gain
        b_d = tl.where((b_v >= -clamp) & (b_v <= clamp), b_d, 0.0)
    tl.store(
        dx + i_b * s_db + o_c[:, None].to(tl.int64) * s_dc + o_p[None, :].to(tl.int64) * s_dp,
        b_d.to(dx.dtype.element_ty),
        mask=m_cp,
    )
