"""16-bit RGB(A) PNG and TIFF inputs stay 16-bit end to end: read at full depth with OpenCV
(the hidepth extra), known pixels given back bit for bit, written at 16 bits where the
format holds them, and a clear warning wherever 16 bits are reduced to 8."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image, ImageCms

from mat_fast import InputError, RGB16Image, image16
from mat_fast.cli import main
from mat_fast.image_io import (
    load_image,
    output_metadata,
    storage_warnings,
    to_hole_mask,
    write_images,
)
from mat_fast.inpaint import Inpainter

cv2 = pytest.importorskip("cv2")

TINY = ["--random-weights", "--random-resolution", "128", "--device", "cpu", "--seed", "0"]
H, W = 80, 96
HOLE = (slice(20, 50), slice(30, 70))  # rows, columns


def _pixels(channels=3, seed=0):
    """Random 16-bit samples: their low bytes differ, so any 8-bit step shows."""
    return np.random.default_rng(seed).integers(0, 65536, (H, W, channels), dtype=np.uint16)


def _write16(path, pixels):
    """A 16-bit PNG or TIFF written by OpenCV itself (BGR(A) order there)."""
    order = [2, 1, 0, 3] if pixels.shape[2] == 4 else [2, 1, 0]
    assert cv2.imwrite(str(path), np.ascontiguousarray(pixels[:, :, order]))


def _read16(path):
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    order = [2, 1, 0, 3] if decoded.shape[2] == 4 else [2, 1, 0]
    return decoded[:, :, order]


def _mask(path):
    mask = np.zeros((H, W), np.uint8)
    mask[HOLE] = 255
    Image.fromarray(mask).save(path)
    return mask > 0


def _png_depth(path):
    """(bit depth, colour type) from a PNG's IHDR."""
    header = open(path, "rb").read(26)
    return header[24], header[25]


def _check_result(result, source, hole):
    assert result.dtype == np.uint16 and result.shape == source.shape
    assert np.array_equal(result[~hole], source[~hole])  # known pixels, bit for bit
    assert not np.array_equal(result[hole], source[hole])  # the hole was filled
    assert (result[hole][:, :3] % 257 != 0).any()  # a 16-bit fill, not 8 bits scaled up


def test_cli_keeps_a_16_bit_rgb_png_bit_for_bit(tmp_path):
    source = _pixels()
    _write16(tmp_path / "photo.png", source)
    hole = _mask(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["inpaint", str(tmp_path / "photo.png"), str(tmp_path / "mask.png")]
                + ["-o", str(out), *TINY]) == 0  # fmt: skip
    assert _png_depth(out) == (16, 2)
    _check_result(_read16(out), source, hole)


def test_folder_mode_keeps_16_bit_rgba_png_and_rgb_tiff(tmp_path):
    images, masks, outs = (tmp_path / n for n in ("images", "masks", "out"))
    images.mkdir(), masks.mkdir()
    rgba, rgb = _pixels(4, seed=1), _pixels(3, seed=2)
    _write16(images / "a.png", rgba)
    _write16(images / "b.tif", rgb)
    hole = _mask(masks / "a.png")
    _mask(masks / "b.png")
    assert main(["inpaint", "--input-dir", str(images), "--mask-dir", str(masks)]
                + ["--out-dir", str(outs), "--workers", "0", *TINY]) == 0  # fmt: skip
    assert _png_depth(outs / "a.png") == (16, 6)
    assert _png_depth(outs / "b.png") == (16, 2)
    a = _read16(outs / "a.png")
    _check_result(a, rgba, hole)
    assert np.array_equal(a[:, :, 3], rgba[:, :, 3])  # alpha untouched, hole included
    _check_result(_read16(outs / "b.png"), rgb, hole)


