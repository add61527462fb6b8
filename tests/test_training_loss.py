"""mat_fast.training.TwoStageLoss against upstream's loss, and its behaviour.

``tests/golden/loss/*.pt`` were written by ``tools/make_loss_golden.py`` from upstream's own
``TwoStageLoss`` (a seeded 256 Generator/Discriminator, batch 2, a seeded random VGG19; its
docstring has the format, and the one change to how upstream's FIR filtering is computed).
Each phase here rebuilds our networks under the recorded seeds, loads the same VGG weights
into ``loss.pcp`` (same state-dict keys), runs the phase under the recorded seed on the
``reference`` backend and compares every gradient (sums and samples), every reported loss
and the mapping's ``w_avg``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.training import PHASES, PerceptualLoss, TwoStageLoss, vgg19_layer_names

from .helpers.golden_recipes import (
    FORMAT,
    checksum,
    grad_sample,
    make_overrides,
    make_vgg_weights,
    regen,
)

GOLDEN = Path(__file__).parent / "golden" / "loss" / "two_stage_loss_256_b2.pt"
# Gradients at the end of G -> D -> loss differ from upstream's by fp32 rounding (our ops
# round differently, ~1e-6 in the forward): the module's sampled gradients together within
# 1e-3 (norm-relative), each parameter's sum of |gradient| within 1e-3, and each parameter's
# samples within 2e-2 of its largest (a noise strength's gradient is a sum over every pixel
# whose terms cancel: up to 8e-3 measured).
MODULE_RTOL = 1e-3
SUM_RTOL = 1e-3
PARAM_RTOL = 2e-2
STAT_RTOL = 1e-4


@functools.lru_cache(maxsize=1)
def golden() -> dict:
    case = torch.load(GOLDEN, weights_only=True)
    assert case["format"] == FORMAT
    return case


def _state_problems(m, ref) -> list:
    problems = []
    sd = m.state_dict()
    if set(sd) != set(ref):
        problems.append(f"keys differ: {sorted(set(sd) ^ set(ref))[:10]}")
    for key in sorted(set(sd) & set(ref)):
        shape, s, a = ref[key]
        gs, ga = checksum(sd[key])
        if list(sd[key].shape) != list(shape) or not math.isclose(ga, a, rel_tol=1e-6):
            problems.append(f"{key}: initial weights differ from upstream's")
    return problems


@functools.lru_cache(maxsize=1)
def networks():
    case = golden()
    torch.manual_seed(case["G_seed"])
    G = mat_fast.Generator(**case["G_kwargs"])
    torch.manual_seed(case["D_seed"])
    D = mat_fast.Discriminator(**case["D_kwargs"])
    for m, key in ((G, "G"), (D, "D")):
        problems = _state_problems(m, case[f"{key}_state_checksums"])
        assert not problems, "\n".join(problems[:20])
        m.load_state_dict(make_overrides(m, case[f"{key}_override_seed"]), strict=False)
    init = (
        {k: v.clone() for k, v in G.state_dict().items()},
        {k: v.clone() for k, v in D.state_dict().items()},
    )
    loss = TwoStageLoss("cpu", G.mapping, G.synthesis, D, vgg_weights=None)
    assert sorted(loss.pcp.state_dict()) == case["pcp_keys"]
    loss.pcp.load_state_dict(make_vgg_weights(loss.pcp, case["vgg_seed"]), strict=False)
    return G, D, loss, init


def _inputs(case):
    values = {k: regen(spec) for k, spec in case["regen_inputs"].items()}
    for k, t in values.items():
        got, want = checksum(t), tuple(case["input_checksums"][k])
        assert all(math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-6) for g, w in zip(got, want)), (
            f"RNG drift: regenerated {k} differs from the recorded one; regenerate the golden"
        )
    return values["real_img"], values["mask"], case["inputs"]["gen_z"].float()


def _close(ours: torch.Tensor, ref: torch.Tensor, rtol: float, floor: float = 0.0) -> bool:
    o, r = ours.double(), ref.double()
    scale = max(float(r.abs().max()) if r.numel() else 0.0, floor)
    return bool(torch.isfinite(o).all()) and float((o - r).abs().max()) <= rtol * scale


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_phase_matches_upstream(phase):
    case = golden()
    rec = case["phases"][phase]
    G, D, loss, (G_init, D_init) = networks()
    real_img, mask, gen_z = _inputs(case)
    c = torch.zeros(real_img.shape[0], 0)
    G.load_state_dict(G_init)
    D.load_state_dict(D_init)
    G.train().requires_grad_(False)
    D.train().requires_grad_(False)
    module = G if rec["module"] == "G" else D
    module.requires_grad_(True)
    try:
        with backend.use_backend("reference"):
            torch.manual_seed(rec["seed"])
            loss.accumulate_gradients(phase, real_img, mask, c, gen_z, c, True, rec["gain"])
        grads = {n: p.grad for n, p in module.named_parameters()}
    finally:
        module.requires_grad_(False)
        for p in module.parameters():
            p.grad = None

    summary = {
        n: None if g is None else (grad_sample(g), checksum(g), g.numel()) for n, g in grads.items()
    }
    problems = phase_problems(rec, loss.stats, summary, G.mapping.w_avg)
    assert not problems, f"{phase}: differs from upstream's loss:\n" + "\n".join(problems[:20])


def _stat_rtol(name: str) -> float:
    """R1's values (``Loss/r1_penalty*``, ``Loss/D/reg*``) are squared norms of an input
    gradient, so they get the gradients' tolerance: their rounding follows the backward's,
    which changes with torch's thread count (2.5e-4 measured on one thread vs two)."""
    return MODULE_RTOL if "r1_penalty" in name or "/reg" in name else STAT_RTOL


