"""The ``mat-fast`` command end to end on upstream's sample images, and its error paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mat_fast.cli import main

# The 512 network is the cheapest on upstream's 512x512 samples (its token grid is 64x64).
FAST = ["--random-weights", "--device", "cpu", "--seed", "1"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_single_image_with_upstream_sample(test_sets, tmp_path, capsys):
    image = test_sets / "Places" / "images" / "test1.jpg"
    mask = test_sets / "Places" / "masks" / "mask1.png"  # upstream convention: black = hole
    out, comparison = tmp_path / "out.png", tmp_path / "cmp.png"
    code, stdout, err = run(
        [
            "inpaint",
            image,
            mask,
            "-o",
            out,
            "--mask-convention",
            "keep",
            "--comparison",
            comparison,
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert "wrote" in stdout
    before = np.asarray(Image.open(image).convert("RGB"))
    after = np.asarray(Image.open(out))
    hole = np.asarray(Image.open(mask).convert("L")) == 0
    assert after.shape == before.shape
    assert np.array_equal(after[~hole], before[~hole])
    assert not np.array_equal(after[hole], before[hole])
    assert Image.open(comparison).size == (2 * before.shape[1] + 8, before.shape[0])


def _half_size_copy(folder: Path, dest: Path) -> Path:
    """The upstream files of ``folder`` with their names and formats, at half their size
    (one 256 canvas each instead of a 512 one: the pairing is what is tested here)."""
    dest.mkdir()
    for path in sorted(folder.iterdir()):
        image = Image.open(path)
        image.resize((image.width // 2, image.height // 2), Image.NEAREST).save(dest / path.name)
    return dest


def test_folder_mode_pairs_upstream_names_and_writes_all(test_sets, tmp_path, capsys):
    out_dir = tmp_path / "results"
    images = _half_size_copy(test_sets / "CelebA-HQ" / "images", tmp_path / "images")
    masks = _half_size_copy(test_sets / "CelebA-HQ" / "masks", tmp_path / "masks")
    code, stdout, err = run(
        [
            "inpaint",
            "--input-dir",
            images,
            "--mask-dir",
            masks,
            "--out-dir",
            out_dir,
            "--mask-convention",
            "keep",
            "--batch-size",
            "2",
            *FAST,
            "--random-resolution",  # at its own size, the cheapest network for 256 images
            "256",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["test1.png", "test2.png"]
    for name, mask_name in (("test1", "mask1"), ("test2", "mask2")):
        before = np.asarray(Image.open(images / f"{name}.png").convert("RGB"))
        hole = np.asarray(Image.open(masks / f"{mask_name}.png").convert("L")) == 0
        after = np.asarray(Image.open(out_dir / f"{name}.png"))
        assert np.array_equal(after[~hole], before[~hole])


def test_without_checkpoint_says_where_to_get_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MAT_FAST_CHECKPOINT", raising=False)
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(img)
    code, _, err = run(["inpaint", img, img, "-o", tmp_path / "o.png"], capsys)
    assert code == 2
    assert "Places_512_FullData.pkl" in err and "--random-weights" in err
    assert "Traceback" not in err and not (tmp_path / "o.png").exists()


def _write(path, size, mode="RGB"):
    Image.new(mode, size).save(path)
    return path


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "image file not found"),
        ("size", "a mask must have its image's size"),
        ("not_an_image", "cannot read"),
        ("no_folder", "output folder does not exist"),
    ],
)
def test_bad_inputs_fail_cleanly_and_write_nothing(case, match, tmp_path, capsys):
    image = _write(tmp_path / "img.png", (64, 48))
    mask = _write(tmp_path / "mask.png", (64, 48), "L")
    out = tmp_path / "out.png"
    if case == "missing":
        image = tmp_path / "nope.png"
    elif case == "size":
        mask = _write(tmp_path / "mask.png", (32, 32), "L")
    elif case == "not_an_image":
        image = tmp_path / "text.png"
        image.write_text("hello")
    elif case == "no_folder":
        out = tmp_path / "missing" / "out.png"
    code, _, err = run(["inpaint", image, mask, "-o", out, *FAST], capsys)
    assert code == 2 and match in err and "Traceback" not in err
    assert not out.exists()


def test_folder_mode_checks_every_pair_before_writing(tmp_path, capsys):
    images, masks, out_dir = tmp_path / "i", tmp_path / "m", tmp_path / "o"
    images.mkdir(), masks.mkdir()
    _write(images / "a.png", (64, 64)), _write(masks / "a.png", (64, 64), "L")
    _write(images / "b.png", (64, 64)), _write(masks / "b.png", (32, 64), "L")  # bad size
    code, _, err = run(
        ["inpaint", "--input-dir", images, "--mask-dir", masks, "--out-dir", out_dir, "--strict"]
        + FAST,
        capsys,
    )
    assert code == 2 and "b.png" in err
    assert not out_dir.exists() or not os.listdir(out_dir)


def test_convert_round_trip(tmp_path, capsys):
    from mat_fast import load_generator, save_generator
    from mat_fast.inpaint import random_generator

    G = random_generator(seed=4, resolution=128)
    src, dst = tmp_path / "g.pth", tmp_path / "g.safetensors"
    save_generator(G, src)
    code, stdout, err = run(["convert", src, dst], capsys)
    assert code == 0, err and "img_resolution=128" in stdout
    back = load_generator(dst)
    assert all(
        torch.equal(a, b) for a, b in zip(G.state_dict().values(), back.state_dict().values())
    )


def test_convert_refuses_unknown_output_extension(tmp_path, capsys):
    code, _, err = run(["convert", tmp_path / "x.pth", tmp_path / "x.bin"], capsys)
    assert code == 2 and ".safetensors" in err


def test_info_lists_backends_with_reasons(capsys):
    code, stdout, _ = run(["info"], capsys)
    assert code == 0
    assert "torch" in stdout and "reference" in stdout and "triton" in stdout
    from mat_fast.backend import resolve

    assert f"on cpu: runs {resolve('cpu')}" in stdout
    from mat_fast.ops import native_build

    # which native library runs (a stale or unexpected one can be spotted), or why none does
    assert f"native   {native_build.describe()}" in stdout
    assert native_build.is_loaded() or "native   unavailable: " in stdout
    # whether half precision convolutions are widened on this CPU (both answers occur)
    from mat_fast.ops.resample.cpu import half_convolutions_in_fp32

    assert ("bf16" in stdout.split("cpu half")[-1]) == half_convolutions_in_fp32(torch.bfloat16)


def test_module_entry_point_and_console_script():
    out = subprocess.run(
        [sys.executable, "-m", "mat_fast", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("mat_fast ")
    # the script installed beside this interpreter (a venv's bin/), else the one on PATH
    beside = os.path.join(os.path.dirname(sys.executable), "mat-fast")
    script = beside if os.path.isfile(beside) else shutil.which("mat-fast")
    if script is None:
        pytest.skip("console script not installed (pip install -e . installs it)")
    out = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mat_fast ")


# ---------------------------------------------------------------------------------------
# Checked before any work (the model is never built), and file handling


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the command gets as far as building a network."""
    from mat_fast import cli_inpaint

    def refuse(args):
        raise AssertionError("the model was built although the arguments are wrong")

    monkeypatch.setattr(cli_inpaint, "_make_inpainter", refuse)


