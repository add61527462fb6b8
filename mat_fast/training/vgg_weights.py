"""Where the perceptual loss's VGG19 weights come from: torchvision's published ImageNet file,
downloaded once into a cache and checked, or a file the user names, or none (a random VGG).

Never a silent fallback: when the weights cannot be had, one :class:`VGGWeightsError` says
what went wrong, how to get the file and how to pass its path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch

from .. import settings
from ..checkpoints import CheckpointError, read_state_dict
from .vgg import PerceptualLoss, torchvision_to_pcp_keys

log = logging.getLogger("mat_fast")

#: ``vgg_weights=`` value meaning "torchvision's ImageNet VGG19, downloaded on first use".
TORCHVISION_VGG19 = "torchvision"
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FILE = "vgg19-dcbb9e9d.pth"
# torchvision names its files after the first hex digits of their SHA-256 and checks only
# those (torch.hub's check_hash); we check the same prefix of the file's SHA-256.
VGG19_SHA256_PREFIX = "dcbb9e9d"

VggWeights = Union[str, os.PathLike, Mapping, None]


class VGGWeightsError(RuntimeError):
    """The perceptual loss's VGG19 weights could not be found, downloaded or read."""


def _how_to_get() -> str:
    return (
        f"Download {VGG19_URL} on a machine with internet access, then pass its path "
        f"(TwoStageLoss(..., vgg_weights='/path/to/{VGG19_FILE}')) or copy it to "
        f"{vgg_cache_dir() / VGG19_FILE}; vgg_weights=None gives a random VGG (tests only: "
        f"the perceptual loss is then meaningless)."
    )


def vgg_cache_dir() -> Path:
    """``$MAT_FAST_CACHE/vgg``, else ``$XDG_CACHE_HOME/mat_fast/vgg``, else
    ``~/.cache/mat_fast/vgg`` (beside the native extension's ``ext`` cache)."""
    return settings.cache_root("vgg")


def file_sha256(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` into ``dst`` (torch's downloader: progress bar, partial file removed)."""
    torch.hub.download_url_to_file(url, str(dst), progress=True)


def _check_digest(path: Path, what: str) -> None:
    digest = file_sha256(path)
    if not digest.startswith(VGG19_SHA256_PREFIX):
        raise VGGWeightsError(
            f"{what} {path} is not torchvision's VGG19 file: its SHA-256 is {digest}, "
            f"expected one starting with {VGG19_SHA256_PREFIX} (corrupt or truncated). "
            f"Delete it to download it again. {_how_to_get()}"
        )


def cached_vgg19_file() -> Path:
    """The checked path of torchvision's VGG19 file in the cache, downloaded if absent."""
    path = vgg_cache_dir() / VGG19_FILE
    if path.is_file():
        _check_digest(path, "the cached VGG19 weights")
        return path
    log.info("mat_fast: downloading the perceptual loss's VGG19 weights to %s", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VGGWeightsError(
            f"cannot create the cache folder {path.parent}: {err}. "
            f"Set MAT_FAST_CACHE to a writable folder. {_how_to_get()}"
        ) from err
    # Downloaded beside its final name and renamed once checked: a crash or a concurrent
    # process never leaves a half-written or unchecked file under the final name.
    partial = path.with_name(f".{VGG19_FILE}.{uuid.uuid4().hex}.part")
    try:
        _download(VGG19_URL, partial)
        _check_digest(partial, "the downloaded VGG19 weights")
        os.replace(partial, path)
    except VGGWeightsError:
        raise
    except Exception as err:  # no network, proxy refusal, disk full, ...
        detail = " ".join(str(err).split())[:200]
        raise VGGWeightsError(
            f"could not download the VGG19 weights from {VGG19_URL} "
            f"({type(err).__name__}: {detail}). {_how_to_get()}"
        ) from err
    finally:
        if partial.exists():
            partial.unlink()
    return path


def _read(source, what: str) -> Mapping:
    try:
        return read_state_dict(source)
    except CheckpointError as err:
        raise VGGWeightsError(f"{what}: {err} {_how_to_get()}") from None


def load_vgg_weights(pcp: PerceptualLoss, vgg_weights: VggWeights) -> None:
    """Load ``vgg_weights`` into ``pcp``: :data:`TORCHVISION_VGG19` (the cached/downloaded
    ImageNet file), a path or a state dict, in torchvision's layout (``features.N.*``) or
    upstream's PerceptualLoss layout (``vgg.vgg_net.conv1_1.*``); ``None`` keeps the random
    VGG ``pcp`` was built with."""
    if vgg_weights is None:
        log.info("mat_fast: TwoStageLoss uses a random VGG19 (vgg_weights=None)")
        return
    if isinstance(vgg_weights, str) and vgg_weights == TORCHVISION_VGG19:
        path = cached_vgg19_file()
        state, what = _read(path, str(path)), str(path)
    elif isinstance(vgg_weights, (str, os.PathLike)):
        path = Path(vgg_weights).expanduser()
        if not path.is_file():
            raise VGGWeightsError(f"vgg_weights: no such file {path}. {_how_to_get()}")
        state, what = _read(path, str(path)), str(path)
    elif isinstance(vgg_weights, Mapping):
        state, what = _read(vgg_weights, "vgg_weights"), "the vgg_weights state dict"
    else:
        raise TypeError(
            f"vgg_weights must be {TORCHVISION_VGG19!r}, a path, a state dict or None; "
            f"got {type(vgg_weights).__name__}"
        )
    convs = {k: v for k, v in pcp.state_dict().items() if ".vgg_net." in k}
    if any(k.startswith("features.") for k in state):
        state = torchvision_to_pcp_keys(state, set(pcp.vgg.vgg_net._modules))
    missing = sorted(set(convs) - set(state))
    if missing:
        raise VGGWeightsError(
            f"{what} lacks VGG19 weights {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}; it is not a VGG19 state dict. {_how_to_get()}"
        )
    for key, ref in convs.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise VGGWeightsError(
                f"{what}: {key} has shape {tuple(state[key].shape)}, VGG19's is "
                f"{tuple(ref.shape)}; it is not a VGG19 state dict. {_how_to_get()}"
            )
    pcp.load_state_dict({k: state[k] for k in convs}, strict=False)
