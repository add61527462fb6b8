"""The fp32 ('ieee') attention tiles a GPU runs, checked in Triton's interpreter.

On a GPU the fp32 backward runs 16-token tiles at 8 warps (the 64-token tiles spilled on
sm_90, see test_sm90_resources.py); the interpreter itself keeps whole-window tiles, which
cost it 16x fewer loop steps. Here the launcher is made to pick the GPU tiles, so the
multi-tile backward (dk/dv over 4 query tiles, then the separate dq kernel) that a GPU runs
at window 8 is checked against the reference on CPU too.
"""

from __future__ import annotations

import functools

import pytest
import torch

from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.asserts import assert_close_verbose
from ..helpers.triton_interpreter import DEVICE, INTERPRET, import_kernels, kernel_test_env

wat = import_kernels("mat_fast.ops.window_attention.triton")

_triton_env = kernel_test_env(wat)


@pytest.fixture
def gpu_tiles(monkeypatch):
    gpu_config = functools.partial(wat._config, interpreted=False)
    monkeypatch.setattr(wat, "_config", gpu_config)
    tiles = gpu_config(8, 6, "ieee", torch.float32, backward=True)
    assert tiles["BLOCK_N"] < 64, "the GPU's fp32 backward no longer splits a window"
    return tiles


@pytest.mark.skipif(not INTERPRET, reason="on a GPU every test already runs these tiles")
@pytest.mark.parametrize("shift", [0, 4])
def test_fp32_gpu_tiles_match_reference(gpu_tiles, shift):
    B, H, W, C, heads, window = 1, 16, 16, 12, 2, 8
    gen = torch.Generator().manual_seed(41 + shift)
    q, k, v = (torch.randn(B, H * W, C, generator=gen) for _ in range(3))
    mask = (torch.rand(B, H * W, 1, generator=gen) > 0.5).float()
    grad = torch.randn(B, H * W, C, generator=gen)
    geo = ((H, W), window, shift, heads)

    def run(fn, device):
        leaves = [t.to(device).requires_grad_(True) for t in (q, k, v)]
        out, new_mask = fn(*leaves, mask.to(device), *geo)
        grads = torch.autograd.grad(out, leaves, grad.to(device))
        return out.detach().cpu(), new_mask.cpu(), [g.cpu() for g in grads]

    out, new_mask, grads = run(wat.window_attention_triton, DEVICE)
    r_out, r_mask, r_grads = run(window_attention_reference, "cpu")
    assert torch.equal(new_mask, r_mask)
    assert_close_verbose(out, r_out, rtol=1e-5, what="out")
    for name, g, rg in zip("qkv", grads, r_grads):
        assert_close_verbose(g, rg, rtol=2e-5, what=f"d{name}")