def test_inpainter_takes_and_returns_rgb16_with_its_metadata(tmp_path, stand_in_generator):
    source = _pixels(seed=3)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "mat_fast camera"
    meta = {"icc_profile": icc, "exif": exif.tobytes()}
    (tmp_path / "in.png").write_bytes(image16.encode(RGB16Image(source), "PNG", meta))
    image = load_image(tmp_path / "in.png", full_depth=True)
    assert isinstance(image, RGB16Image) and image.size == (W, H) and image.mode == "RGB;16"
    assert np.array_equal(image.pixels, source)
    hole = np.zeros((H, W), bool)
    hole[HOLE] = True
    result = Inpainter(stand_in_generator, device="cpu")(image, hole, seed=0)
    assert isinstance(result, RGB16Image)
    _check_result(result.pixels, source, hole)
    write_images([(result, tmp_path / "out.png", output_metadata(result))])
    written = Image.open(tmp_path / "out.png")  # Pillow reads the chunks we wrote
    assert written.info["icc_profile"] == icc
    assert written.getexif()[0x010F] == "mat_fast camera"
    assert np.array_equal(_read16(tmp_path / "out.png"), result.pixels)
    # a numpy uint16 array works alike and gives the same fill
    as_array = Inpainter(stand_in_generator, device="cpu")(source, hole, seed=0)
    assert np.array_equal(as_array, result.pixels)


#: Each EXIF orientation as numpy turns the stored pixels upright (independent of Pillow).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize(
    "suffix, orientation", [(".png", o) for o in UPRIGHT] + [(".tif", 2), (".tif", 6)]
)
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, suffix, orientation):
    source = _pixels(seed=4)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"in{suffix}"
    if suffix == ".png":
        path.write_bytes(image16.encode(RGB16Image(source), "PNG", {"exif": exif.tobytes()}))
    else:  # OpenCV writes no orientation tag (and turns TIFFs itself on reading); tifffile does
        tifffile = pytest.importorskip("tifffile")
        tags = [(274, "H", 1, orientation, True)]
        tifffile.imwrite(path, source, photometric="rgb", extratags=tags)
    deep = load_image(path, full_depth=True)
    assert isinstance(deep, RGB16Image)
    assert np.array_equal(deep.pixels, UPRIGHT[orientation](source))
    upright_8bit = np.asarray(load_image(path))  # Pillow keeps each sample's high byte
    assert np.array_equal(deep.pixels >> 8, upright_8bit)
    if orientation != 1:
        reread = Image.Exif()
        reread.load(output_metadata(deep)["exif"])
        assert reread.get(0x0112, 1) == 1  # viewers must not turn the upright pixels again


def test_jpeg_output_warns_and_is_8_bit(tmp_path, caplog):
    _write16(tmp_path / "photo.png", _pixels(seed=5))
    _mask(tmp_path / "mask.png")
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        assert main(["inpaint", str(tmp_path / "photo.png"), str(tmp_path / "mask.png")]
                    + ["-o", str(tmp_path / "out.jpg"), *TINY]) == 0  # fmt: skip
    assert "holds 8 bits per channel: the 16-bit result is reduced (use .png)" in caplog.text
    written = Image.open(tmp_path / "out.jpg")
    assert written.format == "JPEG" and written.mode == "RGB"


def test_without_opencv_16_bit_rgb_is_read_at_8_bits_with_a_warning(tmp_path, monkeypatch, caplog):
    source = _pixels(seed=6)
    _write16(tmp_path / "photo.png", source)
    hole = _mask(tmp_path / "mask.png")
    monkeypatch.setattr(image16, "_opencv", lambda: None)
    monkeypatch.setattr(image16, "_missing_said", False)
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        assert main(["inpaint", str(tmp_path / "photo.png"), str(tmp_path / "mask.png")]
                    + ["-o", str(tmp_path / "out.png"), *TINY]) == 0  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "16 bits" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "read at 8 bits" in lines[0] and "pip install 'mat_fast[hidepth]'" in lines[0]
    assert _png_depth(tmp_path / "out.png") == (8, 2)
    written = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(written[~hole], (source >> 8).astype(np.uint8)[~hole])
    with caplog.at_level(logging.WARNING, logger="mat_fast"):  # said once, not per file
        load_image(tmp_path / "photo.png", full_depth=True)
    assert sum("16 bits" in r.getMessage() for r in caplog.records) == 1
    # an RGB16Image handed to the writer without OpenCV: reduced, and said so
    warnings = storage_warnings(RGB16Image(source), tmp_path / "x.png")
    assert any("needs OpenCV" in w and "hidepth" in w for w in warnings)
    write_images([(RGB16Image(source), tmp_path / "x.png", {})])
    assert _png_depth(tmp_path / "x.png") == (8, 2)


