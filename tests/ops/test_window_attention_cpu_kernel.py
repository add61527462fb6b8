"""The C++ window-attention kernel's own machinery, which other backends have no
counterpart of: the tile math compiled per CPU instruction set (MAT_FAST_CPU_ISA caps the
choice), its softmax at the edges of fp32, and the scratch buffers kept between calls.
Parity with the reference over shapes, masks and dtypes is test_window_attention.py.
"""

from __future__ import annotations

import pytest
import torch

from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose
from ..helpers.window_attention_cases import make_inputs

pytestmark = pytest.mark.usefixtures("poison_outputs")


def window_inputs(B, H, W, C, dtype, mask_kind, seed=0):
    """q, k, v, mask, grad (the grad from the same seed, after the inputs)."""
    q, k, v, mask = make_inputs(B, H, W, C, mask_kind, seed, dtype)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 100)).to(dtype)
    return q, k, v, mask, grad


def run_with_grads(fn, q, k, v, mask, grad, *geometry):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, new_mask = fn(q, k, v, mask, *geometry)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out.detach(), new_mask, (dq, dk, dv)


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_cpu_instruction_set_variant(native_ops, monkeypatch, isa, dtype):
    """The tile math is compiled per instruction set; MAT_FAST_CPU_ISA caps the choice (a
    CPU without the set runs the best one it has, which is checked just the same)."""
    wa_native, _ = native_ops
    monkeypatch.setenv("MAT_FAST_CPU_ISA", isa)
    q, k, v, mask, grad = window_inputs(2, 16, 16, 180, dtype, "soft", seed=1)
    geometry = ((16, 16), 8, 4, 6)
    out, _, grads = run_with_grads(
        wa_native.window_attention_native, q, k, v, mask, grad, *geometry
    )
    ref_out, _, ref_grads = run_with_grads(
        window_attention_reference, q, k, v, mask, grad, *geometry
    )
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close_verbose(out, ref_out, rtol=rtol, what=f"out ({isa})")
    for name, g, r in zip("qkv", grads, ref_grads):
        assert_close_verbose(g, r, rtol=rtol, what=f"d{name} ({isa})")


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_softmax_underflow_and_nan_follow_the_reference(native_ops, monkeypatch, isa):
    """The fp32 kernels' exp skips clamping and drops lanes below -87.3 at the end: logits
    thousands apart must give exact zeros there (no garbage from the exponent bits), and a
    NaN key must poison exactly its window's rows, as in the reference."""
    wa_native, _ = native_ops
    monkeypatch.setenv("MAT_FAST_CPU_ISA", isa)
    g = torch.Generator().manual_seed(3)
    # Integer-valued q and k: logits are exact whatever the summation order, so the
    # comparison sees only the softmax. Spread up to thousands; v keeps outputs O(1).
    q, k = (torch.randint(-40, 41, (2, 256, 60), generator=g).float() for _ in range(2))
    v = torch.randn(2, 256, 60, generator=g)
    k[1, 17, 35] = float("nan")  # image 1, window 0 (8x8 windows on the 16x16 grid), head 1
    geometry = ((16, 16), 8, 0, 2)
    out, _ = wa_native.window_attention_native(q, k, v, None, *geometry)
    ref, _ = window_attention_reference(q, k, v, None, *geometry)
    assert torch.equal(out.isnan(), ref.isnan()), "NaN rows differ from the reference"
    nan_rows = out.isnan().any(-1)
    assert nan_rows.sum() == 64 and nan_rows[1, :8].all(), "the NaN key must reach its window only"
    finite = ~ref.isnan()
    assert_close_verbose(out[finite], ref[finite], rtol=1e-5, what=f"out ({isa})")


def test_scratch_kept_between_calls_never_leaks_state(native_ops):
    """Each thread keeps scratch buffers for 4 window shapes across calls. Cycle through 6
    geometries (evictions), with and without shift and mask, grids of different sizes sharing
    one window shape, and a backward in between: every call must match the reference."""
    wa_native, _ = native_ops
    geometries = [  # (H, W, C, heads, window, shift, mask_kind)
        (32, 16, 180, 6, 8, 0, "none"),
        (16, 16, 180, 6, 8, 4, "invalid_rows"),  # same window shape, other grid, shifted
        (16, 16, 32, 2, 16, 8, "binary"),
        (6, 9, 12, 2, 3, 0, "soft"),
        (8, 8, 60, 2, 4, 2, "binary"),
        (16, 16, 64, 4, 8, 0, "soft"),
    ]
    for round_ in range(2):
        for i, (H, W, C, heads, window, shift, mask_kind) in enumerate(geometries):
            q, k, v, mask, grad = window_inputs(
                2, H, W, C, torch.float32, mask_kind, seed=10 * round_ + i
            )
            geometry = ((H, W), window, shift, heads)
            if i == 2:  # a backward call in the middle uses (and keeps) its own scratch
                _, _, grads = run_with_grads(
                    wa_native.window_attention_native, q, k, v, mask, grad, *geometry
                )
                _, _, ref_grads = run_with_grads(
                    window_attention_reference, q, k, v, mask, grad, *geometry
                )
                for name, g_, r in zip("qkv", grads, ref_grads):
                    assert_close_verbose(
                        g_, r, rtol=1e-5, what=f"d{name}, geometry {i}, round {round_}"
                    )
            out, _ = wa_native.window_attention_native(q, k, v, mask, *geometry)
            ref, _ = window_attention_reference(q, k, v, mask, *geometry)
            assert_close_verbose(out, ref, rtol=1e-5, what=f"out, geometry {i}, round {round_}")
