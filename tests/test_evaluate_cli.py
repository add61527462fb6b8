"""mat-fast evaluate: pairing, the per-image pipeline, the report, torchrun shards, the sheet."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mat_fast.cli import main
from mat_fast.metrics import fid_from_features, l1, pids_uids_from_features, psnr, ssim
from mat_fast.metrics.evaluate import EvaluationError, pair_folders, read_rgb8

from .eval_standins import save_standin_detector, write_image_pairs

pytest.importorskip("scipy")
pytest.importorskip("sklearn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURE_AND_PIXEL = "fid,pids,uids,psnr,ssim,l1"


@pytest.fixture
def folders(tmp_path):
    fake, real = write_image_pairs(tmp_path, count=7, size=(40, 32))
    # a second image size: batches hold one size at a time
    rng = np.random.default_rng(9)
    for name in ("wide0", "wide1"):
        img = rng.integers(0, 256, (24, 56, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(real, f"{name}.png"))
        Image.fromarray(255 - img).convert("L").save(os.path.join(fake, f"{name}.jpg"))
    return fake, real, save_standin_detector(tmp_path / "detector.pt")


def _upstream_style(fake_dir, real_dir, detector_path):
    """Upstream's loop: one pair at a time, in name order, the detector on each image."""
    detector = torch.jit.load(detector_path)
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(real_dir))
    fake_rows, real_rows, pixel = [], [], {"psnr": [], "ssim": [], "l1": []}
    for name in names:
        [fake_file] = [f for f in os.listdir(fake_dir) if os.path.splitext(f)[0] == name]
        a = read_rgb8(os.path.join(fake_dir, fake_file))
        b = read_rgb8(os.path.join(real_dir, name + ".png"))
        with torch.no_grad():
            for img, rows in ((a, fake_rows), (b, real_rows)):
                tensor = torch.from_numpy(img).permute(2, 0, 1)[None]
                rows.append(detector(tensor, return_features=True).numpy())
        for metric, fn in (("psnr", psnr), ("ssim", ssim), ("l1", l1)):
            pixel[metric].append(fn(a, b))
    real, fake = np.concatenate(real_rows), np.concatenate(fake_rows)
    pids, uids = pids_uids_from_features(real, fake)
    report = {"fid": fid_from_features(real, fake), "pids": pids, "uids": uids}
    report.update({m: float(np.mean(v)) for m, v in pixel.items()})
    return report, names


