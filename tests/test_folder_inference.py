"""Folder mode at scale: per-image seeds (results independent of batch, workers and ranks),
torchrun shards, resuming, and bad files reported by name without stopping the run."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mat_fast.cli import main
from mat_fast.folder_inference import _size_batches, image_seed
from mat_fast.model import sample_rng

from .helpers.paths import ROOT

# The smallest network (128 px: one 128x128 canvas per 48x48 image), one thread per process
# so that one process and each torchrun rank compute alike.
TINY = ["--random-weights", "--random-resolution", "128", "--device", "cpu", "--seed", "5"]
NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    images, masks = root / "images", root / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
            images / f"{name}.png"
        )
        hole = np.zeros((48, 48), np.uint8)
        hole[10 + i : 30, 8 : 30 + i] = 255
        Image.fromarray(hole).save(masks / f"{name}.png")
    return images, masks


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _cli(args):
    """The CLI in a fresh process, one thread (torchrun gives each rank one as well)."""
    command = [sys.executable, "-m", "mat_fast", "inpaint", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=900)


def _torchrun(args, nproc):
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    command += ["--standalone", "-m", "mat_fast", "inpaint", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=900)


def _run_args(folders, out, *extra):
    images, masks = folders
    return ["--input-dir", images, "--mask-dir", masks, "--out-dir", out, *TINY, *extra]


def _files(folder):
    return {name: (folder / f"{name}.png").read_bytes() for name in NAMES}


def test_seeds_come_from_the_seed_and_the_relative_path():
    assert image_seed(5, "a.png") == image_seed(5, "a.png")
    assert len({image_seed(5, "a.png"), image_seed(6, "a.png"), image_seed(5, "b.png")}) == 3
    assert image_seed(5, os.path.join("sub", "a.png")) == image_seed(5, "sub/a.png")
    assert 0 <= sample_rng.derive_seed("x", 1) < 2**63
    # sha256 of the parts, not the salted hash(): the same in every process and machine
    digest = hashlib.sha256("mat_fast\x1f0".encode()).digest()
    assert sample_rng.derive_seed("mat_fast", 0) == int.from_bytes(digest[:8], "little") >> 1


def test_size_batches_group_equal_sizes_in_order():
    sizes = {0: (48, 48), 1: (64, 48), 2: (48, 48), 3: (48, 48), 5: (64, 48)}
    assert _size_batches(sizes, 2) == [[0, 2], [1, 5], [3]]


@pytest.mark.slow  # torchrun with 2 processes and 3 runs of the CLI: ~50 s on 2 cores
def test_results_do_not_depend_on_batch_workers_or_ranks(folders, tmp_path):
    one = _cli(_run_args(folders, tmp_path / "one", "--batch-size", "1", "--workers", "0"))
    assert one.returncode == 0, one.stderr[-2000:]
    assert "wrote 4 of 4 images" in one.stdout
    reference = _files(tmp_path / "one")

    two = _torchrun(_run_args(folders, tmp_path / "two", "--batch-size", "1", "--workers", "1"), 2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "wrote 4 of 4 images" in two.stdout and "on 2 ranks" in two.stdout
    assert _files(tmp_path / "two") == reference  # 2 gloo ranks, a decoding worker each

    batched = _cli(_run_args(folders, tmp_path / "four", "--batch-size", "4", "--workers", "2"))
    assert batched.returncode == 0, batched.stderr[-2000:]
    assert _files(tmp_path / "four") == reference  # one forward of 4, 2 workers

    images, masks = folders
    for name in NAMES:  # the fill really is a fill: known pixels kept, hole pixels new
        before = np.asarray(Image.open(images / f"{name}.png"))
        hole = np.asarray(Image.open(masks / f"{name}.png")) > 127
        after = np.asarray(Image.open(tmp_path / "one" / f"{name}.png"))
        assert np.array_equal(after[~hole], before[~hole])
        assert not np.array_equal(after[hole], before[hole])


def test_bad_files_are_reported_skipped_and_the_run_resumes(folders, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.png").write_bytes((folders[0] / f"{name}.png").read_bytes())
        (masks / f"{name}.png").write_bytes((folders[1] / f"{name}.png").read_bytes())
    (images / "broken.png").write_bytes(b"not a png")
    Image.new("L", (8, 8)).save(masks / "broken.png")
    Image.new("RGB", (48, 48)).save(images / "small.png")
    Image.new("L", (32, 48)).save(masks / "small.png")  # size mismatch
    out = tmp_path / "out"
    args = ["--input-dir", images, "--mask-dir", masks, "--out-dir", out, *TINY, "--workers", "0"]

    strict = _cli([*args, "--strict"])
    assert strict.returncode == 2 and "broken.png" in strict.stderr
    assert "Traceback" not in strict.stderr
    assert not out.exists() or not os.listdir(out)  # found before any work

    done = _cli(args)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "wrote 2 of 4 images" in done.stdout
    assert "2 failed" in done.stderr and "broken.png" in done.stderr
    assert "small.png" in done.stderr and "a mask must have its image's size" in done.stderr
    assert sorted(os.listdir(out)) == ["a.png", "b.png"]  # no partial files either

    (out / "b.png").unlink()
    stamp = os.stat(out / "a.png").st_mtime_ns
    resumed = _cli([*args, "--skip-existing"])
    assert resumed.returncode == 1
    assert "wrote 1 of 4 images" in resumed.stdout and "1 already there" in resumed.stdout
    assert os.stat(out / "a.png").st_mtime_ns == stamp and (out / "b.png").exists()


def test_folder_options_are_refused_in_single_mode(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["inpaint", str(image), str(image), "-o", str(tmp_path / "o.png"), "--strict"]) == 2
    assert "folder-mode options" in capsys.readouterr().err


def test_per_image_seeds_do_not_depend_on_the_other_images(stand_in_generator):
    from mat_fast import Inpainter, InputError

    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    hole = np.zeros((40, 40), bool)
    hole[8:30, 5:25] = True
    inpaint = Inpainter(stand_in_generator, device="cpu", batch_size=2)
    ab = inpaint([a, b], [hole, hole], seed=[11, 22])
    ba = inpaint([b, a], [hole, hole], seed=[22, 11])
    assert np.array_equal(ab[0], ba[1]) and np.array_equal(ab[1], ba[0])
    again = inpaint([a, a], [hole, hole], seed=[11, 12])  # another seed, another fill
    assert np.array_equal(again[0], ab[0]) and not np.array_equal(again[1], ab[0])
    with pytest.raises(InputError, match="one seed per image"):
        inpaint([a, b], [hole, hole], seed=[1])
