"""16-bit-per-channel RGB and RGBA pictures, which Pillow has no mode for.

Pillow opens a 16-bit RGB(A) PNG or TIFF as 8-bit RGB(A), keeping the high byte of each
sample. To keep such files at full depth they are decoded (and written as PNG) with OpenCV
and written as TIFF with tifffile (``pip install 'mat_fast[hidepth]'``: the optional
``opencv-python-headless`` and ``tifffile``), used for these files only; everything else
still goes through Pillow. Without OpenCV they are reduced to 8 bits as before, with a
one-line warning that says so.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

log = logging.getLogger("mat_fast")

INSTALL_HINT = "pip install 'mat_fast[hidepth]'"
_missing_said = False  # whether the missing-OpenCV warning was given in this process

#: What Pillow's ImageOps.exif_transpose does for each EXIF orientation value.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class RGB16Image:
    """A 16-bit RGB or RGBA picture: ``pixels`` (H, W, 3 or 4) uint16 in RGB(A) order, and
    ``info`` with the file's ``exif`` (orientation reset to upright) and ``icc_profile``
    bytes. ``size`` and ``mode`` read like a PIL image's. The Inpainter takes it and returns
    one, with the same ``info``."""

    pixels: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        p = self.pixels
        if not (isinstance(p, np.ndarray) and p.dtype == np.uint16 and p.ndim == 3):
            raise InputError("RGB16Image pixels must be a uint16 array (H, W, 3 or 4)")
        if p.shape[2] not in (3, 4):
            raise InputError(f"RGB16Image pixels must have 3 or 4 channels; got {p.shape[2]}")

    @property
    def size(self):
        """(width, height), as PIL's ``Image.size``."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def mode(self) -> str:
        return "RGBA;16" if self.pixels.shape[2] == 4 else "RGB;16"

    def to_8bit(self) -> Image.Image:
        """The picture as a PIL RGB(A) image, each sample scaled (rounded) to 8 bits."""
        scaled = np.rint(self.pixels.astype(np.float32) * np.float32(255.0 / 65535.0))
        return Image.fromarray(scaled.astype(np.uint8))


def _opencv():
    """The cv2 module, or None when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _tifffile():
    """The tifffile module, or None when it is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    return tifffile


def tiff_drops(metadata) -> list:
    """What of ``metadata`` a 16-bit TIFF written here leaves out: its EXIF (no EXIF IFD is
    written), and its ICC profile too where tifffile is missing (OpenCV writes the TIFF)."""
    dropped = ["EXIF"] if (metadata or {}).get("exif") else []
    if (metadata or {}).get("icc_profile") and _tifffile() is None:
        dropped.append("ICC")
    return dropped


def available() -> bool:
    """Whether 16-bit RGB files can be read and written at full depth here."""
    return _opencv() is not None


def is_rgb16_file(path: str, im: Image.Image) -> bool:
    """Whether the file ``im`` was opened from holds 16-bit RGB or RGBA samples."""
    if im.format == "PNG":
        with open(path, "rb") as f:  # IHDR comes first: bit depth at 24, colour type at 25
            header = f.read(26)
        return len(header) == 26 and header[24] == 16 and header[25] in (2, 6)
    if im.format == "TIFF" and im.mode in ("RGB", "RGBA"):
        tags = im.tag_v2
        bits = tags.get(258, ())
        bits = bits if isinstance(bits, tuple) else (bits,)
        unsigned = tags.get(339, 1) in (1, (1,) * len(bits))
        return bool(bits) and all(b == 16 for b in bits) and tags.get(262) == 2 and unsigned
    return False


def upright_metadata(im: Image.Image) -> dict:
    """EXIF (orientation reset, as the pixels are stored upright) and ICC of an opened file
    (every loader's rule: image_io.output_metadata uses it for PIL images too)."""
    info = {}
    exif = im.getexif()
    if len(exif):
        if 0x0112 in exif:
            exif[0x0112] = 1
        info["exif"] = exif.tobytes()
    if im.info.get("icc_profile"):
        info["icc_profile"] = im.info["icc_profile"]
    return info


def _turned(pixels: np.ndarray, method) -> np.ndarray:
    """``pixels`` turned by a PIL transpose ``method``, each channel as a 16-bit grey image."""
    channels = [Image.fromarray(np.ascontiguousarray(c)) for c in np.moveaxis(pixels, 2, 0)]
    return np.stack([np.asarray(c.transpose(method)) for c in channels], axis=2)


