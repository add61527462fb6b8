"""The one place that decides which implementation of each hot op runs.

Precedence, highest first:
  1. an explicit ``backend=`` argument to an op,
  2. the innermost ``with use_backend(name):`` block / ``set_backend(name)``,
  3. the ``MAT_FAST_BACKEND`` environment variable,
  4. ``'auto'``.

An explicit request that cannot run raises :class:`BackendUnavailableError` with the
reason. ``'auto'`` walks a per-device preference list, falls back to ``'reference'`` and
logs why, once per (device type, backend) pair.

Each op registers its implementations with :func:`register`; a backend that is usable but
has no kernel for a given op runs that op's reference twin (e.g. a backend that only fuses
attention still runs the reference resampling).

Kernel layers: an implementation may need more than its backend, e.g. the 'cpu' backend's
attention and partial-conv kernels are C++ (the native extension, built on first use),
while its resampling, bias_act and modulated conv are plain PyTorch. Such implementations
name their layer (:func:`register_lazy`'s ``layer``); when that layer cannot load here, the
op runs its reference and the rest of the backend keeps its fast paths.
:func:`kernel_layers` says which layers load (``mat-fast info`` prints it).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import logging
import threading
from typing import Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import torch

from . import settings
from .errors import BackendUnavailableError

__all__ = [
    "BACKEND_NAMES",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "register",
    "resolve",
    "set_backend",
    "use_backend",
    "has_kernel",
    "implementation",
    "kernel_layers",
    "register_lazy",
]

Device = Union[torch.device, str, None]

log = logging.getLogger("mat_fast")

#: Every name a user may ask for. 'auto' is a policy, the rest are implementations.
BACKEND_NAMES = ("auto", "reference", "triton", "cuda", "cpu")
ENV_VAR = settings.BACKEND

# Auto preference per device type: the first backend that can run wins.
_AUTO_ORDER = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}


# ----------------------------------------------------------------------------------------
# Availability probes. Each returns None when the backend can run on that device type, or
# a sentence saying why not.


def _probe_reference(device_type: str) -> Optional[str]:
    return None


def _probe_triton(device_type: str) -> Optional[str]:
    from .ops import triton_support  # (does not import Triton until asked)

    return triton_support.probe(device_type)


def _probe_cpu(device_type: str) -> Optional[str]:
    # Plain PyTorch at its core: it runs on every CPU. Its native kernels are a layer
    # under it (see kernel_layers); without them those ops run their reference.
    if device_type != "cpu":
        return f"the 'cpu' backend runs on cpu tensors, not {device_type}"
    return None


def _probe_cuda(device_type: str) -> Optional[str]:
    if device_type != "cuda":
        return f"the 'cuda' backend runs on cuda tensors, not {device_type}"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return _probe_native(device_type)  # every 'cuda' kernel is native


def _probe_native(device_type: str) -> Optional[str]:
    from .ops import native_build

    return native_build.probe("cuda" if device_type == "cuda" else "cpu", device_type)


_PROBES: Dict[str, Callable[[str], Optional[str]]] = {
    "reference": _probe_reference,
    "triton": _probe_triton,
    "cuda": _probe_cuda,
    "cpu": _probe_cpu,
}

#: Kernel layers under the backends: name -> probe(device_type).
_LAYERS: Dict[str, Callable[[str], Optional[str]]] = {"native": _probe_native}


def available_backends(
    device: Device = None, names: Optional[Iterable[str]] = None
) -> Dict[str, Optional[str]]:
    """Map every backend name (or only ``names``) to ``None`` (can run) or the reason it
    cannot. Asking about 'cpu' or 'cuda' may build the native extension (minutes on a
    GPU box): a caller that names its backends asks only about those.

    ``device`` defaults to CUDA when a GPU is visible, else CPU.
    """
    device_type = _device_type(device)
    wanted = [_check_name(n, allow_auto=False) for n in names] if names is not None else None
    return {
        name: _PROBES[name](device_type)
        for name in BACKEND_NAMES
        if name != "auto" and (wanted is None or name in wanted)
    }


def kernel_layers(device: Device = None) -> Dict[str, Optional[str]]:
    """Map every kernel layer ('native': the C++/CUDA extension) to ``None`` (it loads for
    ``device``) or the reason it cannot; asking may build the native extension once."""
    device_type = _device_type(device)
    return {name: probe(device_type) for name, probe in _LAYERS.items()}


# ----------------------------------------------------------------------------------------
# Requested backend: context variable (works with threads and asyncio) over a global.

_global_choice: Optional[str] = None
_context_choice: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "mat_fast_backend", default=None
)


def _check_name(name: str, allow_auto: bool = True) -> str:
    if (
        not isinstance(name, str)
        or name.lower() not in BACKEND_NAMES
        or (not allow_auto and name.lower() == "auto")
    ):
        raise ValueError(
            f"unknown mat_fast backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}"
        )
    return name.lower()


def set_backend(name: Optional[str], device: Device = None) -> None:
    """Set the process-wide backend ('auto', 'reference', ...). ``None`` clears it.

    An explicit name is checked at once for ``device`` (default: CUDA when a GPU is
    visible, else CPU), so a typo or an unavailable backend fails here rather than deep
    inside a forward pass.
    """
    global _global_choice
    if name is None:
        _global_choice = None
        return
    name = _check_name(name)
    if name != "auto":
        _raise_if_unavailable(name, _device_type(device))
    _global_choice = name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """``with use_backend('reference'):`` — scoped backend choice (nests, thread-safe)."""
    name = _check_name(name)
    if name != "auto":
        _raise_if_unavailable(name, _device_type(None))
    token = _context_choice.set(name)
    try:
        yield name
    finally:
        _context_choice.reset(token)


def get_backend() -> str:
    """The backend currently requested (may be 'auto'); see :func:`resolve` for what runs."""
    for choice in (_context_choice.get(), _global_choice):
        if choice is not None:
            return choice
    env = settings.requested_backend()
    if env:
        try:
            return _check_name(env)
        except ValueError:
            raise ValueError(
                f"{ENV_VAR}={env!r} is not a mat_fast backend; "
                f"set it to one of {', '.join(BACKEND_NAMES)} or unset it"
            ) from None
    return "auto"


# ----------------------------------------------------------------------------------------
# Resolution.

_logged_fallbacks: set = set()


def _device_type(device: Device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _raise_if_unavailable(name: str, device_type: str) -> None:
    reason = _PROBES[name](device_type)
    if reason is not None:
        raise BackendUnavailableError(
            f"mat_fast backend {name!r} cannot run on {device_type}: {reason}"
        )


def _constant_under_compile(fn: Callable) -> Callable:
    """What ``torch.compiler.assume_constant_result`` does (Dynamo calls ``fn`` once while
    tracing and bakes its answer into the graph), without importing ``torch._dynamo`` now:
    that import pulls in Triton, which must not happen on ``import mat_fast`` (it costs
    seconds, and Triton imported before ``TRITON_INTERPRET=1`` is set cannot interpret)."""
    fn._dynamo_marked_constant = True
    return fn


# Under torch.compile, backend resolution runs once, in plain Python, while the graph is
# traced (Dynamo cannot trace a ContextVar or the probes' file checks) and its answer is
# baked into the graph: choose the backend before compiling, or torch._dynamo.reset() after
# switching.
@_constant_under_compile
def resolve(device: Device = None, explicit: Optional[str] = None) -> str:
    """The concrete backend that runs on ``device`` right now."""
    device_type = _device_type(device)
    name = _check_name(explicit) if explicit is not None else get_backend()
    if name != "auto":
        _raise_if_unavailable(name, device_type)
        return name
    for candidate in _AUTO_ORDER.get(device_type, ("reference",)):
        reason = _PROBES[candidate](device_type)
        if reason is None:
            return candidate
        key = (device_type, candidate)
        if key not in _logged_fallbacks:
            _logged_fallbacks.add(key)
            log.info("mat_fast: auto backend skips %r on %s: %s", candidate, device_type, reason)
    return "reference"


# ----------------------------------------------------------------------------------------
# Op registry.

_REGISTRY: Dict[str, Dict[str, Callable]] = {}
# op -> backend -> ("module:function", kernel layer it needs or None)
_LAZY: Dict[str, Dict[str, Tuple[str, Optional[str]]]] = {}


def register(op: str, backend: str, fn: Callable) -> Callable:
    """Register ``fn`` as ``backend``'s implementation of ``op``."""
    _check_name(backend, allow_auto=False)
    _REGISTRY.setdefault(op, {})[backend] = fn
    return fn