def phase_problems(rec: dict, stats: dict, grads: dict, w_avg: torch.Tensor) -> list:
    """What differs between a phase's recorded results and ours: reported values, which
    parameters got a gradient, the gradients (``grads[name] = (sample, (sum, sum|.|),
    numel)`` or None) and ``w_avg``."""
    if set(stats) != set(rec["stats"]):
        return [f"reported {sorted(stats)}, upstream {sorted(rec['stats'])}"]
    problems = [
        f"{name}: ours {stats[name].flatten()[:4].tolist()} vs upstream {ref.flatten()[:4].tolist()}"
        for name, ref in rec["stats"].items()
        if not _close(stats[name].reshape(ref.shape), ref, _stat_rtol(name), floor=1e-6)
    ]
    none_ours = sorted(n for n, g in grads.items() if g is None)
    none_ref = sorted(n for n, g in rec["grads"].items() if g is None)
    if none_ours != none_ref:
        return problems + [
            f"parameters without a gradient: ours {none_ours[:5]}, upstream {none_ref[:5]}"
        ]
    refs = {n: r for n, r in rec["grads"].items() if r is not None}
    if not refs:
        return problems
    # The module as a whole: every sampled gradient together, norm-relative.
    ours_all = torch.cat([grads[n][0] for n in refs]).double()
    ref_all = torch.cat([r["sample"] for r in refs.values()]).double()
    err = float((ours_all - ref_all).norm() / ref_all.norm())
    if not err <= MODULE_RTOL:
        problems.append(f"sampled gradients: norm-relative error {err:.3g} > {MODULE_RTOL}")
    # Each parameter against its own magnitude, floored at 1e-3 of the module's largest
    # gradient: some are mathematically zero (the attention's key bias: softmax ignores a
    # per-query constant) and only need to stay near zero.
    floor = 1e-3 * float(ref_all.abs().max())
    for name, ref in refs.items():
        sample, (_, abs_sum), numel = grads[name]
        ref_abs_sum = ref["sums"][1]
        if not _close(sample, ref["sample"], PARAM_RTOL, floor):
            problems.append(
                f"{name}: sampled gradient {sample[:3].tolist()} vs {ref['sample'][:3].tolist()}"
            )
        elif numel > len(sample) and abs(abs_sum - ref_abs_sum) > SUM_RTOL * max(
            ref_abs_sum, floor * numel
        ):
            problems.append(f"{name}: sum of |gradient| {abs_sum:.7g} vs {ref_abs_sum:.7g}")
    if not _close(w_avg, rec["w_avg"], STAT_RTOL):
        problems.append("w_avg after the phase differs")
    return problems


# ----------------------------------------------------------------------------------------
# Behaviour (fast).


