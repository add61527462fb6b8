"""Images and masks in, images out: every format a user may hand us, and back.

Inputs become a float32 RGB array in [0, 1] (H, W, 3) for the network, while the original
pixels are kept so that the result has the input's type, mode, dtype and size, and every
known pixel is returned bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import image16
from .errors import InputError
from .image16 import RGB16Image

# ITU-R 601 luma, what PIL uses for RGB -> L: fills of grayscale images use it.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class ImageData:
    """One input image: the network's view (``rgb``) and what is needed to give it back."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    original: np.ndarray  # (H, W, C) in the input's dtype; C in {1, 2, 3, 4}
    kind: str  # 'pil', 'numpy' or 'tensor'
    scale: float  # value of white in ``original`` (255, 65535 or 1.0)
    has_alpha: bool
    pil_mode: Optional[str] = None
    squeeze: bool = False  # numpy/tensor input was (H, W)
    tensor_like: Optional[torch.Tensor] = None  # tensor input: dtype/device/layout (C, H, W)
    info: Optional[dict] = None  # RGB16Image input: its metadata, given back with the result

    @property
    def size(self):
        return self.original.shape[:2]


@contextlib.contextmanager
def _no_bomb_check():
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_image(
    path: str | os.PathLike, max_pixels: Optional[int] = None, *, full_depth: bool = False
):
    """Open an image file fully (so errors surface here) with a clear error, turned upright
    as viewers show it (EXIF orientation applied: phone photos are often stored sideways,
    and a mask is drawn on the picture people see). Files with more than ``max_pixels``
    pixels (default: Pillow's decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``) are
    refused with an error instead of Pillow's warning.

    Returns a PIL image; with ``full_depth``, a 16-bit RGB(A) PNG or TIFF (which Pillow
    reads at 8 bits) comes back as a :class:`RGB16Image` instead, when OpenCV is installed
    (else it is read at 8 bits with a warning: see :mod:`mat_fast.image16`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"image file not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; pass an image file (or use --input-dir)")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with _no_bomb_check():  # checked below, with an error that says what to do
            opened = Image.open(path)
        with opened as im:
            if limit is not None and im.size[0] * im.size[1] > limit:
                w, h = im.size
                raise InputError(
                    f"{path} is {w}x{h} ({w * h / 1e6:.1f} Mpx), more than the limit of "
                    f"{limit / 1e6:.1f} Mpx that guards against decompression bombs; if you "
                    f"trust the file, raise the limit (--max-pixels {w * h})"
                )
            if full_depth and image16.is_rgb16_file(path, im):
                deep = image16.read(path, im)
                if deep is not None:
                    return deep
            return upright(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(
            f"cannot read {path} as an image ({err}); use PNG, JPEG, WebP, TIFF or BMP"
        ) from None


def mask_size_error(image_path, image_size, mask_path, mask_size) -> str:
    """The message for a mask whose size (width, height) is not its image's."""
    return (
        f"{mask_path} is {mask_size[0]}x{mask_size[1]} but {image_path} is "
        f"{image_size[0]}x{image_size[1]}; a mask must have its image's size"
    )


def upright(im: Image.Image) -> Image.Image:
    """An opened image loaded fully, turned upright (EXIF orientation) and with palettes
    expanded: what :func:`load_image` returns, for images opened from memory too."""
    im.load()
    im = ImageOps.exif_transpose(im)  # a copy, upright (unchanged without EXIF)
    return im if im.mode != "P" else im.convert("RGBA" if "transparency" in im.info else "RGB")