def register_lazy(op: str, backend: str, target: str, *, layer: Optional[str] = None) -> None:
    """Register ``"package.module:function"`` as ``backend``'s ``op``, imported on first use
    (so ``import mat_fast`` never imports Triton or builds an extension). ``layer`` names
    the kernel layer it needs ('native'); where that layer cannot load, the op runs its
    reference instead."""
    _check_name(backend, allow_auto=False)
    if layer is not None and layer not in _LAYERS:
        raise ValueError(f"unknown kernel layer {layer!r}; choose one of {sorted(_LAYERS)}")
    _LAZY.setdefault(op, {})[backend] = (target, layer)


_lazy_lock = threading.RLock()  # re-entrant: an import may register or resolve ops


def _load_lazy(op: str, name: str, device_type: str) -> Optional[Callable]:
    # Under a lock, and the entry dropped only once imported: a second thread must not see
    # "no kernel" (and run the reference) while the first is still importing.
    with _lazy_lock:
        if name in _REGISTRY.get(op, {}):
            return _REGISTRY[op][name]
        entry = _LAZY.get(op, {}).get(name)
        if entry is None:
            return None
        target, layer = entry
        if layer is not None and _LAYERS[layer](device_type) is not None:
            return None  # kept: the layer's own probe remembers (and logged) why not
        module, _, attr = target.partition(":")
        if importlib.util.find_spec(module) is None:
            _LAZY[op].pop(name)
            return None  # this backend has no kernel for this op: the reference runs
        fn = getattr(importlib.import_module(module), attr)
        _LAZY[op].pop(name)
        return register(op, name, fn)


@_constant_under_compile
def _implementation_key(op: str, device_type: str, explicit: Optional[str]) -> str:
    """The backend whose registered function computes ``op`` (after any lazy import)."""
    name = resolve(device_type, explicit)
    if name in _REGISTRY[op] or _load_lazy(op, name, device_type) is not None:
        return name
    return "reference"


def implementation(op: str, device: Device, explicit: Optional[str] = None) -> Callable:
    """The function that computes ``op`` for a tensor on ``device``."""
    return _REGISTRY[op][_implementation_key(op, _device_type(device), explicit)]


def has_kernel(op: str, device: Device, explicit: Optional[str] = None) -> bool:
    """Whether the backend that runs on ``device`` has its own ``op`` (rather than falling
    back to the reference): fused ops use it to compose the backend's smaller kernels."""
    device_type = _device_type(device)
    return _implementation_key(op, device_type, explicit) == resolve(device_type, explicit)
