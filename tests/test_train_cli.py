"""mat-fast train from the command line: a smoke run on the shared test images, fine-tuning
from an upstream-style network pickle (read without running its code), clear errors."""

from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from mat_fast.cli import main
from mat_fast.training.snapshots import read_snapshot
from mat_fast.training.tiny import TinyDiscriminator, TinyGenerator

TINY = ["--arch", "tiny", "--vgg", "random", "--no-progress", "--workers", "0"]


def test_smoke_run_on_the_shared_test_images(test_sets, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(test_sets), "--outdir", str(out), "--resolution", "32",
            "--batch", "2", "--kimg", "0.006", "--tick", "0.004", "--snap", "1", "--grid", "2",
            "--mirror", "--workers", "2"]  # fmt: skip
    assert main(args + TINY[:-2]) == 0
    assert "wrote" in capsys.readouterr().out
    snap = read_snapshot(out)
    assert snap["state"]["nimg"] == 6 and snap["options"]["mirror"] is True
    assert (out / "fakes-000000006.png").is_file() and (out / "stats.jsonl").is_file()
    assert all(torch.isfinite(v).all() for v in snap["G_ema"].values())


@pytest.mark.slow  # one MAT step at 256 (every phase, R1 included): ~1-3 min on a 2-core CPU
def test_mat_smoke_run_at_256_on_the_shared_test_images(test_sets, tmp_path):
    import json

    import mat_fast

    out = tmp_path / "run"
    args = ["train", "--data", str(test_sets / "Places" / "images"), "--outdir", str(out),
            "--resolution", "256", "--batch", "2", "--kimg", "0.002", "--tick", "0.002",
            "--snap", "1", "--grid", "2", "--vgg", "random", "--no-progress", "--workers", "0"]  # fmt: skip
    assert main(args) == 0
    snap = read_snapshot(out)
    assert snap["state"]["nimg"] == 2 and snap["state"]["step"] == 1
    ticks = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    reported = {k: v for tick in ticks for k, v in tick.items()}
    for name in ("Loss/G/loss", "Loss/G/loss_s1", "Loss/G/pcp_loss", "Loss/D/loss", "Loss/D/reg"):
        assert torch.isfinite(torch.tensor(reported[name]["mean"])), name  # R1 ran in step 0
    assert (out / "fakes-000000002.png").is_file()
    # the G_ema it wrote is a MAT 256 generator that the inference side loads as it is
    inpainter = mat_fast.Inpainter.from_checkpoint(
        f"{snap['path']}/G_ema.safetensors", device="cpu"
    )
    sd = inpainter.generator.state_dict()
    assert sd.keys() == snap["G_ema"].keys()
    assert all(torch.equal(sd[k], v) for k, v in snap["G_ema"].items())


def test_user_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["train", "--data", str(tmp_path / "empty"), "--outdir", str(tmp_path / "o")]
    assert main(args + TINY) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(args + TINY + ["--cfg", "places256", "--resolution", "512"]) == 2
    assert "trains at 256" in capsys.readouterr().err


class _Persistent:
    """Pickles like upstream's persistent classes (a reconstruct call carrying source)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


def _as_upstream(module, src):
    params = [(n, p) for n, p in module._parameters.items() if p is not None]
    state = dict(
        _parameters=OrderedDict((n, torch.nn.Parameter(p.detach())) for n, p in params),
        _buffers=OrderedDict(module._buffers), _non_persistent_buffers_set=set(),
        _modules=OrderedDict((n, _as_upstream(c, src)) for n, c in module._modules.items()),
    )  # fmt: skip
    return _Persistent(dict(type="class", version=6, module_src=src, class_name="X", state=state))


def test_finetune_from_an_upstream_pickle(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(data / f"{i}.png")
    torch.manual_seed(11)
    G, D, G_ema = TinyGenerator(), TinyDiscriminator(), TinyGenerator()
    marker = tmp_path / "executed"
    src = f"open({str(marker)!r}, 'w')\n"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # upstream exec()s meta['module_src'] here
        raise AssertionError("the loader must not call upstream's code")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    nets = {"G": G, "D": D, "G_ema": G_ema}
    with open(tmp_path / "net.pkl", "wb") as f:
        pickle.dump({k: _as_upstream(m, src) for k, m in nets.items()}, f)
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")

    # --kimg so short that the weights barely move: compare G_ema before the first update
    from mat_fast.training import loop
    from mat_fast.training.config import TrainOptions

    o = TrainOptions(data=str(data), outdir=str(tmp_path / "ft"), arch="tiny", resolution=16,
                     batch=2, kimg=0.002, vgg=None, workers=0, grid=0, progress=False,
                     finetune=str(tmp_path / "net.pkl"))  # fmt: skip
    trainer = loop.Trainer(o)
    for name, module in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema)):
        for key, value in nets[name].state_dict().items():
            assert torch.equal(module.state_dict()[key], value), f"{name}.{key}"
    assert trainer.spec.ema_rampup is None  # as upstream's resume: no EMA ramp-up
    assert not marker.exists()
    o.resolution = 32
    with pytest.raises(Exception, match="does not fit"):
        loop.Trainer(o)


def test_a_bad_image_found_by_a_worker_is_one_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(9):  # the first 8 are checked up front; the 9th only when a worker loads it
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / f"{i}.png")
    (data / "8.png").write_bytes(b"\x89PNG broken")
    args = ["train", "--data", str(data), "--outdir", str(tmp_path / "o"), "--resolution", "16",
            "--batch", "2", "--kimg", "0.02", "--grid", "0", "--arch", "tiny", "--vgg", "random",
            "--no-progress", "--workers", "1"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8.png: cannot read the image" in err, err