def _tiny_pair(folder, name="a", ext=".png", size=(24, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 200)).save(folder / f"{name}{ext}")
    return folder / f"{name}{ext}"


def test_bad_output_names_are_refused_before_inference(tmp_path, capsys, no_model):
    image = _tiny_pair(tmp_path / "in")
    mask = _tiny_pair(tmp_path / "masks")
    for argv, expect in (
        (["-o", tmp_path / "out.xyz"], "unknown output image extension '.xyz'"),
        (["-o", tmp_path / "result"], "unknown output image extension ''"),
        (["-o", f"{tmp_path / 'newdir'}/"], "output folder does not exist"),
        (
            ["-o", tmp_path / "ok.png", "--comparison", tmp_path / "cmp.xyz"],
            "unknown output image extension '.xyz'",
        ),
    ):
        code, _, err = run(["inpaint", image, mask, *argv, *FAST], capsys)
        assert code == 2 and expect in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "masks"]  # nothing written


def test_folder_mode_refuses_clashing_names_and_overwriting_inputs(tmp_path, capsys, no_model):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for ext in (".jpg", ".png"):
        _tiny_pair(images, "a", ext)
    _tiny_pair(masks, "a")
    code, _, err = run(
        [
            "inpaint",
            "--input-dir",
            images,
            "--mask-dir",
            masks,
            "--out-dir",
            tmp_path / "out",
            *FAST,
        ],
        capsys,
    )
    assert code == 2 and "a.jpg and a.png" in err and "rename" in err, err
    (images / "a.jpg").unlink()
    before = (images / "a.png").read_bytes()
    for out_dir, what in ((images, "--input-dir"), (masks, "--mask-dir")):
        code, _, err = run(
            ["inpaint", "--input-dir", images, "--mask-dir", masks, "--out-dir", out_dir, *FAST],
            capsys,
        )
        assert code == 2 and f"same folder as {what}" in err, err
    code, _, err = run(
        [
            "inpaint",
            "--input-dir",
            images,
            "--mask-dir",
            images,
            "--out-dir",
            tmp_path / "out",
            *FAST,
        ],
        capsys,
    )
    assert code == 2 and "are the same folder" in err, err
    assert (images / "a.png").read_bytes() == before and not (tmp_path / "out").exists()


