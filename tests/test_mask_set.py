"""mat-fast masks: a reproducible evaluation mask set in upstream's file convention."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from mat_fast.cli import main
from mat_fast.image_io import load_image, to_hole_mask
from mat_fast.mask_set import draw_mask, mask_name, write_mask_set
from mat_fast.masks import random_mask


def _files(folder):
    return {
        f: open(os.path.join(folder, f), "rb").read()
        for f in sorted(os.listdir(folder))
        if f.endswith(".png")
    }


def test_same_arguments_give_identical_files(tmp_path):
    args = ["masks", "--count", "5", "--resolution", "64", "--seed", "7", "--workers", "1"]
    assert main(args + ["--out-dir", str(tmp_path / "a")]) == 0
    assert main(args[:-1] + ["2", "--out-dir", str(tmp_path / "b")]) == 0  # two processes
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert list(first) == [mask_name(i) for i in range(5)]
    assert first == second
    assert len(set(first.values())) == 5  # and the masks differ from each other


def test_a_mask_depends_on_the_seed_and_its_index_only(tmp_path):
    write_mask_set(str(tmp_path / "small"), 3, resolution=64, seed=11)
    write_mask_set(str(tmp_path / "large"), 6, resolution=64, seed=11)
    small, large = _files(tmp_path / "small"), _files(tmp_path / "large")
    assert all(large[name] == content for name, content in small.items())
    write_mask_set(str(tmp_path / "other"), 3, resolution=64, seed=12)
    assert _files(tmp_path / "other") != small
    # mask i is the paper's generator fed with the i-th child seed of the set's seed
    child = np.random.SeedSequence(11).spawn(3)[2]
    expected = random_mask(64, setting="large", rng=np.random.default_rng(child))
    np.testing.assert_array_equal(draw_mask(11, 2, 64), expected)


def test_files_are_in_upstreams_convention_and_read_back_with_mask_convention_keep(tmp_path):
    write_mask_set(str(tmp_path), 4, resolution=64, seed=3, setting="small")
    for i in range(4):
        image = Image.open(tmp_path / mask_name(i))
        assert image.mode == "L" and image.size == (64, 64)
        assert set(np.unique(np.asarray(image))) <= {0, 255}
        known = draw_mask(3, i, 64, "small")
        assert (known == 0).any()
        hole = to_hole_mask(load_image(tmp_path / mask_name(i)), (64, 64), "keep")
        np.testing.assert_array_equal(hole, known == 0)  # black = hole
    manifest = json.loads((tmp_path / "masks.json").read_text())
    assert manifest["convention"] == "keep" and manifest["seed"] == 3
    assert manifest["setting"] == "small" and manifest["count"] == 4


def test_fill_convention_writes_the_inverse(tmp_path):
    write_mask_set(str(tmp_path / "keep"), 2, resolution=32, seed=1)
    write_mask_set(str(tmp_path / "fill"), 2, resolution=32, seed=1, convention="fill")
    for i in range(2):
        keep = np.asarray(Image.open(tmp_path / "keep" / mask_name(i)))
        fill = np.asarray(Image.open(tmp_path / "fill" / mask_name(i)))
        np.testing.assert_array_equal(fill, 255 - keep)


def test_hole_range_is_respected(tmp_path):
    write_mask_set(str(tmp_path), 4, resolution=64, seed=5, hole_range=(0.3, 0.5))
    for i in range(4):
        ratio = np.mean(np.asarray(Image.open(tmp_path / mask_name(i))) == 0)
        assert 0.3 < ratio < 0.5


def test_refuses_folders_with_other_images_and_bad_arguments(tmp_path, capsys):
    (tmp_path / "photo.png").write_bytes(b"")
    assert main(["masks", "--out-dir", str(tmp_path), "--count", "2"]) == 2
    assert "outside this set" in capsys.readouterr().err
    for bad, message in (
        (["--count", "0"], "--count"),
        (["--count", "2", "--seed", "-1"], "--seed"),
        (["--count", "2", "--hole-range", "0.5", "0.2"], "--hole-range"),
    ):
        assert main(["masks", "--out-dir", str(tmp_path / "new"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # nothing written on a refusal
