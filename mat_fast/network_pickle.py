"""Reading upstream MAT's network pickles without running any of their code.

Upstream's ``.pkl`` files (StyleGAN2-ADA's format) embed the Python source of the network
modules and ``exec`` it while unpickling, so loading one the ordinary way lets the file do
anything. This unpickler rebuilds only tensors, containers and inert stand-ins
(``ModuleStub``) for the modules, refuses every other global, and refuses pickles nested
deeply enough to crash CPython before anything is built. ``network_state_dict`` then walks
the stand-ins like ``nn.Module.state_dict()``.

Every refusal raises ``RefusedPickle``; ``mat_fast.checkpoints`` turns it into a
``CheckpointError`` naming the file.
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import sys
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "MAX_PICKLE_NESTING",
    "ModuleStub",
    "RefusedPickle",
    "load_network_pickle",
    "network_state_dict",
]


class RefusedPickle(pickle.UnpicklingError):
    """The pickle holds something a MAT checkpoint never does (a global outside the
    allow-list, absurd nesting, a malformed module tree); nothing in it was executed."""


class ModuleStub:
    """Inert stand-in for a pickled module: its class name and its ``__dict__`` state."""

    def __init__(self, class_name: str = "?", state: Any = None):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state):  # BUILD opcode for plainly pickled torch.nn modules
        self.state = state[0] if isinstance(state, tuple) and len(state) == 2 else state


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``; a plain dict is all we need."""


@functools.lru_cache(maxsize=None)
def _torch_module_stub(module: str, name: str):
    """A stub class for a ``torch.nn.modules.*`` class (ModuleList, Sequential, ...).
    Only names of real ``nn.Module`` subclasses qualify, so no other torch callable can
    be smuggled in; the real class is never instantiated."""
    cls = getattr(sys.modules.get(module), name, None)
    if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        return type(name, (ModuleStub,), {"class_name": name})
    return None


def _persistent_obj(meta):
    # Upstream would exec(meta['module_src']) here; we keep only the class name and state.
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("class_name"), str)
        and isinstance(meta.get("state"), dict)
    ):
        raise pickle.UnpicklingError(
            "malformed persistent object (expected a dict with 'class_name' and 'state')"
        )
    return ModuleStub(meta["class_name"], meta["state"])


def _load_storage(data):
    # torch.storage._load_from_bytes runs torch.load(weights_only=False); the bytes are a
    # legacy torch.save of one storage, which the weights-only loader reads fine.
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("storage payload is not bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Not torch's message: it advises weights_only=False, which would run the payload.
        raise pickle.UnpicklingError(
            "a storage payload holds objects other than tensor "
            "data (refused by torch.load(weights_only=True))"
        ) from e
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"storage payload decoded to {type(storage).__name__}")
    return storage


def _rebuild_parameter(data, *_ignored):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return data  # requires_grad, hooks and extra state are irrelevant for loading weights


_np_core = getattr(np, "_core", None) or np.core  # numpy >= 2 moved np.core there


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy array subtype {subtype!r} is not allowed")
    return _np_core.multiarray._reconstruct(subtype, shape, dtype)


def _latin1_encode(text, encoding="utf-8"):
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "device"): torch.device,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
}
for _np_mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _SAFE_GLOBALS[(_np_mod, "scalar")] = _np_core.multiarray.scalar
    _SAFE_GLOBALS[(_np_mod, "_reconstruct")] = _np_reconstruct


#: Deepest container nesting a network pickle may have. Upstream's nest a few dozen levels;
#: CPython builds and hashes nested tuples recursively in C, so a crafted chain some
#: hundred thousand deep crashes the process outright (no exception to catch).
MAX_PICKLE_NESTING = 1000