def _pil_to_array(im: Image.Image):
    """(array (H, W, C), scale, pil_mode) for the PIL modes we keep as they are."""
    mode = im.mode
    if mode in ("1", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA", "La", "RGBa", "RGBX"):
        keep = "RGBA" if ("A" in mode or "a" in mode or "transparency" in im.info) else "RGB"
        im, mode = im.convert(keep), keep
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im), 255.0, mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 65535.0, mode
    if mode == "I":  # 32-bit ints: PNG stores 16-bit grayscale this way
        arr = np.asarray(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InputError("32-bit integer images must hold values in [0, 65535]")
        return arr.astype(np.uint16), 65535.0, mode
    if mode == "F":
        arr = np.asarray(im).astype(np.float32)
        return arr, _array_scale(arr, "image"), mode  # the [0, 1] check of float arrays
    raise InputError(f"unsupported image mode {mode!r}; convert it to RGB first")


def _array_scale(arr: np.ndarray, what: str) -> float:
    if arr.dtype == np.uint8:
        return 255.0
    if arr.dtype == np.uint16:
        return 65535.0
    if arr.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(arr).all():
            raise InputError(f"{what} contains NaN or Inf values; replace them before inpainting")
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise InputError(
                f"float {what} must hold values in [0, 1]; got [{arr.min():.3g}, {arr.max():.3g}]"
            )
        return 1.0
    raise InputError(f"unsupported {what} dtype {arr.dtype}; pass uint8, uint16 or float in [0, 1]")


def _check_hw(arr: np.ndarray, what: str) -> None:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise InputError(
            f"{what} must be (H, W) or (H, W, C) with C in 1..4; got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what} is empty ({arr.shape[0]}x{arr.shape[1]} pixels)")


def _tensor_to_hwc(t: torch.Tensor, what: str) -> np.ndarray:
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 3 and t.shape[0] in (1, 2, 3, 4):
        t = t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise InputError(
            f"{what} tensor must be (C, H, W), (1, C, H, W) or (H, W); got {tuple(t.shape)}"
        )
    if t.dtype not in (
        torch.bool,
        torch.uint8,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    ):
        raise InputError(
            f"unsupported {what} tensor dtype {t.dtype}; pass uint8 or float in [0, 1]"
        )
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.contiguous().numpy()


def to_image_data(image: Any) -> ImageData:
    """Accept PIL images, 16-bit RGB(A) images (:class:`RGB16Image`), numpy arrays
    ((H, W[, C]) uint8/uint16/float in [0, 1]) and torch tensors ((C, H, W) uint8 or float
    in [0, 1])."""
    pil_mode, squeeze, tensor_like, info = None, False, None, None
    if isinstance(image, RGB16Image):
        kind, arr, scale, info = "rgb16", image.pixels, 65535.0, image.info
    elif isinstance(image, Image.Image):
        kind = "pil"
        arr, scale, pil_mode = _pil_to_array(image)
    elif isinstance(image, np.ndarray):
        kind, arr = "numpy", image
        scale = _array_scale(arr, "image")
    elif torch.is_tensor(image):
        kind, arr, tensor_like = "tensor", _tensor_to_hwc(image, "image"), image
        scale = _array_scale(arr, "image")
    else:
        raise InputError(
            f"image must be a PIL image, numpy array or torch tensor; got {type(image).__name__}"
        )
    _check_hw(arr, "image")
    if arr.ndim == 2:
        arr, squeeze = arr[:, :, None], True
    channels = arr.shape[2]
    has_alpha = channels in (2, 4)
    color = arr[:, :, : channels - 1] if has_alpha else arr
    rgb = color.astype(np.float32) / np.float32(scale)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return ImageData(
        np.ascontiguousarray(rgb), arr, kind, scale, has_alpha, pil_mode, squeeze, tensor_like, info
    )


def to_hole_mask(mask: Any, size, convention: str = "fill", threshold: float = 0.5) -> np.ndarray:
    """Boolean (H, W) array, True where the image must be filled.

    A mask pixel is *white* when its value is at least ``threshold`` of the full range
    (255 for 8 bits, 65535 for 16 bits, 1 for floats and booleans; default half of it,
    so faint noise and JPEG ringing do not count); in a colour mask the brightest channel
    counts. ``convention='fill'`` (inpainting apps): white = fill. ``'keep'`` (upstream
    MAT): black = fill. A mask with alpha (LA, RGBA) paints only where it is opaque
    (alpha at or above the same threshold): transparent pixels are kept; a mask whose
    colour is black everywhere paints with its alpha alone.
    """
    if convention not in ("fill", "keep"):
        raise InputError(
            f"mask convention must be 'fill' (white = fill) or 'keep' (black = hole); got {convention!r}"
        )
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise InputError(
            f"mask threshold must be a fraction of the full range in (0, 1]; got {threshold!r}"
        )
    if isinstance(mask, RGB16Image):
        arr = mask.pixels
    elif isinstance(mask, Image.Image):
        arr = _pil_to_array(mask)[0]
    elif isinstance(mask, np.ndarray):
        arr = mask
    elif torch.is_tensor(mask):
        arr = _tensor_to_hwc(mask, "mask")
    else:
        raise InputError(
            f"mask must be a PIL image, numpy array or torch tensor; got {type(mask).__name__}"
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
        white_level = 1.0
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError("mask contains NaN or Inf values")
        white_level = 1.0
    elif arr.dtype == np.uint8:
        white_level = 255.0
    elif arr.dtype.kind in "ui":
        white_level = 65535.0
    else:
        raise InputError(f"unsupported mask dtype {arr.dtype}; pass uint8, uint16, bool or float")
    _check_hw(arr, "mask")
    if tuple(arr.shape[:2]) != tuple(size):
        raise InputError(
            f"mask is {arr.shape[1]}x{arr.shape[0]} (WxH) but the image is {size[1]}x{size[0]}; "
            f"masks must have the image's size"
        )
    level = threshold * white_level
    opaque = None
    if arr.ndim == 3:
        channels = arr.shape[2]
        if channels in (2, 4):
            opaque = arr[:, :, -1] >= level
            arr = arr[:, :, : channels - 1]
        arr = arr.max(axis=2)
    white = arr >= level
    if opaque is None:
        return white if convention == "fill" else ~white
    if convention == "fill":
        return opaque & white if white.any() else opaque
    return opaque & ~white


def compose(data: ImageData, filled_rgb: np.ndarray, hole: np.ndarray):
    """Result in the input's type: generated pixels where ``hole``, the original elsewhere."""
    out = data.original.copy()
    channels = out.shape[2]
    color_channels = channels - 1 if data.has_alpha else channels
    fill = np.clip(filled_rgb[hole], 0.0, 1.0)  # (n, 3)
    if color_channels == 1:
        fill = fill @ _LUMA[:, None]
    fill = fill * np.float32(data.scale)
    if np.issubdtype(out.dtype, np.integer):
        fill = np.rint(fill)
    out[hole, :color_channels] = fill.astype(out.dtype)

    if data.kind == "rgb16":
        return RGB16Image(out, dict(data.info or {}))
    if data.kind == "pil":
        arr = out[:, :, 0] if channels == 1 else out
        if data.pil_mode == "I":  # read as uint16, PIL wants int32 back
            arr = arr.astype(np.int32)
        return Image.fromarray(arr)
    if data.squeeze:
        out = out[:, :, 0]
    if data.kind == "numpy":
        return out
    t = torch.from_numpy(np.ascontiguousarray(out if out.ndim == 2 else out.transpose(2, 0, 1)))
    like = data.tensor_like
    if like.ndim == 4:
        t = t[None]
    return t.to(dtype=like.dtype, device=like.device)


#: Formats that hold only 8 bits per channel.
_EIGHT_BIT_FORMATS = ("JPEG", "BMP", "WEBP", "GIF")


def _storable(fmt: str, image: Image.Image) -> Image.Image:
    """``image`` as ``fmt`` can store it. PIL's own conversion of 16-bit and float images
    to 8 bits clips instead of scaling (most pixels turn white), so scale here; PNG takes
    float images as 16-bit."""
    mode = image.mode
    if fmt == "PNG" and mode == "F":
        arr = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(arr * 65535.0), 0, 65535).astype(np.uint16))
    if fmt not in _EIGHT_BIT_FORMATS:
        return image
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image).astype(np.float64)
        scale = 255.0 if mode == "F" else 255.0 / 65535.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))  # L
    if mode in ("RGB", "L") or (fmt != "JPEG" and mode in ("RGBA", "LA")):
        return image
    return image.convert("RGB")  # JPEG has no alpha; other modes as RGB


