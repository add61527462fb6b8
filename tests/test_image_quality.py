"""What reaches the output file: lossy formats at high quality, EXIF and ICC kept, warnings
where a format cannot hold what the input had; masks binarised at a threshold."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, JpegImagePlugin

from mat_fast.cli import main
from mat_fast.image_io import (
    InputError,
    output_metadata,
    storage_warnings,
    to_hole_mask,
    write_images,
)

TINY = ["--random-weights", "--random-resolution", "256", "--device", "cpu", "--seed", "0"]


def _photo(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_jpeg_is_written_at_quality_95_without_chroma_subsampling(tmp_path):
    image = _photo()
    write_images([(image, tmp_path / "a.jpg", {})])
    expected = io.BytesIO()
    image.save(expected, format="JPEG", quality=95, subsampling=0)
    assert (tmp_path / "a.jpg").read_bytes() == expected.getvalue()
    assert JpegImagePlugin.get_sampling(Image.open(tmp_path / "a.jpg")) == 0  # 4:4:4
    write_images([(image, tmp_path / "b.jpg", {})], quality=60)  # asked for: smaller
    assert (tmp_path / "b.jpg").stat().st_size < (tmp_path / "a.jpg").stat().st_size


def test_webp_is_lossless_unless_a_quality_is_asked_for(tmp_path):
    image = _photo()
    write_images([(image, tmp_path / "a.webp", {})])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.webp")), np.asarray(image))
    write_images([(image, tmp_path / "b.webp", {})], quality=50)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "b.webp")), np.asarray(image))


def test_exif_and_icc_survive_the_cli_with_orientation_reset(tmp_path, capsys):
    stored = _photo(40, 56)  # shown rotated: 40 wide, 56 high
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "mat_fast camera"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored.save(tmp_path / "photo.jpg", exif=exif.tobytes(), icc_profile=icc, quality=95)
    mask = Image.new("L", (40, 56), 0)
    mask.paste(255, (10, 10, 30, 30))
    mask.save(tmp_path / "mask.png")
    code = main(["inpaint", str(tmp_path / "photo.jpg"), str(tmp_path / "mask.png")]
                + ["-o", str(tmp_path / "out.jpg"), *TINY])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # the CLI's result and the metadata it read, through each format that holds them
    meta = output_metadata(Image.open(tmp_path / "out.jpg"))
    write_images([(Image.open(tmp_path / "out.jpg"), tmp_path / f"out{ext}", meta)
                  for ext in (".png", ".webp", ".tif")])  # fmt: skip
    for out in ("out.jpg", "out.png", "out.webp", "out.tif"):
        result = Image.open(tmp_path / out)
        assert result.size == (40, 56)  # upright
        back = result.getexif()
        assert back.get(0x010F) == "mat_fast camera", out
        assert back.get(0x0112, 1) == 1, out  # pixels are upright now
        assert result.info.get("icc_profile") == icc, out


def test_metadata_is_dropped_with_a_warning_where_the_format_has_none(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (1, 2, 3, 4))
    assert any("alpha" in w for w in storage_warnings(rgba, tmp_path / "a.jpg"))
    assert any("alpha" in w for w in storage_warnings(rgba, tmp_path / "a.bmp"))
    assert storage_warnings(rgba, tmp_path / "a.png") == []
    sixteen = Image.fromarray(np.zeros((4, 4), np.uint16))
    assert any("16-bit" in w for w in storage_warnings(sixteen, tmp_path / "a.jpg"))
    assert storage_warnings(sixteen, tmp_path / "a.png") == []
    meta = output_metadata(_photo())
    assert meta == {}
    assert any("EXIF" in w for w in storage_warnings(_photo(), tmp_path / "a.bmp", {"exif": b"x"}))


def test_rgba_to_jpeg_warns_in_the_cli(tmp_path, capsys, caplog):
    Image.new("RGBA", (32, 24), (10, 20, 30, 128)).save(tmp_path / "a.png")
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (4, 4, 12, 12))
    mask.save(tmp_path / "m.png")
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        code = main(["inpaint", str(tmp_path / "a.png"), str(tmp_path / "m.png")]
                    + ["-o", str(tmp_path / "o.jpg"), *TINY])  # fmt: skip
    assert code == 0
    assert "no alpha channel" in caplog.text


def test_failed_second_write_leaves_neither_file(tmp_path):
    image = _photo()
    with pytest.raises(InputError, match="unknown output image extension"):
        write_images([(image, tmp_path / "a.png", {}), (image, tmp_path / "b.xyz", {})])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# Masks


def test_faint_noise_and_jpeg_ringing_are_not_holes():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 3, (32, 32), dtype=np.uint8)  # values 0-2
    assert not to_hole_mask(noise, (32, 32)).any()
    mask = np.zeros((32, 32), np.uint8)
    mask[5:21, 7:19] = 255  # edges inside JPEG's 8x8 blocks: ringing around them
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="JPEG", quality=50)
    ringing = np.asarray(Image.open(buf))
    assert (ringing[~(mask > 0)] > 0).any()  # the JPEG did leave speckles
    assert np.array_equal(to_hole_mask(ringing, (32, 32)), mask > 0)


@pytest.mark.parametrize(
    "dtype,white", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0), (bool, True)]
)
def test_threshold_is_a_fraction_of_the_full_range(dtype, white):
    values = np.array([[0, 0.49, 0.5, 1.0]]) * float(white)
    if dtype in (np.uint8, np.uint16):
        values = np.ceil(values)  # 0.5 of 255 is 127.5: the first white value is 128
    arr = values.astype(dtype) if dtype is not bool else values > 0.5
    hole = to_hole_mask(arr, (1, 4))
    if dtype is bool:
        assert hole.tolist() == [[False, False, False, True]]
    else:
        assert hole.tolist() == [[False, False, True, True]]
        assert to_hole_mask(arr, (1, 4), threshold=0.25).tolist() == [[False, True, True, True]]
        assert to_hole_mask(arr, (1, 4), "keep").tolist() == [[True, True, False, False]]


def test_rgba_masks_paint_only_where_opaque():
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[:, :2] = (255, 255, 255, 255)  # opaque white: fill
    mask[:, 2:] = (255, 255, 255, 0)  # transparent white: not painted
    hole = to_hole_mask(mask, (4, 4))
    assert hole[:, :2].all() and not hole[:, 2:].any()
    strokes = np.zeros((4, 4, 4), np.uint8)  # black strokes on transparency
    strokes[1:3, 1:3, 3] = 255
    assert np.array_equal(to_hole_mask(strokes, (4, 4)), strokes[:, :, 3] > 0)
    assert not to_hole_mask(mask, (4, 4), "keep")[:, 2:].any()  # transparent: kept


def test_bad_threshold_is_refused():
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        to_hole_mask(np.zeros((2, 2), np.uint8), (2, 2), threshold=0)


def test_empty_and_full_masks_are_reported(stand_in_generator, caplog):
    from mat_fast import Inpainter

    inpaint = Inpainter(stand_in_generator, device="cpu")
    image = np.zeros((32, 32, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        assert np.array_equal(inpaint(image, np.zeros((32, 32), np.uint8)), image)
    assert "nothing to fill" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        inpaint(image, np.full((32, 32), 255, np.uint8), seed=0)
    assert "covers the whole image" in caplog.text


# ---------------------------------------------------------------------------------------
# The API matches the CLI


def test_load_generator_takes_auto_and_refuses_absent_cuda_clearly():
    from mat_fast import load_generator
    from mat_fast.devices import DeviceError
    from mat_fast.inpaint import random_generator

    sd = random_generator(0, resolution=128).state_dict()
    G = load_generator(sd, device="auto")
    assert next(G.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "mps"):
        with pytest.raises(DeviceError) as err:
            load_generator(sd, device=bad)
        assert "--" not in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU is visible") as err:
            load_generator(sd, device="cuda")
        assert "--" not in str(err.value)


def test_noise_mode_on_a_checkpoint_without_noise_warns(caplog):
    from mat_fast import Inpainter
    from mat_fast.inpaint import random_generator

    G = random_generator(0, resolution=128, use_noise=False)
    inpaint = Inpainter(G, device="cpu")
    image, hole = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), bool)
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        inpaint(image, hole, noise_mode="const")
    assert "has no effect" in caplog.text


def test_fp16_on_cpu_warns_in_the_cli(tmp_path, caplog, monkeypatch):
    from mat_fast import cli_inpaint

    monkeypatch.setattr(cli_inpaint, "_make_inpainter", lambda args: 1 / 0)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger="mat_fast"), pytest.raises(ZeroDivisionError):
        main(["inpaint", str(tmp_path / "a.png"), str(tmp_path / "a.png")]
             + ["-o", str(tmp_path / "o.png"), "--dtype", "fp16", *TINY])  # fmt: skip
    assert "--dtype bf16" in caplog.text


def test_a_failed_write_names_the_real_path_not_the_temporary_file(tmp_path, monkeypatch):
    def refuse(self, fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image.Image, "save", refuse)
    with pytest.raises(InputError) as err:
        write_images([(_photo(), tmp_path / "a.png", {})])
    assert str(tmp_path / "a.png") in str(err.value) and ".partial" not in str(err.value)
    assert "Permission denied" in str(err.value) and list(tmp_path.iterdir()) == []