def test_rgb16_image_takes_uint16_rgb_or_rgba_only():
    with pytest.raises(InputError, match="uint16"):
        RGB16Image(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="3 or 4 channels"):
        RGB16Image(np.zeros((4, 4, 2), np.uint16))
    assert RGB16Image(np.zeros((4, 5, 4), np.uint16)).mode == "RGBA;16"
    # as a mask: white from half of 65535, as for any 16-bit mask
    mask = np.zeros((4, 5, 3), np.uint16)
    mask[1, 2] = 32768
    mask[2, 3] = 32767
    hole = to_hole_mask(RGB16Image(mask), (4, 5))
    assert hole.sum() == 1 and hole[1, 2]


def test_storage_warnings_for_rgb16(tmp_path):
    rgb, rgba = RGB16Image(_pixels()), RGB16Image(_pixels(4))
    assert storage_warnings(rgb, tmp_path / "a.png", {"exif": b"x"}) == []
    assert storage_warnings(rgba, tmp_path / "a.tif") == []
    assert any("8 bits" in w for w in storage_warnings(rgb, tmp_path / "a.webp"))
    assert any("alpha" in w for w in storage_warnings(rgba, tmp_path / "a.jpg"))
    assert any("EXIF" in w for w in storage_warnings(rgb, tmp_path / "a.tif", {"exif": b"x"}))


def test_16_bit_tiff_output_marks_alpha_and_keeps_the_icc_profile(tmp_path, monkeypatch):
    pytest.importorskip("tifffile")
    rgba = RGB16Image(_pixels(4, seed=9))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert storage_warnings(rgba, tmp_path / "a.tif", {"icc_profile": icc}) == []
    write_images([(rgba, tmp_path / "a.tif", {"icc_profile": icc})])
    assert np.array_equal(_read16(tmp_path / "a.tif"), rgba.pixels)
    written = Image.open(tmp_path / "a.tif")
    assert written.tag_v2[258] == (16, 16, 16, 16) and written.tag_v2[338] == (2,)  # alpha
    assert written.info["icc_profile"] == icc
    # without tifffile OpenCV writes it: still 16 bits, the ICC profile dropped and said so
    monkeypatch.setattr(image16, "_tifffile", lambda: None)
    warnings = storage_warnings(rgba, tmp_path / "b.tif", {"icc_profile": icc})
    assert warnings == [".tif at 16 bits is written without ICC data (use .png)"]
    write_images([(rgba, tmp_path / "b.tif", {"icc_profile": icc})])
    assert np.array_equal(_read16(tmp_path / "b.tif"), rgba.pixels)


def test_8_bit_and_16_bit_grey_files_keep_their_pil_path(tmp_path, stand_in_generator):
    eight = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / "rgb8.png")
    loaded = load_image(tmp_path / "rgb8.png", full_depth=True)
    assert isinstance(loaded, Image.Image) and np.array_equal(np.asarray(loaded), eight)
    grey = _pixels(seed=8)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert _png_depth(tmp_path / "grey16.png") == (16, 0)
    image = load_image(tmp_path / "grey16.png", full_depth=True)
    hole = np.zeros((H, W), bool)
    hole[HOLE] = True
    result = Inpainter(stand_in_generator, device="cpu")(image, hole, seed=0)
    assert result.mode == image.mode
    write_images([(result, tmp_path / "out.png", {})])
    assert _png_depth(tmp_path / "out.png") == (16, 0)
    written = np.asarray(Image.open(tmp_path / "out.png")).astype(np.uint16)
    assert np.array_equal(written[~hole], grey[~hole])
    assert not np.array_equal(written[hole], grey[hole])
