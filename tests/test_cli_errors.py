"""Every user mistake the CLI can meet: one line on stderr that says what to do, exit
status 2, no traceback, and nothing written. Run in-process (``main(argv)``) for speed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mat_fast import cli_inpaint
from mat_fast.cli import main

TINY = ["--random-weights", "--random-resolution", "256", "--device", "cpu"]


def run_cli(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: chmod for ordinary users; as root (who ignores
    permissions) /sys, whose root refuses new files."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.remove(probe)
    pytest.skip("no unwritable folder available")


@pytest.fixture
def files(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (24, 16), (90, 120, 200)).save(work / "img.png")
    mask = Image.new("L", (24, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    mask.save(work / "mask.png")
    return work


@pytest.fixture
def no_model(monkeypatch):
    def refuse(args):
        raise AssertionError("the network was built although the command must fail first")

    monkeypatch.setattr(cli_inpaint, "_make_inpainter", refuse)


# (id, arguments after "inpaint": {w} is the work folder, holding img.png and mask.png;
# {out} is {w}/o.png; expected text in the error). Every case fails before the network
# is built.
IO = "{w}/img.png {w}/mask.png"
INPAINT_CASES = [
    ("device-gpu", IO + " -o {out} --device gpu", "unknown device 'gpu'"),
    ("device-mps", IO + " -o {out} --device mps", "is not supported"),
    ("seed-2**64", IO + f" -o {{out}} --seed {2**64}", "out of range"),
    ("seed-negative", IO + " -o {out} --seed -1", "out of range"),
    ("seed-text", IO + " -o {out} --seed x", "invalid seed value"),
    ("truncation-nan", IO + " -o {out} --truncation nan", "not a finite number"),
    ("truncation-inf", IO + " -o {out} --truncation inf", "not a finite number"),
    ("batch-size-0", IO + " -o {out} --batch-size 0", "not a positive integer"),
    ("threshold-0", IO + " -o {out} --mask-threshold 0", "fraction in (0, 1]"),
    ("threshold-2", IO + " -o {out} --mask-threshold 2", "fraction in (0, 1]"),
    ("max-memory", IO + " -o {out} --max-memory lots", "such as 8G"),
    ("max-pixels-0", IO + " -o {out} --max-pixels 0", "not a positive integer"),
    ("resize-limit-0", IO + " -o {out} --resize-limit 0", "not a positive integer"),
    ("quality-101", IO + " -o {w}/o.jpg --quality 101", "not in 1..100"),
    ("strategy", IO + " -o {out} --strategy tile", "invalid choice"),
    ("checkpoint-and-random", IO + " -o {out} --checkpoint {w}/g.pth", "exclude each other"),
    ("out-is-input", IO + " -o {w}/img.png", "is the input image"),
    ("out-is-mask", IO + " -o {w}/mask.png", "is the mask"),
    ("out-through-dotdot", IO + " -o {w}/sub/../img.png", "is the input image"),
    ("out-symlink-to-input", IO + " -o {w}/link.png", "is the input image"),
    ("out-hard-link-to-mask", IO + " -o {w}/hard.png", "is the mask"),
    ("out-is-folder-of-input", IO + " -o {w}", "is the input image"),
    ("comparison-is-output", IO + " -o {out} --comparison {out}", "is the output (-o)"),
    ("comparison-is-input", IO + " -o {out} --comparison {w}/img.png", "is the input image"),
    ("comparison-is-folder", IO + " -o {out} --comparison {w}", "unknown output image extension"),
    ("out-unknown-extension", IO + " -o {w}/o.xyz", "unknown output image extension"),
    ("out-folder-missing", IO + " -o {w}/nope/o.png", "does not exist"),
    ("image-missing", "{w}/nope.png {w}/mask.png -o {out}", "image file not found"),
    ("too-many-pixels", IO + " -o {out} --max-pixels 100", "--max-pixels 384"),
    (
        "folder-mode-with-o",
        "--input-dir {w} --mask-dir {w} --out-dir {w}/r -o {out}",
        "folder mode",
    ),
]


def _case_argv(template, work):
    os.symlink(work / "img.png", work / "link.png")
    os.link(work / "mask.png", work / "hard.png")
    return ["inpaint", *TINY, *template.format(w=work, out=work / "o.png").split()]


@pytest.mark.parametrize(
    "template,expected", [c[1:] for c in INPAINT_CASES], ids=[c[0] for c in INPAINT_CASES]
)
def test_inpaint_mistakes_are_one_line_exit_2_and_write_nothing(
    template, expected, files, capsys, no_model
):
    argv = _case_argv(template, files)
    before = {p.name: p.read_bytes() for p in files.iterdir() if not p.is_symlink()}
    links = sorted(p.name for p in files.iterdir())
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, err)
    assert expected in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert sorted(p.name for p in files.iterdir()) == links  # nothing new
    assert {n: (files / n).read_bytes() for n in before} == before  # nothing changed


def test_random_resolution_needs_random_weights(files, capsys, no_model):
    code, _, err = run_cli(
        ["inpaint", files / "img.png", files / "mask.png", "-o", files / "o.png",
         "--checkpoint", files / "g.pth", "--random-resolution", "256", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "applies to --random-weights only" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("flag", [["--device", "cuda"], ["--cuda-graphs"]])
def test_cuda_requests_without_a_gpu(flag, files, capsys, no_model):
    argv = ["inpaint", files / "img.png", files / "mask.png", "-o", files / "o.png"]
    argv += ["--random-weights", "--device", "cpu", *flag]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "CUDA" in err and err.count("\n") == 1, err


def test_output_in_cwd_with_dot(files, capsys, no_model, monkeypatch):
    monkeypatch.chdir(files)
    code, _, err = run_cli(["inpaint", "img.png", "mask.png", "-o", ".", *TINY], capsys)
    assert code == 2 and "is the input image" in err


def test_unwritable_output_and_comparison_fail_before_inference(files, tmp_path, capsys, no_model):
    locked = unwritable_folder(tmp_path)
    for argv, name in (
        (["-o", locked / "o.png"], "o.png"),
        (["-o", files / "o.png", "--comparison", locked / "c.png"], "c.png"),
    ):
        code, _, err = run_cli(
            ["inpaint", files / "img.png", files / "mask.png", *argv, *TINY], capsys
        )
        assert code == 2 and "not writable" in err and str(locked / name) in err, err
        assert ".partial" not in err
    assert sorted(p.name for p in files.iterdir()) == ["img.png", "mask.png"]


def test_unwritable_out_dir_in_folder_mode(files, tmp_path, capsys, no_model):
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir(), masks.mkdir()
    (files / "img.png").rename(images / "a.png")
    (files / "mask.png").rename(masks / "a.png")
    locked = unwritable_folder(tmp_path)
    argv = ["inpaint", "--input-dir", images, "--mask-dir", masks, "--out-dir", locked / "r", *TINY]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "not writable" in err, err


def test_decompression_bomb_limit_prints_no_raw_warning(files, capsys, no_model, recwarn):
    argv = ["inpaint", files / "img.png", files / "mask.png", "-o", files / "o.png"]
    code, _, err = run_cli([*argv, "--max-pixels", "100", *TINY], capsys)
    assert code == 2 and "decompression bombs" in err and "DecompressionBomb" not in err
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_convert_mistakes(tmp_path, capsys):
    from mat_fast import save_generator
    from mat_fast.inpaint import random_generator

    src = tmp_path / "g.pth"
    save_generator(random_generator(0, resolution=128), src)
    locked = unwritable_folder(tmp_path)
    for argv, expected in (
        ([src, locked / "g.safetensors"], "not writable"),
        ([src, src], "is the checkpoint to convert"),
        ([tmp_path / "missing.pth", tmp_path / "g.safetensors"], "no such checkpoint file"),
        ([src, tmp_path / "g.bin"], "must end in .safetensors"),
    ):
        code, _, err = run_cli(["convert", *argv], capsys)
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
        assert err.strip().count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "locked") == ["g.pth"]


def test_memory_refusal_says_how_much_and_what_to_do(files, capsys):
    argv = ["inpaint", files / "img.png", files / "mask.png", "-o", files / "o.png"]
    code, _, err = run_cli([*argv, "--strategy", "full", "--max-memory", "1M", *TINY], capsys)
    assert code == 2 and "needs about" in err and "GiB" in err and "strategy" in err, err
    assert not (files / "o.png").exists()
