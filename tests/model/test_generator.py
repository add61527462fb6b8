"""Generator/Discriminator: upstream's module tree, seeded init, API and input checks."""

from __future__ import annotations

import pytest
import torch

import mat_fast
from mat_fast.model.transformer import SwinTransformerBlock

from ..helpers.asserts import assert_close_verbose, assert_finite


def _shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize(
    "name,build",
    [
        ("generator_512", lambda: mat_fast.Generator(512, 0, 512, 512, 3)),
        ("generator_256", lambda: mat_fast.Generator(512, 0, 512, 256, 3)),
        ("discriminator_512", lambda: mat_fast.Discriminator(0, 512, 3)),
    ],
)
def test_state_dict_keys_and_shapes_equal_upstream_manifest(manifest, name, build):
    module = build()
    expected = manifest[name]["state_dict"]
    got = _shapes(module)
    assert set(got) - set(expected) == set(), "unexpected keys"
    assert set(expected) - set(got) == set(), "missing keys"
    assert got == expected
    assert sum(p.numel() for p in module.parameters()) == manifest[name]["parameters"]


def test_no_noise_layout_drops_exactly_the_noise_entries(manifest):
    G = mat_fast.Generator(512, 0, 512, 512, 3, synthesis_kwargs=dict(use_noise=False))
    keys = set(G.state_dict())
    full = set(manifest["generator_512"]["state_dict"])
    assert len(keys) == 465
    assert full - keys == {k for k in full if k.endswith(("noise_const", "noise_strength"))}
    assert G.use_noise is False


def test_same_seed_same_initial_weights_and_strict_reload():
    torch.manual_seed(11)
    a = mat_fast.Generator(512, 0, 512, 128, 3)
    torch.manual_seed(11)
    b = mat_fast.Generator(512, 0, 512, 128, 3)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(12)
    c = mat_fast.Generator(512, 0, 512, 128, 3)
    assert not torch.equal(c.state_dict()["mapping.fc0.weight"], sa["mapping.fc0.weight"])
    c.load_state_dict(sa, strict=True)
    assert torch.equal(c.state_dict()["mapping.fc0.weight"], sa["mapping.fc0.weight"])


def test_shift_mask_buffer_matches_upstream_definition():
    block = SwinTransformerBlock(180, (16, 16), 6, window_size=8, shift_size=4)
    mask = block.attn_mask  # (nW, N, N) with 0 inside a region, -100 across
    assert mask.shape == (4, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert torch.all(mask[0] == 0)  # the top-left window holds one region only
    assert torch.equal(mask, mask.transpose(1, 2))


def _inputs(B=1, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, 3, size, size, generator=g) * 2 - 1
    masks = torch.ones(B, 1, size, size)
    masks[..., size // 4 : 3 * size // 4, size // 8 : size // 2] = 0
    return images, masks, torch.randn(B, 512, generator=g)


def test_known_pixels_pass_through_and_seed_reproduces(generator_128):
    images, masks, z = _inputs()
    with torch.no_grad():
        torch.manual_seed(5)
        out, stg1 = generator_128(images, masks, z, None, noise_mode="random", return_stg1=True)
        torch.manual_seed(5)
        again = generator_128(images, masks, z, None, noise_mode="random")
        torch.manual_seed(6)
        other = generator_128(images, masks, z, None, noise_mode="random")
    known = masks.expand_as(images) == 1
    assert torch.equal(out[known], images[known])
    assert stg1.shape == out.shape
    assert torch.equal(out, again)
    # upstream's dropout runs even in eval mode, so another seed gives another fill
    assert not torch.equal(out, other)


def test_noise_modes(generator_128):
    images, masks, z = _inputs()
    with torch.no_grad():
        outs = {}
        for mode in ("const", "none"):
            torch.manual_seed(1)
            outs[mode] = generator_128(images, masks, z, None, noise_mode=mode)
    assert torch.isfinite(outs["const"]).all() and torch.isfinite(outs["none"]).all()
    big = torch.zeros(1, 3, 256, 256), torch.ones(1, 1, 256, 256), z
    with pytest.raises(ValueError, match="noise_mode='const' needs the training resolution"):
        with torch.no_grad():
            generator_128(*big, None, noise_mode="const")


def test_truncation_moves_towards_w_avg(generator_128):
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    mapping = generator_128.mapping
    w = mapping(z, None)
    w_half = mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(w_half, mapping.w_avg.lerp(w, 0.5))
    w_cut = mapping(z, None, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(w_cut[:, :2], mapping.w_avg.expand(2, 2, 512))
    assert torch.equal(w_cut[:, 2:], w[:, 2:])


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda i, m, z: (i[..., :100, :], m[..., :100, :], z), ValueError, "multiples of 128"),
        (lambda i, m, z: (i, m[:, :, :64], z), ValueError, "masks_in must be"),
        (lambda i, m, z: (i[:, :2], m, z), ValueError, "images_in must be"),
        (lambda i, m, z: (i.double(), m.double(), z), TypeError, "float64 but the Generator"),
        (lambda i, m, z: ((i * 100).long(), m, z), TypeError, "floating-point"),
        (lambda i, m, z: (i, m, z[:, :10]), ValueError, "z must be"),
    ],
)
def test_generator_rejects_bad_inputs(generator_128, change, error, match):
    images, masks, z = change(*_inputs())
    with pytest.raises(error, match=match):
        generator_128(images, masks, z, None)


