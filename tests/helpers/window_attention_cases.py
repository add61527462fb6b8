"""Shared cases of the window-attention tests: masks of every kind, inputs, a forward with
gradients, and the Triton kernel module imported for the interpreter without a GPU (with
the fixture that turns the interpreter on while the importing module's tests run)."""

from __future__ import annotations

import torch

from .triton_interpreter import import_kernels, kernel_test_env

wat = import_kernels("mat_fast.ops.window_attention.triton")
triton_env = kernel_test_env(wat)  # autouse in the modules that import it

#: What the mask kinds exercise: 'invalid' and 'invalid_rows' give fully invalid windows,
#: 'nonbinary' (dyadic values, negatives too) and 'soft' (uniform, exact 0s and 1s mixed in)
#: values that upstream adds to the logits as they are.
MASK_KINDS = ["none", "binary", "invalid", "invalid_rows", "nonbinary", "soft"]


def make_mask(kind, B, H, W, window, shift, gen):
    """(B, H*W, 1) fp32 mask of one kind, or None."""
    L = H * W
    if kind == "none":
        return None
    if kind == "binary":
        return (torch.rand(B, L, 1, generator=gen) > 0.5).float()
    if kind == "invalid":  # every other (shifted) window of image 0 invalid, all of image 1
        m = (torch.rand(B, L, 1, generator=gen) > 0.5).float()
        rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        win = ((rows - shift) % H // window) * (W // window) + (cols - shift) % W // window
        m[0, (win.flatten() % 2 == 0)] = 0
        m[1:] = 0
        return m
    if kind == "invalid_rows":  # rows [0, H - H//4) all holes: whole windows, any shift
        m = (torch.rand(B, L, 1, generator=gen) > 0.5).float()
        m.view(B, H, W)[:, : H - H // 4] = 0
        return m
    if kind == "nonbinary":
        values = torch.tensor([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])
        return values[torch.randint(0, len(values), (B, L, 1), generator=gen)]
    if kind == "soft":
        m = torch.rand(B, L, 1, generator=gen)
        m[m < 0.2] = 0
        m[m > 0.8] = 1
        return m
    raise ValueError(kind)


def make_inputs(B, H, W, C, mask_kind, seed, dtype=torch.float32, window=8, shift=0, device="cpu"):
    """q, k, v (B, H*W, C) and the mask, in ``dtype`` on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H * W, C, generator=gen) for _ in range(3))
    mask = make_mask(mask_kind, B, H, W, window, shift, gen)
    to = dict(device=device, dtype=dtype)
    return (q.to(**to), k.to(**to), v.to(**to), None if mask is None else mask.to(**to))


def run(fn, q, k, v, mask, geo, grad_seed=1, **kwargs):
    """Forward and gradients of sum(out * g) w.r.t. q, k, v; returns (out, new_mask, grads)."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, new_mask = fn(q, k, v, mask, *geo, **kwargs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    return out.detach(), new_mask, grads


def up(t):
    return None if t is None else t.float()
