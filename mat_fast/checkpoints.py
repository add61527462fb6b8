"""Reading and writing MAT generator checkpoints.

Three on-disk formats are understood, detected from their first bytes (never from the
file name): upstream's network pickles (``Places_512_FullData.pkl``, ``CelebA-HQ_512.pkl``),
torch state dicts (``.pth``/``.pt``, zip or legacy ``torch.save``, e.g. IOPaint's
``Places_512_FullData_G.pth``) and safetensors files. The network pickles are read without
running any of their code: upstream's format embeds the full Python source of its network
modules and executes it on load, so a file from an untrusted source could do anything.
Here they go through ``network_pickle``'s restricted unpickler, which only rebuilds
tensors, containers and inert stand-ins for the modules, and refuses every other global.
The generator's constructor arguments are then inferred from the state dict's keys and
shapes, so no metadata is needed.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import uuid
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Optional, Union

import torch

from .errors import CheckpointError, CheckpointNotFoundError
from .model import Generator
from .network_pickle import ModuleStub, RefusedPickle, load_network_pickle, network_state_dict

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "infer_generator_kwargs",
    "load_generator",
    "read_checkpoint_file",
    "read_state_dict",
    "read_upstream_networks",
    "save_generator",
    "save_state_dict",
]

log = logging.getLogger(__name__)

PathOrStateDict = Union[str, os.PathLike, Mapping]

_FORMATS = (
    "an upstream MAT network pickle (.pkl), a torch state dict (.pth/.pt) or a .safetensors file"
)
_EXPECTED = "expected " + _FORMATS
_WHERE = (
    "Pretrained weights are not shipped with mat_fast (upstream's license is CC BY-NC): "
    "get Places_512_FullData.pkl or CelebA-HQ_512.pkl from the links in "
    "https://github.com/fenglinglwb/MAT's README, or IOPaint's converted "
    "Places_512_FullData_G.pth."
)


# ---------------------------------------------------------------------------------------
# Format detection and reading.

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_WRAPPER_KEYS = ("G_ema", "g_ema", "params_ema", "state_dict", "model", "G", "generator", "params")


def _sniff(path: str) -> str:
    """Return 'zip', 'torch-legacy', 'pickle' or 'safetensors' from the file's first bytes."""
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty; {_EXPECTED}.")
    with open(path, "rb") as f:
        head = f.read(32)
    # safetensors first: its 8-byte header length can itself begin like a pickle (b"\x80\x02"
    # is a 640-byte header), while the other formats never pass the length check.
    if len(head) > 8 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch-legacy"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    hint = ""
    if head.startswith(b"version https://git-lfs"):
        hint = " It is a Git LFS pointer, not the weights: fetch the real file."
    elif head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        hint = " It is a web page: the download link returned HTML, not the weights."
    raise CheckpointError(
        f"{path}: unrecognised file format (starts with {head[:8]!r}); {_EXPECTED}.{hint}"
    )


def _read_file(path: str):
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file; {_EXPECTED}. {_WHERE}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file; {_EXPECTED}.")
    try:
        kind = _sniff(path)
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        if kind == "pickle":
            with open(path, "rb") as f:
                return load_network_pickle(f)
        if kind == "zip":
            _check_zip_entries(path)
        return _torch_load(path)
    except CheckpointError:
        raise
    except RefusedPickle as e:
        raise CheckpointError(f"{path}: {e}. ({_EXPECTED}.)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file: {e}") from e
    except Exception as e:  # truncated/corrupt files raise all sorts of things
        detail = " ".join(str(e).split())[:300]  # whole, on one line
        raise CheckpointError(
            f"{path}: corrupt or unsupported checkpoint "
            f"({type(e).__name__}: {detail}); {_EXPECTED}."
        ) from e


def _check_zip_entries(path: str) -> None:
    """torch.save stores its zip entries uncompressed; a compressed entry means the file
    was made by something else, and deflate turns a small file into gigabytes."""
    with zipfile.ZipFile(path) as archive:
        packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(
            f"{path}: compressed entries ({_listing(packed, 3)}), which torch.save never "
            f"writes; refused unread (re-save it with torch.save). {_EXPECTED}."
        )