def test_generator_rejects_unknown_noise_mode(generator_128):
    with pytest.raises(ValueError, match="noise_mode"):
        generator_128(*_inputs(), None, noise_mode="loud")


def test_gradients_flow_through_the_generator():
    torch.manual_seed(0)
    G = mat_fast.Generator(512, 0, 512, 128, 3).train()
    images, masks, z = _inputs(size=128)
    torch.manual_seed(1)
    out = G(images, masks, z, None)
    out.square().mean().backward()
    attn_q = G.synthesis.first_stage.tran[0].blocks[0].attn.q.weight
    assert (
        attn_q.grad is not None
        and torch.isfinite(attn_q.grad).all()
        and attn_q.grad.abs().sum() > 0
    )


def test_discriminator_scores_both_stages():
    torch.manual_seed(0)
    D = mat_fast.Discriminator(0, 128, 3)
    images, masks, _ = _inputs(B=4, size=128)
    score, score_stg1 = D(images, masks, images, None)
    assert score.shape == (4, 1) and score_stg1.shape == (4, 1)
    assert torch.isfinite(score).all() and torch.isfinite(score_stg1).all()


@pytest.mark.parametrize("transposed", [False, True])
def test_dropout_map_ignores_the_input_layout(transposed):
    from mat_fast.model.generator import _dropout_half

    x = torch.randn(1, 64, 180)
    layouts = [x, x.transpose(1, 2).contiguous().transpose(1, 2)]  # contiguous, transposed
    maps = []
    for t in layouts:
        torch.manual_seed(11)
        maps.append(_dropout_half(t, transposed=transposed))
    assert torch.equal(maps[0], maps[1])
    # ... and it is upstream's draw: ones_like of a tensor of that layout
    torch.manual_seed(11)
    upstream = torch.nn.functional.dropout(
        torch.ones_like(layouts[int(transposed)]) * 0.5, p=0.5, training=True
    )
    assert torch.equal(maps[0], upstream)


@pytest.mark.parametrize(
    "size,batch,noise_mode",
    [
        (128, 1, "const"),
        (128, 1, "random"),  # B = 1: upstream's dropout map is drawn in a transposed layout
        (128, 2, "random"),  # B > 1: contiguous; non-binary mask
        # (256: the golden parity tests run the 'cpu' backend against upstream's outputs)
        pytest.param(512, 1, "random", marks=pytest.mark.slow),
    ],
    ids=lambda v: str(v),
)
def test_generator_cpu_backend_matches_reference(native_ops, size, batch, noise_mode):
    """Same seed, 'cpu' (channels_last, fused and in-place ops) vs 'reference': the same
    dropout maps and noise, so the outputs agree to float rounding."""
    from mat_fast.inpaint import random_generator

    G = random_generator(seed=5, resolution=min(size, 512))
    g = torch.Generator().manual_seed(8)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    m = torch.ones(batch, 1, size, size)
    m[..., size // 5 : size * 3 // 4, size // 4 : size * 2 // 3] = 0
    if batch > 1:
        m[1, :, : size // 2, : size // 3] = 0.5
    z = torch.randn(batch, 512, generator=g)
    outs = {}
    for name in ("reference", "cpu"):
        with mat_fast.use_backend(name):
            torch.manual_seed(0)
            with torch.no_grad():
                outs[name] = G(x, m, z, None, noise_mode=noise_mode)
    assert_finite(outs["cpu"], "generator output")
    assert_close_verbose(outs["cpu"], outs["reference"], rtol=1e-4, what="generator")
    diff, ref = (outs["cpu"] - outs["reference"]).double(), outs["reference"].double()
    assert float(diff.norm() / ref.norm()) <= 1e-4
