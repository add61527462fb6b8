"""torchrun with 2 gloo processes trains the same weights as 1 process with the same
global batch (tiny networks, CPU, fp32).

Upstream's arithmetic, kept: gradients are summed over a process's rounds and averaged over
processes by DDP, so 1 process with 2 rounds of 2 has twice the gradients of 2 processes with
1 round each. Adam is invariant to that scale except where a gradient is as small as its
epsilon, so the 1-process reference here runs with its gains halved: then the weights agree
to fp32 rounding. --gamma and --ema are given: cfg auto derives both from its reference
batch, which grows with the number of processes (upstream's heuristic).
w_avg (a buffer each rank updates from its own samples, as upstream) is left out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mat_fast.training import loop
from mat_fast.training.config import TrainOptions
from mat_fast.training.snapshots import read_snapshot

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(arch="tiny", resolution=16, batch=4, batch_gpu=2, kimg=0.016, tick=1.0, snap=100,
            workers=0, grid=0, seed=3, gamma=1.0, ema=10.0)  # fmt: skip


def test_two_gloo_processes_equal_one(tmp_path, monkeypatch):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(data / f"{i}.png")
    accumulate = loop.TwoStageLoss.accumulate_gradients

    def halved(self, phase, real_img, mask, real_c, gen_z, gen_c, sync, gain):
        accumulate(self, phase, real_img, mask, real_c, gen_z, gen_c, sync, gain / 2)

    monkeypatch.setattr(loop.TwoStageLoss, "accumulate_gradients", halved)
    one = loop.run_training(
        TrainOptions(data=str(data), outdir=str(tmp_path / "one"), vgg=None, progress=False, **ARGS)
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mat_fast", "train", "--data", str(data), "--outdir", str(tmp_path / "two"),
           "--vgg", "random", "--no-progress", "--device", "cpu"]  # fmt: skip
    for key, value in ARGS.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = read_snapshot(one), read_snapshot(tmp_path / "two")
    assert b["state"]["world_size"] == 2 and len(b["state"]["rng"]) == 2
    for net in ("G", "G_ema", "D"):
        for key, value in a[net].items():
            if not key.endswith("w_avg"):
                assert torch.allclose(value, b[net][key], rtol=1e-5, atol=1e-6), f"{net}.{key}"
    # the reported losses are every rank's samples (upstream averages over ranks), so
    # they match the 1-process run's: same samples, same count, same mean
    stats = [
        [json.loads(line) for line in (Path(run) / "stats.jsonl").read_text().splitlines()]
        for run in (tmp_path / "one", tmp_path / "two")
    ]
    assert len(stats[0]) == len(stats[1])
    seen = set()
    for tick_one, tick_two in zip(*stats):
        losses = [name for name in tick_one if name.startswith("Loss/")]
        assert sorted(losses) == sorted(n for n in tick_two if n.startswith("Loss/"))
        seen.update(losses)
        for name in losses:
            one_s, two_s = tick_one[name], tick_two[name]
            assert one_s["num"] == two_s["num"], name
            for key in ("mean", "std"):
                assert one_s[key] == pytest.approx(two_s[key], rel=1e-4, abs=1e-6), (name, key)
    assert {"Loss/G/loss", "Loss/D/loss", "Loss/D/reg"} <= seen, sorted(seen)
    # and the runs trained: the 2-process weights are not the initial ones
    torch.manual_seed(ARGS["seed"])
    from mat_fast.training.tiny import TinyGenerator

    G0 = TinyGenerator(img_resolution=16).state_dict()
    assert not torch.allclose(G0["synthesis.enc.weight"], b["G"]["synthesis.enc.weight"])