def eight_bit_rgb(image) -> Image.Image:
    """An RGB picture of ``image`` for display (16-bit and float images scaled, not clipped)."""
    if isinstance(image, RGB16Image):
        image = image.to_8bit()
    return _storable("JPEG", image).convert("RGB")


def _output_format(path: str | os.PathLike) -> Optional[str]:
    """PIL's format name for ``path``'s extension, or None if PIL cannot write it."""
    return Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower())


def output_extension_error(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be written as an image (by its extension), or None."""
    if _output_format(path) is None:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        return (
            f"unknown output image extension {ext!r} in {os.fspath(path)}; use .png, .jpg, "
            f".webp, .tif or .bmp"
        )
    return None


#: What each format can keep besides 8-bit pixels (PIL format name -> features).
_RGB16_FORMATS = ("PNG", "TIFF")  # 16-bit RGB(A), written with OpenCV
_ALPHA_FORMATS = ("PNG", "WEBP", "TIFF", "GIF")
_METADATA_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF")


def output_metadata(image) -> dict:
    """EXIF and ICC profile of a loaded image, to write with its result: the EXIF's
    orientation is reset to 'upright', since :func:`load_image` stored the pixels upright."""
    if isinstance(image, RGB16Image):  # read with its orientation reset already
        return {k: v for k, v in image.info.items() if k in ("exif", "icc_profile") and v}
    return image16.upright_metadata(image)


def _written_at_16_bits(image, fmt: str) -> bool:
    """Whether a :class:`RGB16Image` is written to ``fmt`` at full depth here."""
    return fmt in _RGB16_FORMATS and image16.available()


def storage_warnings(image, path: str | os.PathLike, metadata=()) -> list:
    """What writing ``image`` to ``path`` would lose, one sentence each."""
    path = os.fspath(path)
    fmt, lost = _output_format(path), []
    if fmt is None:
        return lost
    name = os.path.splitext(path)[1] or fmt
    deep = isinstance(image, RGB16Image)
    if ("A" in image.mode or "transparency" in image.info) and fmt not in _ALPHA_FORMATS:
        lost.append(f"{name} has no alpha channel: the transparency is dropped (use .png)")
    if deep and fmt in _RGB16_FORMATS and not image16.available():
        lost.append(
            f"writing 16-bit RGB as {name} needs OpenCV: the result is reduced to 8 bits "
            f"({image16.INSTALL_HINT})"
        )
    elif ((image.mode.startswith("I") or image.mode == "F") and fmt in _EIGHT_BIT_FORMATS) or (
        deep and not _written_at_16_bits(image, fmt)
    ):
        lost.append(f"{name} holds 8 bits per channel: the 16-bit result is reduced (use .png)")
    if metadata and deep and fmt == "TIFF" and _written_at_16_bits(image, fmt):
        dropped = image16.tiff_drops(metadata)
        if dropped:
            lost.append(
                f"{name} at 16 bits is written without {' or '.join(dropped)} data (use .png)"
            )
    elif metadata and fmt not in _METADATA_FORMATS:
        lost.append(f"{name} cannot hold EXIF or ICC data: the input's are dropped (use .png)")
    return lost


def _save_options(fmt: str, quality: Optional[int]) -> dict:
    if fmt == "JPEG":  # Pillow's default is 75 with 4:2:0 chroma: visibly blurred colour edges
        return dict(quality=95 if quality is None else quality, subsampling=0)
    if fmt == "WEBP":
        return dict(lossless=True) if quality is None else dict(quality=quality)
    if fmt == "TIFF":
        return dict(compression="tiff_lzw")
    return {}


def _encode(image, target, fmt: str, metadata, quality: Optional[int]) -> None:
    if isinstance(image, RGB16Image):
        if _written_at_16_bits(image, fmt):
            image16.write(image, target, fmt, metadata)
            return
        image = image.to_8bit()  # storage_warnings says so
    options = _save_options(fmt, quality)
    if fmt in _METADATA_FORMATS:
        options.update({k: v for k, v in (metadata or {}).items() if v})
    _storable(fmt, image).save(target, format=fmt, **options)


def image_bytes(image, fmt: str = "PNG", metadata=None, quality: Optional[int] = None) -> bytes:
    """``image`` encoded in memory as ``fmt``, as :func:`write_images` would write it to a
    file (same conversions, quality rules and kept EXIF/ICC ``metadata``)."""
    buffer = io.BytesIO()
    _encode(image, buffer, fmt, metadata, quality)
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | os.PathLike, **options) -> None:
    """Save one image atomically; see :func:`write_images`."""
    write_images([(image, path, options.pop("metadata", None) or {})], **options)


def write_images(items, quality: Optional[int] = None) -> None:
    """Write ``(image, path, metadata)`` items (metadata: ``exif``/``icc_profile`` bytes,
    kept where the format can hold them) all or none: each goes to a temporary file next to
    its target first, and only when all are written are they renamed into place, so a
    failed write leaves nothing half-written. JPEG is written at quality 95 without chroma
    subsampling, WebP losslessly, unless ``quality`` is given; PNG and TIFF are lossless."""
    temps = []
    try:
        for image, path, metadata in items:
            path = os.fspath(path)
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise InputError(f"output folder does not exist: {directory}")
            fmt = _output_format(path)
            if fmt is None:
                raise InputError(output_extension_error(path))
            tmp = os.path.join(directory, f".{os.path.basename(path)}.partial-{os.getpid()}")
            temps.append(tmp)
            try:
                _encode(image, tmp, fmt, metadata, quality)
            except OSError as err:
                raise InputError(
                    f"cannot write {path}: {err.strerror or err}; choose another output path"
                ) from None
        for tmp, (_, path, _) in zip(temps, items):
            os.replace(tmp, os.fspath(path))
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