def test_report_matches_upstreams_one_pair_at_a_time_loop(folders, tmp_path, capsys):
    fake, real, detector = folders
    out = tmp_path / "report.json"
    args = ["evaluate", fake, real, "--metrics", FEATURE_AND_PIXEL, "--detector", detector]
    assert main(args + ["--batch-size", "3", "--workers", "2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    expected, names = _upstream_style(fake, real, detector)
    assert report["pairs"] == 9 and list(report["per_image"]) == names
    for metric, value in expected.items():
        assert report["metrics"][metric] == pytest.approx(value, rel=1e-5, abs=1e-9), metric
        assert metric in table
    gray = read_rgb8(os.path.join(fake, "wide0.jpg"))
    assert gray.shape == (24, 56, 3) and (gray[:, :, 0] == gray[:, :, 2]).all()


def test_pairing_errors_name_the_files(tmp_path):
    fake, real = write_image_pairs(tmp_path, count=3)
    os.remove(os.path.join(real, "img1.png"))
    with pytest.raises(EvaluationError, match=r"unmatched files: 1 in .*fake only \(img1\)"):
        pair_folders(fake, real)
    Image.new("RGB", (10, 10)).save(os.path.join(real, "img1.png"))
    with pytest.raises(EvaluationError, match=r"differ in size: img1 \(64x48 vs 10x10\)"):
        pair_folders(fake, real)
    Image.new("RGB", (64, 48)).save(os.path.join(real, "img1.jpg"))
    with pytest.raises(EvaluationError, match="share a name apart from the extension"):
        pair_folders(fake, real)


def test_cli_errors_are_one_line(folders, tmp_path, capsys):
    fake, real, _ = folders
    cases = [
        (["--metrics", "fid,bogus"], "unknown metric(s) bogus"),
        (["--detector", str(tmp_path / "none.pt")], "does not exist"),
        (["--metrics", "psnr", "--sheet", str(tmp_path / "s.xyz")], "unknown output image"),
        (["--metrics", "psnr", "--json", str(tmp_path / "no" / "r.json")], "does not exist"),
        (["--metrics", "psnr", "--masks", str(tmp_path)], "add --sheet PNG"),
    ]
    for extra, message in cases:
        assert main(["evaluate", fake, real, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    Image.new("RGBA", (40, 32)).save(os.path.join(fake, "img0.png"))
    for workers in ("0", "2"):
        assert main(["evaluate", fake, real, "--metrics", "psnr", "--workers", workers]) == 2
        err = capsys.readouterr().err
        assert "img0.png is a RGBA image" in err and err.count("\n") == 1, err


def test_a_missing_extra_names_the_pip_command(folders, monkeypatch, capsys):
    fake, real, detector = folders
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)
    assert main(["evaluate", fake, real, "--metrics", "pids", "--detector", detector]) == 2
    err = capsys.readouterr().err
    assert 'pip install "mat_fast[eval]"' in err and "scikit-learn" in err


def test_sheet_shows_input_mask_fill_and_ground_truth(folders, tmp_path):
    fake, real, _ = folders
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in sorted(os.path.splitext(f)[0] for f in os.listdir(real)):
        size = Image.open(os.path.join(real, name + ".png")).size
        known = np.full((size[1], size[0]), 255, np.uint8)
        known[:, : size[0] // 2] = 0  # left half is the hole (black, upstream's convention)
        Image.fromarray(known).save(masks / f"{name}.png")
    sheet = tmp_path / "sheet.png"
    args = ["evaluate", fake, real, "--metrics", "psnr", "--sheet", str(sheet)]
    assert main(args + ["--masks", str(masks), "--sheet-count", "3", "--workers", "0"]) == 0
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape[0] > 3 * 192 and image.shape[1] > 4 * 192
    # first row, input column: the hole (left half) is grey, the rest is the photo
    row = image[14 + 6 + 14 : 14 + 6 + 14 + 192, 6 : 6 + 240]
    assert (row[:, 10:100] == 128).all() and not (row[:, 140:230] == 128).all()


def _torchrun(args, nproc):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    command += ["--standalone", "-m", "mat_fast", *args]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_ranks_give_the_one_process_report(folders, tmp_path):
    fake, real, detector = folders
    common = ["evaluate", fake, real, "--metrics", FEATURE_AND_PIXEL, "--detector", detector]
    common += ["--device", "cpu", "--batch-size", "1", "--workers", "0"]
    assert main(common + ["--json", str(tmp_path / "one.json")]) == 0
    done = _torchrun(common + ["--json", str(tmp_path / "two.json")], nproc=2)
    assert done.returncode == 0, done.stderr[-2000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["ranks"] == 2 and one["ranks"] == 1
    assert one["metrics"] == two["metrics"] and one["per_image"] == two["per_image"]


def test_a_failure_on_one_rank_stops_every_rank(folders, tmp_path):
    fake, real, _ = folders
    args = ["evaluate", fake, real, "--metrics", "fid", "--device", "cpu"]
    done = _torchrun(args + ["--detector", str(tmp_path / "missing.pt")], nproc=2)
    assert done.returncode != 0
    assert "missing.pt does not exist" in done.stderr


def test_shards_are_disjoint_and_merge_back_in_order():
    from mat_fast.metrics.evaluate import Pair, merge_shards, shard, size_batches

    pairs = [Pair(f"p{i}", "", "", (8, 8) if i % 3 else (4, 4)) for i in range(10)]
    for world in (1, 2, 3, 4):
        parts = [shard(pairs, rank, world) for rank in range(world)]
        assert sorted(p.name for part in parts for p in part) == sorted(p.name for p in pairs)
        results = [{"x": np.array([int(p.name[1:]) for p in part])} for part in parts]
        np.testing.assert_array_equal(merge_shards(results, 10)["x"], np.arange(10))
    few = pairs[:2]  # more ranks than pairs: an empty shard
    parts = [
        {"f": np.full((1, 5), rank, np.float32) if shard(few, rank, 3) else np.zeros((0, 0))}
        for rank in range(3)
    ]
    np.testing.assert_array_equal(merge_shards(parts, 2)["f"], [[0] * 5, [1] * 5])
    batches = size_batches(pairs, 2)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({pairs[i].size for i in b}) == 1 and len(b) <= 2 for b in batches)


def test_lpips_per_pair_matches_upstreams_scaling(folders, tmp_path, monkeypatch, capsys):
    """The CLI's LPIPS path (weights replaced by a seeded random network) against calls on
    one pair at a time, scaled like upstream's cal_lpips.py: x / 127.5 - 1."""
    from mat_fast.metrics import lpips as lpips_module

    torch.manual_seed(0)
    model = lpips_module.LPIPS()
    for p in model.parameters():
        p.data.uniform_(0.0, 0.1)
    monkeypatch.setattr(lpips_module, "load_lpips", lambda *a, **k: model)
    fake, real, _ = folders
    args = ["evaluate", fake, real, "--metrics", "lpips", "--workers", "0"]
    assert main(args) == 2  # 24x56 images: too small for AlexNet
    assert "at least 31x31 pixels; got 56x24" in capsys.readouterr().err
    fake, real = write_image_pairs(tmp_path / "big", count=5, size=(72, 64))
    out = tmp_path / "r.json"
    args = ["evaluate", fake, real, "--metrics", "lpips", "--batch-size", "4", "--workers", "0"]
    assert main(args + ["--json", str(out)]) == 0
    report = json.loads(out.read_text())
    values = []
    for name, scores in report["per_image"].items():
        [fake_file] = [f for f in os.listdir(fake) if os.path.splitext(f)[0] == name]
        a, b = (
            torch.from_numpy(read_rgb8(path)).permute(2, 0, 1)[None].float() / 127.5 - 1
            for path in (os.path.join(fake, fake_file), os.path.join(real, name + ".png"))
        )
        with torch.no_grad():
            values.append(float(model(a, b)))
        assert scores["lpips"] == pytest.approx(values[-1], rel=1e-5)
    assert report["metrics"]["lpips"] == pytest.approx(np.mean(values), rel=1e-6)