def test_exif_orientation_is_applied_on_load(tmp_path):
    """A JPEG stored 60x40 with Orientation=6 is shown 40x60: that is what load_image
    returns, so a mask drawn on the displayed picture fits it."""
    from mat_fast.cli_inpaint import _load_pair
    from mat_fast.image_io import load_image

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    shown = load_image(tmp_path / "photo.jpg")
    assert shown.size == (40, 60)
    assert np.asarray(shown)[:10].mean() > 200  # the stored left edge is now the top
    Image.new("L", (40, 60), 0).save(tmp_path / "mask.png")
    image, mask = _load_pair(str(tmp_path / "photo.jpg"), str(tmp_path / "mask.png"))
    assert image.size == mask.size == (40, 60)


def test_sixteen_bit_results_saved_as_eight_bit_are_scaled_not_clipped(tmp_path):
    from mat_fast.image_io import save_image

    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 32).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    for ext in (".jpg", ".bmp"):
        save_image(image, tmp_path / f"out{ext}")
        back = np.asarray(Image.open(tmp_path / f"out{ext}").convert("L")).astype(np.float64)
        assert abs(back.mean() - ramp.mean() / 257) < 2, (ext, back.mean(), ramp.mean() / 257)
    save_image(image, tmp_path / "out.png")  # PNG keeps all 16 bits
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")).astype(np.uint16), ramp)


def test_float_results_saved_as_png_become_16_bit(tmp_path):
    from mat_fast.image_io import save_image

    values = np.linspace(0, 1, 64 * 8, dtype=np.float32).reshape(8, 64)
    save_image(Image.fromarray(values), tmp_path / "out.png")  # PNG has no float mode
    back = np.asarray(Image.open(tmp_path / "out.png")).astype(np.float64) / 65535
    assert np.abs(back - values).max() <= 1 / 65535


def test_float_pil_images_must_hold_values_in_0_1():
    from mat_fast.image_io import InputError, _pil_to_array

    with pytest.raises(InputError, match=r"must hold values in \[0, 1\]"):
        _pil_to_array(Image.fromarray(np.full((4, 4), 200.0, np.float32)))
    arr, scale, mode = _pil_to_array(Image.fromarray(np.full((4, 4), 0.5, np.float32)))
    assert scale == 1.0 and mode == "F" and float(arr.max()) == 0.5