def _same_picture(pixels: np.ndarray, eight_bit: np.ndarray) -> bool:
    """Whether 16-bit ``pixels`` reduce to ``eight_bit`` within one level: Pillow keeps the
    high byte (seen for PNG and plain, LZW and deflate TIFF); the level of slack covers a
    reduction that rounds instead. A turned or reordered picture is far off."""
    difference = (pixels >> 8).astype(np.int16) - eight_bit.astype(np.int16)
    return bool(np.abs(difference).max(initial=0) <= 1)


def read(path: str, im: Image.Image) -> Optional[RGB16Image]:
    """The 16-bit RGB(A) file ``path`` (opened as ``im``) at full depth and upright (EXIF
    orientation applied), or None with a one-line warning (then Pillow's 8-bit view is used).

    OpenCV turns some files by their orientation itself (TIFF) and not others (PNG), so the
    decoded samples are checked against Pillow's upright 8-bit view (:func:`_same_picture`):
    that also guards channel order and size."""
    cv2 = _opencv()
    if cv2 is None:
        global _missing_said
        if not _missing_said:  # once per process: a folder of such files gives one line
            _missing_said = True
            log.warning(
                "mat_fast: %s has 16 bits per channel but is read at 8 bits, as are other "
                "such files (reading them at full depth needs OpenCV: %s)",
                path,
                INSTALL_HINT,
            )
        return None
    method = _UPRIGHT.get(im.getexif().get(0x0112))  # before loading (TIFF forgets it then)
    decoded = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    high_bytes = np.asarray(ImageOps.exif_transpose(im))  # decodes im at 8 bits
    if decoded is not None and decoded.dtype == np.uint16 and decoded.ndim == 3:
        order = [2, 1, 0, 3] if decoded.shape[2] == 4 else [2, 1, 0]  # OpenCV's BGR(A)
        pixels = decoded[:, :, order]
        turned = [] if method is None else [_turned(pixels, method)]  # FLIP_LEFT_RIGHT is 0
        for candidate in turned + [pixels]:
            if candidate.shape == high_bytes.shape and _same_picture(candidate, high_bytes):
                return RGB16Image(np.ascontiguousarray(candidate), upright_metadata(im))
    log.warning("mat_fast: OpenCV cannot read %s at 16 bits; it is read at 8 bits", path)
    return None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_png_metadata(png: bytes, metadata: dict) -> bytes:
    """``png`` with the ICC profile (iCCP) and EXIF (eXIf) chunks right after its IHDR."""
    chunks = b""
    if metadata.get("icc_profile"):
        chunks += _png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(metadata["icc_profile"]))
    exif = metadata.get("exif")
    if exif:
        chunks += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif)
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length and type, IHDR data, CRC
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _tiff_bytes(tifffile, image: RGB16Image, metadata: dict) -> bytes:
    """A deflate-compressed 16-bit TIFF with its alpha marked as such and the ICC profile."""
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        image.pixels,
        photometric="rgb",
        extrasamples=["unassalpha"] if image.pixels.shape[2] == 4 else None,
        compression="zlib",
        iccprofile=metadata.get("icc_profile") or None,
    )
    return buffer.getvalue()


def encode(image: RGB16Image, fmt: str, metadata: Optional[dict] = None) -> bytes:
    """``image`` as a 16-bit PNG (with ``metadata``'s EXIF and ICC) or TIFF (what it keeps:
    :func:`tiff_drops`). Needs OpenCV: see :func:`available`."""
    tifffile = _tifffile() if fmt == "TIFF" else None
    if tifffile is not None:
        return _tiff_bytes(tifffile, image, metadata or {})
    cv2 = _opencv()
    if cv2 is None:
        raise RuntimeError(f"writing 16-bit RGB needs OpenCV ({INSTALL_HINT})")
    order = [2, 1, 0, 3] if image.pixels.shape[2] == 4 else [2, 1, 0]
    bgr = np.ascontiguousarray(image.pixels[:, :, order])
    ok, buffer = cv2.imencode(".png" if fmt == "PNG" else ".tiff", bgr)
    if not ok:
        raise OSError(f"OpenCV could not encode a {fmt} image")
    data = buffer.tobytes()
    return _with_png_metadata(data, metadata or {}) if fmt == "PNG" else data


def write(image: RGB16Image, target, fmt: str, metadata: Optional[dict] = None) -> None:
    """Write :func:`encode`'s bytes to a path or a binary file object."""
    data = encode(image, fmt, metadata)
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as f:
            f.write(data)
    else:
        target.write(data)
