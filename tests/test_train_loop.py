"""mat-fast train's loop: upstream's optimiser, schedule and EMA semantics, exact resume,
snapshots that load where they should. Tiny stand-in networks (--arch tiny) keep it fast."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

import mat_fast
from mat_fast.checkpoints import read_state_dict
from mat_fast.errors import CheckpointError
from mat_fast.training import loop
from mat_fast.training.config import ConfigError, TrainOptions, resolve_spec
from mat_fast.training.networks import ema_update
from mat_fast.training.snapshots import read_snapshot, write_snapshot
from mat_fast.training.tiny import TinyGenerator


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _options(data, outdir, **kw) -> TrainOptions:
    base = dict(
        data=str(data), outdir=str(outdir), arch="tiny", resolution=16, batch=4, batch_gpu=2,
        kimg=0.02, tick=0.008, snap=1, vgg=None, workers=0, grid=0, progress=False, seed=5,
    )  # fmt: skip
    base.update(kw)
    return TrainOptions(**base)


def _weights(snapshot_dir) -> dict:
    snap = read_snapshot(snapshot_dir)
    return {f"{n}.{k}": v for n in ("G", "G_ema", "D") for k, v in snap[n].items()}


def test_resume_ends_with_the_uninterrupted_weights(image_dir, tmp_path):
    # 10 steps of 4 images; the break after 5, then G's regularisation (every 4) at step 8.
    full = loop.run_training(_options(image_dir, tmp_path / "full", kimg=0.04, snap=100))
    part = _options(image_dir, tmp_path / "part", kimg=0.02, snap=100)
    loop.run_training(part)
    resumed = _options(image_dir, tmp_path / "part", kimg=0.04, snap=100, resume=part.outdir)
    last = loop.run_training(resumed)
    a, b = _weights(full), _weights(last)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    state = read_snapshot(last)["state"]
    assert state["step"] == 10 and state["nimg"] == 40
    # and the run did learn something: G moved away from its initial weights
    torch.manual_seed(5)
    G0 = TinyGenerator(img_resolution=16)
    assert not torch.equal(G0.state_dict()["synthesis.enc.weight"], a["G.synthesis.enc.weight"])


def test_resume_refuses_other_options(image_dir, tmp_path):
    first = _options(image_dir, tmp_path / "run", kimg=0.004)
    loop.run_training(first)
    with pytest.raises(CheckpointError, match="seed 5 vs 6"):
        loop.run_training(_options(image_dir, tmp_path / "run", seed=6, resume=first.outdir))
    with pytest.raises(CheckpointError, match="holds a training run already"):
        loop.run_training(first)  # no silent overwriting
    with pytest.raises(CheckpointError, match="neither a snapshot folder"):
        loop.run_training(_options(image_dir, tmp_path / "x", resume=str(tmp_path)))


def test_phase_schedule_gains_and_rounds(image_dir, tmp_path, monkeypatch):
    calls = []

    def record(self, phase, real_img, mask, real_c, gen_z, gen_c, sync, gain):
        calls.append((phase, sync, gain, real_img.shape[0], gen_z.shape))

    monkeypatch.setattr(loop.TwoStageLoss, "accumulate_gradients", record)
    loop.run_training(_options(image_dir, tmp_path / "r", kimg=0.068, snap=100))  # 17 steps
    by_phase = {p: [c for c in calls if c[0] == p] for p in ("Gmain", "Greg", "Dmain", "Dreg")}
    assert len(by_phase["Gmain"]) == len(by_phase["Dmain"]) == 17 * 2  # 2 rounds of 2
    assert len(by_phase["Greg"]) == 5 * 2  # steps 0, 4, 8, 12, 16
    assert len(by_phase["Dreg"]) == 2 * 2  # steps 0, 16
    assert {c[2] for c in by_phase["Greg"]} == {4} and {c[2] for c in by_phase["Dreg"]} == {16}
    assert [c[1] for c in by_phase["Gmain"][:2]] == [False, True]  # DDP syncs the last round
    assert {c[3] for c in calls} == {2} and {c[4] for c in calls} == {torch.Size([2, 16])}
    order = [c[0] for c in calls[:8]]
    assert order == ["Gmain"] * 2 + ["Greg"] * 2 + ["Dmain"] * 2 + ["Dreg"] * 2


def test_adam_lazy_regularisation_correction_and_lrt():
    G = TinyGenerator()
    g_opt = loop.make_optimizer(G, 0.002, None, 4)
    (group,) = g_opt.param_groups
    assert group["lr"] == pytest.approx(0.002 * 4 / 5)
    assert group["betas"] == (0.0, pytest.approx(0.99 ** (16 / 17 * 0 + 4 / 5)))
    assert group["eps"] == 1e-8
    d_group = loop.make_optimizer(G, 0.002, None, 16).param_groups[0]
    assert d_group["lr"] == pytest.approx(0.002 * 16 / 17)
    assert d_group["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    # lrt: parameters named like the transformer's ('tran'/'Tran') get their own rate
    G.synthesis.register_parameter("transformer_w", torch.nn.Parameter(torch.zeros(2)))
    base, tran = loop.make_optimizer(G, 0.001, 0.0005, 4).param_groups
    assert [p.shape for p in tran["params"]] == [torch.Size([2])]
    assert tran["lr"] == pytest.approx(0.0005 * 4 / 5) and base["lr"] == pytest.approx(0.0008)
    assert len(base["params"]) == len(list(G.parameters())) - 1


def test_ema_half_life_and_ramp_up():
    torch.manual_seed(0)
    G, G_ema = TinyGenerator(), TinyGenerator()
    spec = resolve_spec(TrainOptions(data="", outdir="", batch=4, ema=0.01), 1)
    assert spec.ema_rampup == 0.05  # auto
    before = {k: v.clone() for k, v in G_ema.state_dict().items()}
    ema_update(G_ema, G, spec, nimg=400)  # ramp: min(10 img, 400 * 0.05 = 20 img) -> 10 img
    beta = 0.5 ** (4 / 10)
    for (name, p_ema), p in zip(G_ema.named_parameters(), G.parameters()):
        expected = p + (before[name] - p) * beta
        assert torch.allclose(p_ema, expected, rtol=1e-5, atol=1e-5), name
    ema_update(G_ema, G, spec, nimg=0)  # ramp-up at the start: G_ema = G
    assert all(torch.equal(a, b) for a, b in zip(G_ema.parameters(), G.parameters()))
    assert torch.equal(G_ema.mapping.w_avg, G.mapping.w_avg)  # buffers copied


def test_configs_follow_upstream():
    s = resolve_spec(TrainOptions(data="", outdir="", cfg="places512"), 1)
    assert (s.resolution, s.batch, s.batch_gpu, s.mbstd, s.lr, s.gamma) == (
        512,
        64,
        8,
        8,
        0.002,
        10,
    )
    assert (s.ema_kimg, s.ema_rampup, s.mapping_layers, s.total_kimg) == (10, None, 8, 50000)
    s = resolve_spec(TrainOptions(data="", outdir="", cfg="auto", resolution=256), 2)
    assert (s.batch, s.batch_gpu, s.mbstd, s.lr) == (32, 16, 4, 0.0025)
    assert s.gamma == pytest.approx(0.0002 * 256**2 / 32) and s.ema_kimg == 10
    s = resolve_spec(TrainOptions(data="", outdir="", cfg="celeba512", batch=16, lrt=1e-4), 4)
    assert (s.batch, s.batch_gpu, s.lrt, s.total_kimg) == (16, 4, 1e-4, 25000)
    with pytest.raises(ConfigError, match="divisible by 3"):
        resolve_spec(TrainOptions(data="", outdir="", batch=16), 3)
    with pytest.raises(ConfigError, match="trains at 256"):
        resolve_spec(TrainOptions(data="", outdir="", cfg="places256", resolution=512), 1)


def test_stats_grid_and_snapshot_files(image_dir, tmp_path):
    o = _options(image_dir, tmp_path / "run", kimg=0.012, grid=3)
    last = loop.run_training(o)
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 2  # tick 0 (first step) and the end
    for name in ("Loss/G/loss", "Loss/G/pcp_loss", "Loss/D/loss", "Loss/r1_penalty",
                 "Loss/D/reg_s1", "Loss/scores/real", "Loss/signs/fake_s1", "Timing/Gmain",
                 "Progress/kimg", "Timing/sec_per_kimg", "Resources/peak_cpu_mem_gb"):  # fmt: skip
        assert math.isfinite(lines[0][name]["mean"]), name
    assert lines[-1]["Progress/kimg"]["mean"] == pytest.approx(0.012)
    for png in ("reals.png", "masks.png", "fakes_init.png", "fakes-000000012.png"):
        assert Image.open(tmp_path / "run" / png).size == (16 * 3, 16)
    assert (tmp_path / "run" / "latest").read_text().strip() == "snapshot-000000012"
    assert not list((tmp_path / "run").glob(".*tmp"))  # nothing half-written left
    assert set(read_state_dict(f"{last}/D.safetensors")) == set(
        mat_fast.training.tiny.TinyDiscriminator().state_dict()
    )


def test_mat_generator_snapshot_loads_in_inpainter(tmp_path):
    torch.manual_seed(0)
    G = mat_fast.Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=128, img_channels=3)
    D = mat_fast.training.tiny.TinyDiscriminator()
    path = write_snapshot(str(tmp_path), 64, dict(G=G, G_ema=G, D=D), {"step": 1}, {})
    # Inpainter.from_checkpoint goes through load_generator (constructor inferred, strict)
    inpainter = mat_fast.Inpainter.from_checkpoint(f"{path}/G_ema.safetensors", device="cpu")
    sd = G.state_dict()
    assert all(torch.equal(v.cpu(), sd[k]) for k, v in inpainter.generator.state_dict().items())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision(image_dir, tmp_path, precision):
    o = _options(image_dir, tmp_path / precision, kimg=0.008, precision=precision)
    snap = read_snapshot(loop.run_training(o))
    weights = _weights(snap["path"])
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert weights["G.mapping.w_avg"].dtype == torch.float32  # the style path stays fp32
    scaler = snap["state"]["scaler"]
    assert (scaler is not None and scaler["scale"] > 0) if precision == "fp16" else scaler is None
    lines = (tmp_path / precision / "stats.jsonl").read_text().splitlines()
    assert math.isfinite(json.loads(lines[-1])["Loss/G/loss"]["mean"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("native_half", [False, True], ids=["no-half-kernels", "half-kernels"])
def test_half_precision_warns_on_a_cpu_without_half_kernels(
    image_dir, tmp_path, monkeypatch, caplog, precision, native_half
):
    # what the oneDNN probe answers decides; the box running the test does not
    monkeypatch.setattr(loop, "half_convolutions_in_fp32", lambda dtype: not native_half)
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        loop.Trainer(_options(image_dir, tmp_path, precision=precision))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if precision == "fp32" or native_half:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert f"--precision {precision} on this CPU" in warnings[0]
        assert "--precision fp32" in warnings[0]  # says how to fix it


@pytest.mark.parametrize("cfg, res", [("places512", 512), ("places256", 256)])
def test_config_networks_have_upstreams_state_dicts(manifest, cfg, res):
    """What the places configs train is what upstream's pickles hold (so --finetune loads
    them strictly); built on the meta device, so nothing is allocated."""
    from mat_fast.training.networks import build_networks

    o = TrainOptions(data="", outdir="", cfg=cfg)
    with torch.device("meta"):
        G, D, _ = build_networks(o, resolve_spec(o, 1), torch.device("meta"))
    for net, key in ((G, f"generator_{res}"), (D, "discriminator_512")):
        if key.endswith("512") and res != 512:
            continue
        assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest[key][
            "state_dict"
        ]