def _check_pickle_nesting(file) -> None:
    """Walk the pickle's opcodes (nothing is built) tracking how deeply each stack item
    nests; refuse the file past MAX_PICKLE_NESTING. Rewinds ``file``."""
    stack: list = []  # nesting depth of each stack item; None marks a MARK
    memo: dict = {}
    for opcode, arg, _pos in pickletools.genops(file):
        popped = [0]
        for item in reversed(opcode.stack_before):
            if item is pickletools.stackslice:
                continue  # popped with its mark below
            if item is pickletools.markobject:
                while stack and stack[-1] is not None:
                    popped.append(stack.pop())
                if stack:
                    stack.pop()
            elif stack:
                top = stack.pop()
                popped.append(top or 0)
        depth = max(popped) + 1
        if depth > MAX_PICKLE_NESTING:
            raise RefusedPickle(
                f"the pickle nests objects more than {MAX_PICKLE_NESTING} levels deep; no "
                f"MAT checkpoint does, so it was refused unread (it may be malicious)"
            )
        if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and stack:
            memo[arg] = stack[-1]
        elif opcode.name == "MEMOIZE" and stack:
            memo[len(memo)] = stack[-1]
        for item in opcode.stack_after:
            if item is pickletools.markobject:
                stack.append(None)
            elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, 0))
            elif opcode.name == "DUP" and popped[1:]:
                stack.append(popped[-1])
            else:
                stack.append(depth)
    file.seek(0)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals are limited to ``_SAFE_GLOBALS`` and inert module stubs."""

    def __init__(self, file):
        super().__init__(file)
        self.tensors: list = []  # (tensor, storage bytes when rebuilt)

    def _rebuild_tensor(self, storage, offset, size, stride, *_ignored):
        # torch's rebuilders silently grow a storage that is too small for the view, with
        # uninitialised memory; a correct file never needs that.
        if not isinstance(storage, torch.TypedStorage):
            raise pickle.UnpicklingError("tensor without a typed storage")
        nbytes = storage.nbytes()
        t = torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))
        if t.untyped_storage().nbytes() != nbytes:
            raise pickle.UnpicklingError("tensor view extends past its stored data")
        self.tensors.append((t, nbytes))
        return t

    def load(self):
        data = super().load()
        # A BUILD opcode can call Tensor.__setstate__, which re-points a tensor at a new,
        # possibly grown storage: refuse files whose tensors changed after being rebuilt.
        for t, nbytes in self.tensors:
            if t.untyped_storage().nbytes() != nbytes:
                raise pickle.UnpicklingError("a tensor was modified after it was rebuilt")
        return data

    def find_class(self, module, name):
        # Protocol-2 pickles written by Python 3 use the Python 2 name of builtins.
        module = "builtins" if module == "__builtin__" else module
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        found = _SAFE_GLOBALS.get((module, name))
        if found is None and module.startswith("torch.nn.modules."):
            found = _torch_module_stub(module, name)
        if (
            found is None
            and module == "torch"
            and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            found = getattr(torch, name)
        if found is None:
            raise RefusedPickle(
                f"refused to load global '{module}.{name}'. This file is not a MAT "
                f"checkpoint this loader understands and may be malicious; nothing in it "
                f"was executed"
            )
        return found


def network_state_dict(node: ModuleStub) -> dict:
    """Walk a stub module tree like ``nn.Module.state_dict()``: parameters, persistent
    buffers, then submodules, with dotted names."""
    out: dict = {}

    visits = [0]  # bounds the work on crafted pickles that share submodules many times

    def walk(node, prefix, depth):
        state = getattr(node, "state", None)
        state = state if isinstance(state, dict) else {}
        visits[0] += 1
        if depth > 64 or visits[0] > 100_000 or "_modules" not in state:
            raise RefusedPickle(
                f"malformed network '{prefix or node.class_name}' in the "
                f"pickle (no module state or nesting too deep)"
            )
        skip = state.get("_non_persistent_buffers_set", ())
        groups = {g: state.get(g, {}) for g in ("_parameters", "_buffers", "_modules")}
        if not isinstance(skip, (set, frozenset, list, tuple)) or not all(
            isinstance(v, Mapping) and all(isinstance(k, str) for k in v) for v in groups.values()
        ):
            raise RefusedPickle(
                f"malformed network '{prefix or node.class_name}' in the "
                f"pickle (module state of the wrong types)"
            )
        for group in ("_parameters", "_buffers"):
            for name, tensor in groups[group].items():
                if tensor is None or (group == "_buffers" and name in skip):
                    continue
                out[prefix + name] = tensor
        for name, child in groups["_modules"].items():
            if child is None:
                continue
            if not isinstance(child, ModuleStub):
                raise RefusedPickle(
                    f"submodule '{prefix + name}' is a {type(child).__name__}, not a module"
                )
            walk(child, f"{prefix}{name}.", depth + 1)

    walk(node, "", 0)
    return out


def load_network_pickle(file: BinaryIO) -> Any:
    """Unpickle a seekable binary file with the restricted unpickler.

    The file is read twice (an opcode scan for nesting, then the unpickling) rather than
    held in memory: upstream's pickles are hundreds of MB, and the second read comes from
    the page cache."""
    _check_pickle_nesting(file)
    with warnings.catch_warnings():
        # Old-style typed storages are deprecated, but they are what the file holds.
        warnings.simplefilter("ignore", UserWarning)
        return _RestrictedUnpickler(file).load()