class _Never:
    """A network stand-in that fails the test if the loss calls it."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("the network was called")


def _loss(**kwargs):
    return TwoStageLoss("cpu", _Never(), _Never(), _Never(), vgg_weights=None, **kwargs)


def test_pcp_keys_match_upstream():
    keys = sorted(PerceptualLoss().state_dict())
    assert keys == golden()["pcp_keys"]
    names = vgg19_layer_names()
    # torchvision's vgg19().features has 37 entries; conv5_4 is its entry 34.
    assert len(names) == 37 and names.index("conv5_4") == 34 and names.index("conv4_4") == 25


def test_perceptual_loss_is_weighted_l1_of_vgg_features():
    torch.manual_seed(0)
    pcp = PerceptualLoss()
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    gt = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    # An independent forward: the named layers applied by hand.
    mean, std = pcp.vgg.mean, pcp.vgg.std

    def features(img):
        h, out = ((img + 1) / 2 - mean) / std, {}
        for name, layer in pcp.vgg.vgg_net.named_children():
            h = layer(h)
            out[name] = h
        return out

    fx, fg = features(x), features(gt)
    want = sum(
        (fx[n] - fg[n]).abs().mean() * w for n, w in {"conv4_4": 0.25, "conv5_4": 0.5}.items()
    )
    got = pcp(x, gt)
    assert torch.allclose(got, want, rtol=1e-5)
    got.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert gt.grad is None  # no gradient into the target
    assert pcp(x, x.detach()).item() == 0.0
    assert not any(p.requires_grad for p in pcp.parameters())


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'Gpl'.*Gmain"):
        _loss().accumulate_gradients("Gpl", None, None, None, None, None, True, 1)


def test_greg_does_nothing():
    """MAT disables the path-length penalty: Greg runs nothing and draws no random number."""
    loss = _loss()
    state = torch.get_rng_state()
    loss.accumulate_gradients("Greg", None, None, None, None, None, True, 4)
    assert torch.equal(torch.get_rng_state(), state) and loss.stats == {}


def test_r1_runs_on_the_current_backend(monkeypatch, default_backend):
    """Every op has a second derivative on every backend: no switch to 'reference'."""
    loss = _loss()
    monkeypatch.setattr(backend, "resolve", lambda device=None, explicit=None: "cpu")
    assert loss.r1_backend_name() == "cpu"


def test_explicit_r1_backend_is_checked_at_construction(default_backend):
    assert _loss(r1_backend="reference").r1_backend_name() == "reference"
    with pytest.raises(ValueError, match="unknown mat_fast backend"):
        _loss(r1_backend="fast")


def test_explicit_r1_backend_runs_the_r1_pass_only(default_backend):
    D = _ToyD()
    loss = TwoStageLoss("cpu", _Never(), _Never(), D, vgg_weights=None, r1_backend="reference")
    real = torch.randn(2, 3, 4, 4)
    loss.accumulate_gradients("Dreg", real, torch.ones(2, 1, 4, 4), None, None, None, True, 1)
    assert D.backends == ["reference"]


class _ToyD(torch.nn.Module):
    """logits = w * sum(x^2), logits_stg1 = w * sum(x): R1 has a closed form; records the
    backend each forward runs under."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.backends = []

    def forward(self, img, mask, img_stg1, c):
        self.backends.append(backend.get_backend())
        return (self.w * img.square()).sum([1, 2, 3])[:, None], self.w * img_stg1.sum([1, 2, 3])[
            :, None
        ]


def test_dreg_is_r1_on_both_heads(monkeypatch, default_backend):
    D = _ToyD()
    loss = TwoStageLoss("cpu", _Never(), _Never(), D, r1_gamma=10, vgg_weights=None)
    monkeypatch.setattr(backend, "resolve", lambda device=None, explicit=None: "cpu")
    real = torch.randn(2, 3, 4, 4)
    loss.accumulate_gradients("Dreg", real, torch.ones(2, 1, 4, 4), None, None, None, True, 3)
    assert D.backends == ["auto"]  # the current backend: no switch for R1
    n = real[0].numel()
    # d logits/dx = 2 w x -> penalty 4 w^2 sum(x^2); stage 1: d/dx = w -> penalty w^2 n.
    assert torch.allclose(loss.stats["Loss/r1_penalty"], 4 * real.square().sum([1, 2, 3]))
    assert torch.allclose(loss.stats["Loss/r1_penalty_s1"], torch.full((2,), float(n)))
    assert torch.allclose(loss.stats["Loss/D/reg"], 5 * loss.stats["Loss/r1_penalty"])
    # d/dw of gain * (mean(5 * 4 w^2 sum(x^2)) + mean(5 * w^2 n)) at w = 1
    want = 3 * (40 * real.square().sum([1, 2, 3]).mean() + 10 * n)
    assert torch.allclose(D.w.grad, want)
