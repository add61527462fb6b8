"""The metric networks' weight files: found, downloaded once into a cache, and verified.

Each file is looked for, in order, at an explicit path (a CLI flag), in mat_fast's cache
(``$MAT_FAST_CACHE/metrics``, else ``$XDG_CACHE_HOME/mat_fast/metrics``, else
``~/.cache/mat_fast/metrics``) and in places other tools keep the same file; else it is
downloaded into the cache (to a temporary name, renamed once complete and verified).

Verification: a file whose full SHA-256 is pinned here must match it. torchvision's AlexNet
is pinned the way torchvision itself checks it, by the digest prefix in its name. The
Inception detector's digest is not pinned (no machine of this project could download it
yet): on download its digest is recorded beside it (``<file>.sha256``) and every later use
checks the cached file against that record, so a damaged cache is still caught. Each file
must also load as the network it claims to be (the loaders check that).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

from .. import settings


class WeightsError(ValueError):
    """A metric weight file is missing, corrupt or not the expected one (the message says
    which, and how to fix it)."""


@dataclass(frozen=True)
class WeightsFile:
    what: str  # for messages, e.g. "the Inception feature detector"
    filename: str
    url: str
    flag: str  # the CLI flag that takes a local copy
    sha256: Optional[str] = None  # the full digest, when pinned
    sha256_prefix: str = ""  # a digest prefix every good copy has
    # other tools' copies: (folder key of _known_folders(), path inside it)
    elsewhere: Sequence[Tuple[str, str]] = field(default_factory=tuple)


INCEPTION = WeightsFile(
    what="the StyleGAN2-ADA Inception feature detector (inception-2015-12-05, TorchScript)",
    filename="inception-2015-12-05.pt",
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
    "inception-2015-12-05.pt",
    flag="--detector",
)
ALEXNET = WeightsFile(
    what="torchvision's ImageNet AlexNet weights (the LPIPS trunk)",
    filename="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    flag="--alexnet",
    sha256_prefix="7be5be79",
    elsewhere=(("torch_home", "hub/checkpoints/alexnet-owt-7be5be79.pth"),),
)
LPIPS_ALEX_LINEAR = WeightsFile(
    what="the lpips package's v0.1 AlexNet linear layers",
    filename="lpips-v0.1-alex.pth",
    url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
    flag="--lpips-weights",
    # lpips 0.1.4's lpips/weights/v0.1/alex.pth (6,009 bytes)
    sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    elsewhere=(("lpips_package", "weights/v0.1/alex.pth"),),
)

_CHUNK = 1 << 20


def cache_dir() -> Path:
    return settings.cache_root("metrics")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _known_folders() -> dict:
    import importlib.util

    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    lpips_package = ""
    try:  # where the lpips package lies, without importing it (it imports torchvision)
        spec = importlib.util.find_spec("lpips")
        if spec is not None and spec.submodule_search_locations:
            lpips_package = list(spec.submodule_search_locations)[0]
    except (ImportError, ValueError):
        pass
    return {"torch_home": torch_home, "lpips_package": lpips_package}


def _expected_digest_error(spec: WeightsFile, path: Path, digest: str) -> Optional[str]:
    if spec.sha256 and digest != spec.sha256:
        return f"its SHA-256 is {digest}, expected {spec.sha256}"
    if spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
        return f"its SHA-256 is {digest}, expected one starting {spec.sha256_prefix}"
    record = Path(f"{path}.sha256")
    if not (spec.sha256 or spec.sha256_prefix) and record.is_file():
        recorded = record.read_text().split()[0] if record.read_text().split() else ""
        if digest != recorded:
            return f"its SHA-256 is {digest}, but {recorded or 'nothing'} was recorded at download"
    return None


def verify(spec: WeightsFile, path: Path, *, fix_hint: str) -> Path:
    """``path`` if it is a readable file with the expected digest, else ``WeightsError``."""
    if not path.exists():
        raise WeightsError(f"{spec.what}: {path} does not exist; {fix_hint}")
    if not path.is_file():
        raise WeightsError(f"{spec.what}: {path} is not a file; {fix_hint}")
    try:
        digest = sha256_of(path)
    except OSError as err:
        raise WeightsError(f"{spec.what}: cannot read {path} ({err}); {fix_hint}") from None
    problem = _expected_digest_error(spec, path, digest)
    if problem:
        raise WeightsError(
            f"{spec.what}: {path} is corrupt or not the right file: {problem}; {fix_hint}"
        )
    return path


def _download(spec: WeightsFile, target: Path) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    offline = (
        f"download {spec.url} on a machine with internet access and pass it with {spec.flag} "
        f"PATH (or copy it to {target})"
    )
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            received = 0
            with (
                open(partial, "wb") as out,
                tqdm(
                    total=total or None, unit="B", unit_scale=True, desc=spec.filename, leave=False
                ) as bar,
            ):
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
        if total and received != total:
            raise WeightsError(
                f"{spec.what}: download of {spec.url} stopped at {received} of {total} bytes; "
                f"run again, or {offline}"
            )
        digest = sha256_of(partial)
        problem = _expected_digest_error(spec, target, digest)
        if problem:
            raise WeightsError(f"{spec.what}: the download from {spec.url} is wrong: {problem}")
        if not (spec.sha256 or spec.sha256_prefix):
            record = target.with_name(f"{target.name}.sha256")
            record.write_text(f"{digest}  {target.name}\n")
        os.replace(partial, target)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsError(
            f"{spec.what}: cannot download {spec.url} ({reason}); {offline}"
        ) from None
    finally:
        if partial.exists():
            partial.unlink()


def locate(spec: WeightsFile, path: Optional[str] = None, *, download: bool = True) -> Path:
    """The verified local file for ``spec``: ``path`` if given, else a cached or known copy,
    else a fresh download (when ``download``)."""
    cached = cache_dir() / spec.filename
    if path:
        return verify(
            spec, Path(path).expanduser(), fix_hint=f"check the path given to {spec.flag}"
        )
    if cached.exists():
        return verify(spec, cached, fix_hint="delete it to download it again")
    folders = _known_folders() if spec.elsewhere else {}
    for key, inside in spec.elsewhere:
        candidate = Path(folders[key]) / inside if folders[key] else None
        if candidate is not None and candidate.is_file():
            try:
                return verify(spec, candidate, fix_hint="")
            except WeightsError:
                continue  # someone else's damaged copy: download our own
    if not download:
        raise WeightsError(
            f"{spec.what} is not in the cache ({cached}); pass it with {spec.flag} PATH"
        )
    _download(spec, cached)
    return cached
