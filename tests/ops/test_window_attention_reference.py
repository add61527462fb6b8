"""The window-attention reference twin on cases that can be checked by hand or by an
independent brute force, and the public op's argument checks (every backend's kernel is
checked against this twin in test_window_attention.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mat_fast import ops
from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose

# ---------------------------------------------------------------------------------------
# Window attention


def brute_force_attention(q, k, v, mask, H, W, window, shift, heads):
    """Dense O(L^2) formulation written from the definition, sharing no code with the op:
    keys outside the query's (rolled) window are excluded, keys in the window but in another
    shift region get -100, keys with mask 0 get -100, mask 1 adds 0, other values add as is."""
    B, L, C = q.shape
    d = C // heads
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ri, rj = (ii - shift) % H, (jj - shift) % W  # position in the rolled grid
    win = (ri // window) * (W // window) + rj // window

    def band(r, n):
        if not shift:
            return torch.zeros_like(r)
        return (r >= n - window).long() + (r >= n - shift).long()

    region = band(ri, H) * 3 + band(rj, W)
    win, region = win.flatten(), region.flatten()
    same_window = win[:, None] == win[None, :]
    bias = torch.where(region[:, None] == region[None, :], 0.0, -100.0)
    out = torch.empty(B, L, C, dtype=torch.float64)
    new_mask = None if mask is None else torch.empty(B, L, 1, dtype=torch.float64)
    for b in range(B):
        key_bias = torch.zeros(L, dtype=torch.float64)
        if mask is not None:
            m = mask[b, :, 0].double()
            key_bias = torch.where(m == 0, -100.0, torch.where(m == 1, 0.0, m))
            for t in range(L):
                new_mask[b, t, 0] = m[same_window[t]].sum().clamp(0, 1)
        for h in range(heads):
            qh, kh, vh = (x[b, :, h * d : (h + 1) * d].double() for x in (q, k, v))
            logits = qh @ kh.T * d**-0.5 + bias + key_bias[None, :]
            logits = logits.masked_fill(~same_window, float("-inf"))
            out[b, :, h * d : (h + 1) * d] = logits.softmax(-1) @ vh
    return out, new_mask


def _tokens(B, H, W, C, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H * W, C, generator=g) for _ in range(3)]


@pytest.mark.parametrize(
    "H,W,window,shift",
    [
        (8, 8, 4, 0),  # minimal, one window row
        (16, 16, 8, 4),  # shifted, square
        (8, 16, 4, 2),  # shifted, rectangular
        (16, 8, 8, 0),  # rectangular, no shift
    ],
)
@pytest.mark.parametrize("mask_kind", ["none", "binary", "nonbinary", "zeros"])
def test_window_attention_matches_brute_force(H, W, window, shift, mask_kind):
    B, C, heads = 2, 12, 3
    q, k, v = _tokens(B, H, W, C, seed=H * 100 + W + shift)
    g = torch.Generator().manual_seed(7)
    mask = {
        "none": None,
        "binary": (torch.rand(B, H * W, 1, generator=g) > 0.6).float(),
        "nonbinary": torch.randint(0, 5, (B, H * W, 1), generator=g).float() / 4,
        "zeros": torch.zeros(B, H * W, 1),
    }[mask_kind]
    out, new_mask = window_attention_reference(q, k, v, mask, (H, W), window, shift, heads)
    ref_out, ref_mask = brute_force_attention(q, k, v, mask, H, W, window, shift, heads)
    assert_close_verbose(out, ref_out, rtol=1e-5, what="output")
    if mask is None:
        assert new_mask is None
    else:
        assert torch.equal(new_mask.double(), ref_mask)


def test_fully_invalid_window_is_finite_and_mask_has_no_effect():
    # Every key of the window gets the same -100, which cancels in the softmax: the window
    # attends as if unmasked (finite, no NaN), and stays invalid.
    q, k, v = _tokens(1, 8, 8, 6, seed=1)
    zeros = torch.zeros(1, 64, 1)
    out_masked, new_mask = window_attention_reference(q, k, v, zeros, (8, 8), 8, 0, 2)
    out_free, _ = window_attention_reference(q, k, v, None, (8, 8), 8, 0, 2)
    assert torch.isfinite(out_masked).all()
    assert_close_verbose(out_masked, out_free, rtol=1e-5, what="invalid window")
    assert torch.equal(new_mask, zeros)


def test_zero_queries_give_uniform_attention_over_the_window():
    q, k, v = _tokens(1, 8, 8, 6, seed=2)
    q = torch.zeros_like(q)
    out, _ = window_attention_reference(q, k, v, torch.zeros(1, 64, 1), (8, 8), 4, 0, 2)
    grid = v.view(8, 8, 6)
    for wi in range(2):
        for wj in range(2):
            mean = grid[wi * 4 : (wi + 1) * 4, wj * 4 : (wj + 1) * 4].reshape(-1, 6).mean(0)
            window_out = out.view(8, 8, 6)[wi * 4 : (wi + 1) * 4, wj * 4 : (wj + 1) * 4]
            assert torch.allclose(window_out, mean.expand_as(window_out), atol=1e-5)


def test_one_valid_key_takes_all_attention_and_validates_the_window():
    q, k, v = _tokens(1, 4, 4, 4, seed=3)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # logits bounded, as in MAT
    mask = torch.zeros(1, 16, 1)
    mask[0, 5] = 1
    out, new_mask = window_attention_reference(q, k, v, mask, (4, 4), 4, 0, 1)
    assert torch.allclose(out[0], v[0, 5].expand(16, 4), atol=1e-30 + 1e-6)
    assert torch.equal(new_mask, torch.ones_like(new_mask))


def test_nonbinary_mask_values_are_added_to_the_logits():
    # upstream's masked_fill replaces exact 0 and 1 only: 0.5 adds +0.5 to that key's logit
    v = torch.eye(4).unsqueeze(0)  # value of key j = e_j, so out row = attention weights
    q = torch.zeros(1, 4, 4)
    mask = torch.tensor([1.0, 0.5, 0.0, 0.25]).view(1, 4, 1)
    out, new_mask = window_attention_reference(q, q, v, mask, (2, 2), 2, 0, 1)
    expected = torch.tensor([0.0, 0.5, -100.0, 0.25]).softmax(0)
    assert torch.allclose(out[0], expected.expand(4, 4), atol=1e-6)
    assert torch.allclose(new_mask, torch.ones(1, 4, 1))  # 1.75 clamps to 1

    soft = torch.tensor([0.25, 0.25, 0.0, 0.0]).view(1, 4, 1)
    _, soft_mask = window_attention_reference(q, q, v, soft, (2, 2), 2, 0, 1)
    assert torch.allclose(soft_mask, torch.full((1, 4, 1), 0.5))  # soft count, not rounded


def test_batch_elements_are_independent():
    q, k, v = _tokens(3, 8, 8, 6, seed=4)
    mask = (torch.rand(3, 64, 1, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    out, new_mask = window_attention_reference(q, k, v, mask, (8, 8), 4, 2, 2)
    for b in range(3):
        o, m = window_attention_reference(
            q[b : b + 1], k[b : b + 1], v[b : b + 1], mask[b : b + 1], (8, 8), 4, 2, 2
        )
        assert torch.allclose(out[b : b + 1], o, atol=1e-6) and torch.equal(new_mask[b : b + 1], m)


@pytest.mark.parametrize(
    "bad",
    [
        dict(x_size=(8, 6)),  # grid not a multiple of the window
        dict(shift_size=4),  # shift must be < window
        dict(num_heads=5),  # channels do not split into heads
        dict(mask=torch.ones(1, 63, 1)),  # mask shape
    ],
)
def test_window_attention_rejects_bad_arguments(bad):
    q = torch.zeros(1, 64, 6)
    kwargs = dict(mask=None, x_size=(8, 8), window_size=4, shift_size=0, num_heads=2)
    kwargs.update(bad)
    with pytest.raises(ValueError):
        ops.window_attention.window_attention(q, q, q, **kwargs)


# ---------------------------------------------------------------------------------------
# Partial convolution mask update


# ---------------------------------------------------------------------------------------
# Bias + activation


# ---------------------------------------------------------------------------------------
# FIR resampling