def _torch_load(path: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, which would run the file's code.
        found = re.search(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", str(e), re.I)
        if found is None:  # a damaged file, more likely than a hostile one
            raise CheckpointError(
                f"{path}: corrupt, or not a plain state dict: torch.load(weights_only=True) "
                f"could not read it and nothing in it was executed. Expected {_FORMATS}."
            ) from e
        raise CheckpointError(
            f"{path}: this torch file contains the global '{found.group(1)}', so it is not a "
            f"plain state dict; it was refused by torch.load(weights_only=True) and nothing "
            f"in it was executed. It may be malicious. Expected {_FORMATS}."
        ) from e


def _is_tensor_dict(obj) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _extract(obj, source: str) -> dict:
    """Unwrap common containers around a generator state dict; prefer EMA weights."""
    for _ in range(4):
        if isinstance(obj, ModuleStub):
            try:
                return network_state_dict(obj)
            except RefusedPickle as e:
                raise CheckpointError(f"{source}: {e}") from None
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{source}: expected a dict of tensors, found a {type(obj).__name__}; {_EXPECTED}."
            )
        if _is_tensor_dict(obj):
            return dict(obj)
        key = next((k for k in _WRAPPER_KEYS if k in obj), None)
        if key is None:
            if any(isinstance(v, torch.Tensor) for v in obj.values()):
                return dict(obj)  # a state dict with junk in it: _check_tensors names it
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            raise CheckpointError(
                f"{source}: no generator weights found (top-level keys: "
                f"{keys or 'none'}); {_EXPECTED}."
            )
        if key == "G":
            log.warning(
                "%s: no 'G_ema' weights; using the non-EMA 'G' weights, which "
                "usually give worse results",
                source,
            )
        obj = obj[key]
    raise CheckpointError(f"{source}: state dict nested too deeply in wrapper dicts")


def _key_text(k) -> str:
    # Bounded: a crafted key (a tuple nested 100000 deep) must not blow the recursion limit.
    return repr(k)[:80] if isinstance(k, str) else f"<{type(k).__name__} key>"


def _check_tensors(sd: dict, source: str) -> dict:
    bad = [
        f"{_key_text(k)} ({type(v).__name__})"
        for k, v in sd.items()
        if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    bad += [
        f"{_key_text(k)} ({v.dtype})"
        for k, v in sd.items()
        if isinstance(v, torch.Tensor) and not v.is_floating_point()
    ]
    # Weights are plain dense tensors with their own data; a stride-0 view lets a tiny file
    # claim a huge shape (and then a huge network).
    bad += [
        f"{_key_text(k)} ({'meta' if v.is_meta else v.layout} tensor)"
        for k, v in sd.items()
        if isinstance(v, torch.Tensor) and (v.is_meta or v.layout != torch.strided)
    ]
    bad += [
        f"{_key_text(k)} (expanded: a stride-0 view)"
        for k, v in sd.items()
        if isinstance(v, torch.Tensor)
        and not v.is_meta
        and v.layout == torch.strided
        and any(st == 0 and n > 1 for st, n in zip(v.stride(), v.shape))
    ]

    if bad:
        raise CheckpointError(
            f"{source}: entries that are not dense floating-point tensors: {_listing(bad)}"
        )
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _listing(items, limit=10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def read_checkpoint_file(path: Union[str, os.PathLike]):
    """A checkpoint file's content as it is (safetensors dict, plain torch object or the
    stand-ins of a network pickle), read with the same safety rules as the weights."""
    return _read_file(os.path.expanduser(os.fspath(path)))


def read_upstream_networks(path: Union[str, os.PathLike]) -> dict:
    """``{'G': sd, 'D': sd, 'G_ema': sd}`` (those present) from an upstream network pickle,
    without running its code; the start of a fine-tuning run."""
    source = os.path.expanduser(os.fspath(path))
    obj = _read_file(source)
    if not isinstance(obj, Mapping) or not any(isinstance(obj.get(k), ModuleStub) for k in "GD"):
        raise CheckpointError(
            f"{source}: not an upstream MAT network pickle (no 'G'/'D'/'G_ema' networks)"
        )
    out = {}
    for name in ("G", "D", "G_ema"):
        if isinstance(obj.get(name), ModuleStub):
            try:
                out[name] = _check_tensors(network_state_dict(obj[name]), f"{source}[{name}]")
            except RefusedPickle as e:
                raise CheckpointError(f"{source}[{name}]: {e}") from None
    return out


def read_state_dict(path_or_state_dict: PathOrStateDict) -> dict:
    """Read a generator state dict (``{name: tensor}``, on CPU) from any supported format.

    Accepts a path or an in-memory mapping. Wrappers such as ``{'state_dict': ...}`` or
    ``{'G_ema': ...}`` are unwrapped and a ``module.`` prefix on every key is removed.
    Raises ``CheckpointError`` for anything that is not a dict of floating-point tensors.
    Tensors of an in-memory input are returned as they are, not copied.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "<in-memory state dict>", path_or_state_dict
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.path.expanduser(os.fspath(path_or_state_dict))
        obj = _read_file(source)
    else:
        raise TypeError(f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")
    return _check_tensors(_extract(obj, source), source)


# ---------------------------------------------------------------------------------------
# Constructor inference and loading.


def infer_generator_kwargs(state_dict: Mapping) -> dict:
    """``Generator`` constructor arguments that produce exactly this state dict's layout."""
    keys = list(state_dict)
    res = [int(m.group(1)) for k in keys if (m := re.match(r"synthesis\.dec\.Dec_(\d+)x\1\.", k))]
    n_fc = sum(1 for k in keys if re.fullmatch(r"mapping\.fc\d+\.weight", k))
    needed = ["synthesis.dec.Dec_16x16.toRGB.bias", "mapping.fc0.weight"]
    if not res or n_fc == 0 or any(k not in state_dict for k in needed):
        hint = " (it looks like a discriminator)" if any(k.startswith("Dis") for k in keys) else ""
        raise CheckpointError(
            f"not a MAT generator state dict{hint}: no "
            f"synthesis.dec.Dec_RxR / mapping.fcN keys found"
        )
    shape = lambda k: tuple(state_dict[k].shape)  # noqa: E731
    if f"mapping.fc{n_fc - 1}.weight" not in state_dict:
        raise CheckpointError(f"mapping layers are not numbered fc0..fc{n_fc - 1}")
    w_dim = shape(f"mapping.fc{n_fc - 1}.weight")[0]
    fc0_out, fc0_in = shape("mapping.fc0.weight")
    c_dim, embed = 0, 0
    if "mapping.embed.weight" in state_dict:
        embed, c_dim = shape("mapping.embed.weight")
    mapping_kwargs: dict = {}
    if n_fc != 8:
        mapping_kwargs["num_layers"] = n_fc
    if embed and embed != w_dim:
        mapping_kwargs["embed_features"] = embed
    if n_fc > 1 and fc0_out != w_dim:
        mapping_kwargs["layer_features"] = fc0_out
    if "mapping.w_avg" not in state_dict:
        mapping_kwargs["w_avg_beta"] = None
    # Bounds before anything is built: the network's size follows from these numbers, and
    # a crafted file could otherwise ask for terabytes. MAT's own are 256/512 and 512.
    resolution = max(res)
    limits = dict(
        img_resolution=(resolution, 512),
        w_dim=(w_dim, 4096),
        z_dim=(fc0_in - embed, 4096),
        c_dim=(c_dim, 100_000),
        mapping_layers=(n_fc, 64),
        layer_features=(fc0_out, 4096),
    )
    too_big = [
        f"{name} {value} (at most {limit})"
        for name, (value, limit) in limits.items()
        if value > limit
    ]
    if resolution & (resolution - 1):
        too_big.append(f"img_resolution {resolution} (not a power of two)")
    if too_big:
        raise CheckpointError(f"not a MAT generator this package can build: {', '.join(too_big)}")
    return dict(
        z_dim=fc0_in - embed,
        c_dim=c_dim,
        w_dim=w_dim,
        img_resolution=resolution,
        img_channels=shape("synthesis.dec.Dec_16x16.toRGB.bias")[0],
        synthesis_kwargs=dict(use_noise=any(k.endswith("noise_strength") for k in keys)),
        mapping_kwargs=mapping_kwargs,
    )


def load_generator(
    path_or_state_dict: PathOrStateDict,
    *,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Generator:
    """Build a ``Generator`` matching a checkpoint and load its weights strictly.

    ``path_or_state_dict``: an upstream ``.pkl`` (G_ema is used), a ``.pth``/``.pt`` state
    dict, a ``.safetensors`` file, or an in-memory state dict. Returns the network in
    eval mode with gradients off, on ``device`` (``'auto'``: a CUDA GPU if visible, else the
    CPU; an unknown or absent device raises :class:`mat_fast.DeviceError`) in ``dtype``.
    Building it draws initial weights from torch's global RNG just like ``Generator(...)``
    (and upstream's generate_image.py) does, so seeded runs stay comparable with upstream's.
    """
    from .devices import resolve_device

    device = resolve_device(device)  # before the (slow) read: a bad device fails at once
    source = (
        "<in-memory state dict>"
        if isinstance(path_or_state_dict, Mapping)
        else os.fspath(path_or_state_dict)
    )
    sd = read_state_dict(path_or_state_dict)
    try:
        kwargs = infer_generator_kwargs(sd)
        G = Generator(**kwargs)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{source}: {e}") from e
    expected = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {expected[k]}"
        for k, v in sd.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{title} ({len(items)}): {_listing(items)}"
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise CheckpointError(
            f"{source}: does not match a MAT Generator inferred as "
            f"{kwargs}:\n  " + "\n  ".join(parts)
        )
    G.load_state_dict(sd, strict=True)
    return G.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _umask() -> int:
    """This process's umask, read without changing it where the OS allows (os.umask can
    only be read by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_generator(
    G: torch.nn.Module, path: Union[str, os.PathLike], *, format: Optional[str] = None
) -> None:
    """Save ``G``'s state dict: safetensors unless ``path`` ends in ``.pth``/``.pt`` or
    ``format='pth'``. The file is written to a temporary name in the same directory and
    renamed into place, so an interrupted save never leaves a partial checkpoint."""
    path = os.path.expanduser(os.fspath(path))
    if format is None:
        format = "pth" if path.lower().endswith((".pth", ".pt")) else "safetensors"
    if format not in ("safetensors", "pth", "pt"):
        raise ValueError(f"format must be 'safetensors' or 'pth', got {format!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot save generator to {path}: directory {directory} does not exist"
        )
    # Own, contiguous copies: safetensors refuses tensors that share storage.
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in G.state_dict().items()}
    kwargs = infer_generator_kwargs(sd)
    meta = {
        k: str(kwargs[k]) for k in ("img_resolution", "z_dim", "c_dim", "w_dim", "img_channels")
    }
    meta.update(use_noise=str(kwargs["synthesis_kwargs"]["use_noise"]), format="mat_fast.Generator")
    save_state_dict(sd, path, format=format, metadata=meta)


def save_state_dict(
    state_dict: Mapping,
    path: Union[str, os.PathLike],
    *,
    format: str = "safetensors",
    metadata: Optional[dict] = None,
) -> None:
    """Write tensors atomically: to a temporary name in the same directory, then renamed
    into place, so an interrupted save never leaves a partial file."""
    path = os.path.expanduser(os.fspath(path))
    directory = os.path.dirname(os.path.abspath(path))
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    # A fresh name next to the target (same filesystem, so os.replace is atomic); not
    # mkstemp, whose 0600 mode would end up on the checkpoint.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        if format == "safetensors":
            from safetensors.torch import save_file

            from .version import __version__

            save_file(sd, tmp, metadata=dict(metadata or {}, mat_fast_version=__version__))
        else:
            torch.save(OrderedDict(sd), tmp)
        # safetensors creates its file 0600; give it the mode any new file would get
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
