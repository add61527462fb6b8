"""Triton device code of bias + activation + gain + clamp (launchers in ``triton.py``).

One pass over x instead of one per step: the bias is broadcast from its channel index,
which for an element at flat offset ``o`` of a tensor laid out (outer, C, inner) in memory
is ``(o // INNER) % C`` (INNER = 1 for channels_last maps with the bias on channels).
"""

import triton
import triton.language as tl

# activation codes (triton.py maps names to them)
LINEAR: tl.constexpr = tl.constexpr(0)
RELU: tl.constexpr = tl.constexpr(1)
LRELU: tl.constexpr = tl.constexpr(2)
TANH: tl.constexpr = tl.constexpr(3)
SIGMOID: tl.constexpr = tl.constexpr(4)


@triton.jit
def _pre_activation(x, bias, o_x, m_x, n_channels, inner, HAS_BIAS: tl.constexpr):
    """[BLOCK] fp32 x + bias[channel] of the elements at flat offsets ``o_x``."""
    b_x = tl.load(x + o_x, mask=m_x, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_b = tl.load(bias + (o_x // inner) % n_channels, mask=m_x, other=0.0).to(tl.float32)
        b_x = b_x + b_b
    return b_x


@triton.jit
def _activate(b_x, alpha, ACT: tl.constexpr):
    if ACT == RELU:
        return tl.maximum(b_x, 0.0)
    elif ACT == LRELU:
        return tl.where(b_x > 0, b_x, b_x * alpha)
    elif ACT == TANH:
        # 1 - 2 / (exp(2x) + 1): exact at the tails (no inf / inf)
        return 1.0 - 2.0 / (tl.exp(2.0 * b_x) + 1.0)
    elif ACT == SIGMOID:
        return 1.0 / (1.0 + tl.exp(-b_x))
    else:
        return b_x


@triton.jit
def bias_act_fwd_kernel(
    x,
    bias,
    y,
    n_elements,
    n_channels,
    inner,
    alpha,
    gain,
    clamp,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Grid (cdiv(n, BLOCK),): y = clamp(act(x + bias) * gain) over flat offsets."""
    i_p = tl.program_id(0)
    o_x = i_p.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < n_elements
    # [BLOCK]
    b_y = (
        _activate(_pre_activation(x, bias, o_x, m_x, n_channels, inner, HAS_BIAS), alpha, ACT)
        * gain
    )
    if HAS_CLAMP:
        b_y = tl.minimum(tl.maximum(b_y, -clamp), clamp)
    tl.store(y + o_x, b_y.to(y.dtype.element_ty), mask=m_x)


@triton.jit
def bias_act_bwd_kernel(
    x,
    bias,
    dy,
    dx,
    n_elements,
    n_channels,
    inner,
    alpha,
    gain,
    clamp,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Grid (cdiv(n, BLOCK),): dx = dy * gain * act'(x + bias), zero where the clamp cut
    (the bias gradient is dx summed over all but the channel dimension, done by torch)."""
    i_p = tl.program_id(0)
    o_x = i_p.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m_x = o_x < n_elements
    # [BLOCK]
    b_pre = _pre_activation(x, bias, o_x, m_x, n_channels, inner, HAS_BIAS)
    b_dy = tl.load(dy + o_x, mask=m_x, other=0.0).to(tl.float32)
    if ACT == RELU:
        b_slope = tl.where(b_pre > 0, 1.0, 0.0)
    elif ACT == LRELU:
        b_slope = tl.where(b_pre > 0, 1.0, alpha)
    elif ACT == TANH:
        b_t = _activate(b_pre, alpha, TANH)
        b_slope = 1.0 - b_t * b_t
    elif ACT == SIGMOID:
        b_s = _activate(b_pre, alpha, SIGMOID)
        b_slope = b_s * (1.0 - b_s)
    else:
        b_slope = tl.full(b_pre.shape, 1.0, tl.float32)
    b_dx = b_dy * b_slope * gain
    if HAS_CLAMP:
        b_y = _activate(b_pre, alpha, ACT) * gain
        b_dx = tl.where((b_y >= -clamp) & (b_y <= clamp), b_dx, 0.0)  # as torch.clamp's gradient
    tl.store(dx + o_x, b_dx.to(dx.dtype.element_ty), mask=m_x)
