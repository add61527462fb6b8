"""Find or build ``mat_fast_native``: the C++ (and CUDA) kernels of the 'cpu' and 'cuda'
backends.

The library registers ``torch.ops.mat_fast_native.*`` (schemas in
``kernels/mat_fast_ops.cpp``). It comes from, in order:

1. an ahead-of-time build, the module ``mat_fast._C`` (``MAT_FAST_BUILD_EXT=1 pip install``),
   unless the kernel sources beside the package differ from those it was built from;
2. a just-in-time build with :func:`torch.utils.cpp_extension.load`, cached in
   ``$MAT_FAST_CACHE/ext`` (else ``$XDG_CACHE_HOME/mat_fast/ext``, else
   ``~/.cache/mat_fast/ext``) under a key that hashes the kernel sources, the torch, CUDA
   and Python versions, the CUDA architectures, the compiler and the flags.

A JIT build runs in a child process whose output goes to a log file; it builds into a
temporary directory that is renamed into place when done, under a file lock, so processes
that build at once wait for one another and never see half a build. The kernel sources are
``kernels/`` of a source tree, or ``mat_fast/_kernels/`` inside an installed wheel.

:mod:`mat_fast.backend` calls :func:`probe` (the 'native' kernel layer); the op wrappers
call :func:`require`; :func:`describe` says what is loaded. This module never imports the
backend switch above it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .. import settings
from ..errors import BackendUnavailableError, NativeBuildError
from .native_sources import (
    AOT_DIGEST_FILE,
    HASHED_SUFFIXES,
    cuda_arch_list,
    hash_sources,
    source_digest,
)

try:  # POSIX; elsewhere the atomic rename alone keeps concurrent builds safe
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "LIBRARY",
    "BuildConfig",
    "NativeBuildError",
    "build",
    "cache_root",
    "describe",
    "is_loaded",
    "kernel_dir",
    "load",
    "probe",
    "require",
]

log = logging.getLogger("mat_fast")

LIBRARY = "mat_fast_native"
#: Module name of the ahead-of-time build (setup.py with MAT_FAST_BUILD_EXT=1).
AOT_MODULE = "mat_fast._C"
#: Lines of the compiler's output quoted in a failed build's reason.
LOG_TAIL_LINES = 20
#: JIT cache entries kept after a new build: the newest by last use (a cache hit touches
#: its entry). Each source change or torch upgrade makes a new entry of ~0.5-1 MB.
CACHE_ENTRIES_KEPT = 4
#: Temporary build and trash directories older than this were left by killed processes (a
#: build takes minutes): the next pruning removes them.
ABANDONED_AFTER_S = 24 * 3600

_PACKAGE = Path(__file__).resolve().parents[1]  # .../mat_fast
_SOURCE_SUFFIXES = (".cpp", ".cu")


# ----------------------------------------------------------------------------------------
# Where things are.


@functools.lru_cache(maxsize=None)
def kernel_dir() -> Optional[Path]:
    """The kernel sources: ``kernels/`` next to the package in a source tree, else the
    copy shipped inside the package (``mat_fast/_kernels``); None if neither exists."""
    for candidate in (_PACKAGE.parent / "kernels", _PACKAGE / "_kernels"):
        if (candidate / "mat_fast_ops.cpp").is_file():
            return candidate
    return None


def cache_root() -> Path:
    """``$MAT_FAST_CACHE/ext``, else ``$XDG_CACHE_HOME/mat_fast/ext``, else
    ``~/.cache/mat_fast/ext`` (:func:`mat_fast.settings.cache_root`, read on every call)."""
    return settings.cache_root()


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """Everything a JIT build depends on; :meth:`key` hashes it with the sources."""

    kernels: Path
    cache: Path
    with_cuda: bool
    cuda_arch_list: str  # TORCH_CUDA_ARCH_LIST for the build ('' without CUDA)
    cflags: Tuple[str, ...]
    cuda_cflags: Tuple[str, ...]
    ldflags: Tuple[str, ...]

    @classmethod
    def default(cls) -> "BuildConfig":
        kernels = kernel_dir()
        if kernels is None:
            raise NativeBuildError(
                "the mat_fast kernel sources are missing (neither kernels/ in a source tree nor "
                "mat_fast/_kernels/ in the installed package); reinstall mat_fast"
            )
        from torch.utils import cpp_extension

        has_cu = any(kernels.glob("*.cu"))
        # With CUDA torch but no GPU to build for (no visible GPU, no TORCH_CUDA_ARCH_LIST),
        # torch's cpp_extension fails (an empty arch list: IndexError in torch 2.11), and
        # nothing here could run the CUDA kernels anyway: build the CPU kernels only.
        with_cuda = (
            torch.version.cuda is not None
            and has_cu
            and cpp_extension.CUDA_HOME is not None
            and (torch.cuda.is_available() or bool(cuda_arch_list()))
        )
        cflags: List[str] = []
        ldflags: List[str] = []
        if os.name != "nt":
            cflags.append("-O3")
        if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
            # at::parallel_for is header code: without -fopenmp it runs on one thread.
            cflags.append("-fopenmp")
            ldflags.append("-fopenmp")
        return cls(
            kernels=kernels,
            cache=cache_root(),
            with_cuda=with_cuda,
            cuda_arch_list=cuda_arch_list() if with_cuda else "",
            cflags=tuple(cflags),
            cuda_cflags=("-O3",) if with_cuda else (),
            ldflags=tuple(ldflags),
        )

    def files(self) -> List[Path]:
        """The sources the build reads (CUDA ones only when building with CUDA)."""
        skip = () if self.with_cuda else (".cu", ".cuh")
        return sorted(
            p
            for p in self.kernels.iterdir()
            if p.suffix in HASHED_SUFFIXES and p.suffix not in skip
        )

    def sources(self) -> List[str]:
        """Translation units (file names): the .cpp files, plus the .cu files with CUDA."""
        wanted = _SOURCE_SUFFIXES if self.with_cuda else (".cpp",)
        return [p.name for p in self.files() if p.suffix in wanted]

    def read_sources(self) -> Dict[str, bytes]:
        """File name -> contents of :meth:`files`, read once: the key and the build's
        snapshot come from the same bytes even if someone edits the sources meanwhile."""
        return {path.name: path.read_bytes() for path in self.files()}

    def key(self, sources: Optional[Dict[str, bytes]] = None) -> str:
        h = hash_sources(sources or self.read_sources())
        meta = [
            torch.__version__,
            str(torch.version.cuda),
            self.with_cuda,
            self.cuda_arch_list,
            self.cflags,
            self.cuda_cflags,
            self.ldflags,
            sys.version_info[:2],
            platform.machine(),
            sys.platform,
            os.environ.get("CXX", ""),
        ]
        h.update(json.dumps(meta, default=str).encode())
        return h.hexdigest()[:20]


# ----------------------------------------------------------------------------------------
# JIT build.

# Runs in a child process so the compiler's output lands in the log file and a crashing
# build cannot take the caller down. cpp_extension.load also loads the result there, which
# checks that it links against this torch.
_BUILD_SCRIPT = r"""
import json, sys
from torch.utils import cpp_extension
spec = json.loads(sys.argv[1])
try:
    cpp_extension.load(is_python_module=False, verbose=True, **spec)
except Exception as err:
    print(f"{type(err).__name__}: {err}", flush=True)
    sys.exit(1)
print("mat_fast_native: build complete", flush=True)
"""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held while building; other processes wait on it. The lock file
    stays (deleting it would let a waiter and a newcomer lock different files)."""
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _library_file(directory: Path) -> Path:
    suffix = ".pyd" if os.name == "nt" else ".so"
    return directory / f"{LIBRARY}{suffix}"


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return "(no build log)"
    tail = text[-lines:]
    first_error = next((line for line in text if "error" in line.lower()), None)
    if first_error is not None and first_error not in tail:
        tail = [first_error, "..."] + tail
    return "\n".join("    " + line for line in tail)


def _preflight() -> Optional[str]:
    """A sentence if the toolchain obviously cannot build (checked before spawning)."""
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "building the native kernels needs ninja (pip install ninja)"
    compiler = os.environ.get("CXX", "cl" if os.name == "nt" else "c++")
    if shutil.which(compiler) is None:
        return (
            f"building the native kernels needs a C++ compiler; {compiler!r} is not on PATH "
            "(set CXX)"
        )
    return None


def build(config: Optional[BuildConfig] = None) -> Path:
    """Build the library for ``config`` (default: this machine) unless it is cached;
    return the path of the shared library. Raises :class:`NativeBuildError`."""
    config = config or BuildConfig.default()
    snapshot = config.read_sources()
    key = config.key(snapshot)
    final = config.cache / f"{LIBRARY}-{key}"
    library = _library_file(final)
    if library.is_file():
        with contextlib.suppress(OSError):
            os.utime(final)  # last use, for _prune_cache
        return library
    if not settings.native_builds_allowed():
        raise NativeBuildError(
            f"no build of {LIBRARY} in {config.cache} for this configuration, and "
            f"{settings.NO_BUILD}=1 forbids compiling one (unset it to build once)"
        )
    reason = _preflight()
    if reason is not None:
        raise NativeBuildError(reason)
    config.cache.mkdir(parents=True, exist_ok=True)
    failed_log = config.cache / f"{LIBRARY}-{key}.failed.log"
    with _file_lock(config.cache / f"{LIBRARY}-{key}.lock"):
        if library.is_file():  # another process built it while we waited
            return library
        tmp = Path(tempfile.mkdtemp(prefix=f".{LIBRARY}-{key}-", dir=config.cache))
        log_path = tmp / "build.log"
        log.warning(
            "mat_fast: compiling the native kernels (once per machine and torch "
            "version, about a minute); log: %s (%s if it fails)",
            final / "build.log",
            failed_log,
        )
        try:
            src = tmp / "src"
            src.mkdir()
            for name, data in snapshot.items():  # the very bytes the key hashed
                (src / name).write_bytes(data)
            spec = dict(
                name=LIBRARY,
                sources=[str(src / name) for name in config.sources()],
                build_directory=str(tmp),
                extra_include_paths=[str(src)],
                extra_cflags=list(config.cflags),
                extra_ldflags=list(config.ldflags),
                extra_cuda_cflags=list(config.cuda_cflags),
                with_cuda=config.with_cuda,
            )
            env = dict(os.environ)
            if config.with_cuda and config.cuda_arch_list:
                env["TORCH_CUDA_ARCH_LIST"] = config.cuda_arch_list
            with open(log_path, "w") as log_file:
                log_file.write(f"# mat_fast_native build, key {key}, torch {torch.__version__}\n")
                log_file.flush()
                result = subprocess.run(
                    [sys.executable, "-c", _BUILD_SCRIPT, json.dumps(spec)],
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            if result.returncode != 0 or not _library_file(tmp).is_file():
                shutil.copyfile(log_path, failed_log)
                raise NativeBuildError(
                    f"compiling the native kernels failed; the compiler's output ends with:\n"
                    f"{_log_tail(failed_log)}\n(full log: {failed_log})",
                    failed_log,
                )
            if final.exists() and not library.is_file():  # a stale, incomplete entry
                shutil.rmtree(final)
            try:
                os.rename(tmp, final)  # atomic: others see no entry or a complete one
            except OSError:
                if not library.is_file():  # (without flock another process may have won)
                    raise
            _prune_cache(config.cache, keep=final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        failed_log.unlink()
    log.info("mat_fast: native kernels built: %s", library)
    return library


def _prune_cache(cache: Path, keep: Path) -> None:
    """Remove all but the CACHE_ENTRIES_KEPT most recently used entries of the JIT cache
    (``keep``, just built, counts as one), and hidden temporary directories left for
    ABANDONED_AFTER_S by killed builds. Builds in progress are hidden temporary directories
    younger than that and are never touched; a process that already loaded a removed
    library keeps its mapping, and one that needs it again rebuilds it."""

    def last_use(path: Path) -> Optional[float]:
        try:
            return path.stat().st_mtime
        except OSError:  # another process removed it meanwhile
            return None

    # Best effort throughout: the build has succeeded, and another process pruning at the
    # same time may remove entries under our feet.
    used = [(last_use(p), p) for p in cache.glob(f"{LIBRARY}-*") if p.is_dir() and p != keep]
    entries = [p for t, p in sorted((u for u in used if u[0] is not None), reverse=True)]
    for old in entries[CACHE_ENTRIES_KEPT - 1 :]:
        trash = cache / f".trash-{old.name}-{os.getpid()}"
        try:
            os.rename(old, trash)  # atomic: no one sees a half-deleted entry
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        for leftover in (f"{old.name}.lock", f"{old.name}.failed.log"):
            with contextlib.suppress(OSError):
                (cache / leftover).unlink()
        log.info("mat_fast: removed an old native build from the cache: %s", old)
    now = time.time()
    for hidden in list(cache.glob(f".{LIBRARY}-*")) + list(cache.glob(".trash-*")):
        mtime = last_use(hidden)
        if hidden.is_dir() and mtime is not None and now - mtime > ABANDONED_AFTER_S:
            shutil.rmtree(hidden, ignore_errors=True)
            log.info("mat_fast: removed an abandoned build directory: %s", hidden)


# ----------------------------------------------------------------------------------------
# Loading: once per process (two copies would register the same operators twice).

_lock = threading.RLock()
_loaded: Optional[str] = None  # what was loaded: AOT module name or library path
_failures: Dict[tuple, str] = {}  # config identity -> reason it cannot load


def is_loaded() -> bool:
    """Whether the operators are registered in this process."""
    return _loaded is not None


def _config_identity() -> tuple:
    # What selects the library before one is loaded, cheaply (no hashing): a failure is
    # remembered per identity, so pointing MAT_FAST_CACHE elsewhere retries.
    return (kernel_dir(), settings.cache_root(), settings.native_builds_allowed())


def _aot_staleness(origin: Optional[str]) -> Optional[str]:
    """Why the ahead-of-time build at ``origin`` does not match the kernel sources beside
    the package, or None when it does (or when there are no sources to compare with)."""
    kernels = kernel_dir()
    if kernels is None or origin is None:
        return None  # nothing to build from instead: the prebuilt library is all there is
    recorded = Path(origin).with_name(AOT_DIGEST_FILE)
    try:
        built_from = recorded.read_text().strip()
    except OSError:
        return f"it has no record of the sources it was built from ({recorded} is missing)"
    if built_from != source_digest(kernels):
        return f"the kernel sources in {kernels} changed after it was built"
    return None


def _load_aot() -> bool:
    """Import the ahead-of-time build if one is installed and matches the kernel sources;
    whether that worked."""
    spec = importlib.util.find_spec(AOT_MODULE)
    if spec is None:
        return False
    stale = _aot_staleness(spec.origin)
    if stale is not None:
        # Checked before importing: an imported library's operators cannot be replaced.
        log.warning(
            "mat_fast: ignoring the prebuilt %s: %s. The kernels are built just in "
            "time instead; to prebuild them again, reinstall with MAT_FAST_BUILD_EXT=1 "
            "(see the README)",
            AOT_MODULE,
            stale,
        )
        return False
    try:
        importlib.import_module(AOT_MODULE)
    except Exception as err:  # noqa: BLE001 - e.g. built against another torch: JIT instead
        log.info(
            "mat_fast: ignoring the prebuilt %s (%s: %s); building the kernels instead",
            AOT_MODULE,
            type(err).__name__,
            err,
        )
        return False
    return True


def load() -> str:
    """Register the operators in this process (AOT build, else JIT build); returns what was
    loaded. Raises :class:`NativeBuildError` with the reason it cannot."""
    global _loaded
    with _lock:
        if _loaded is not None:
            # Whatever the environment says now (say MAT_FAST_CACHE changed): the operators
            # are registered, and a process cannot register a second copy of them.
            return _loaded
        identity = _config_identity()
        if identity in _failures:
            raise NativeBuildError(_failures[identity])
        try:
            if _load_aot():
                _loaded = AOT_MODULE
                return _loaded
            library = build()
            torch.ops.load_library(str(library))
            _loaded = str(library)
            return _loaded
        except NativeBuildError as err:
            error = err
        except Exception as err:  # noqa: BLE001 - loading must fail with a reason, not a crash
            error = NativeBuildError(f"loading {LIBRARY} failed: {type(err).__name__}: {err}")
            error.__cause__ = err
        _failures[identity] = error.reason
        # Once per configuration, where default logging shows it: under 'auto' the backend
        # falls back without raising, and this is how users learn why it is slow.
        log.warning(
            "mat_fast: the native kernels ('cpu'/'cuda' backends) are unavailable: %s", error.reason
        )
        raise error


def describe() -> str:
    """One line for ``mat-fast info``: the library loaded and where it came from, or why
    none loads (asking may build it once)."""
    try:
        library = load()
    except NativeBuildError as err:
        return f"unavailable: {err.reason}"
    origin = "prebuilt" if library == AOT_MODULE else "built just in time"
    return f"{library} ({origin})"


def _has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{LIBRARY}::{op}", dispatch_key)


_ready: set = set()  # backend names known to work: the fast path


def probe(name: str, device_type: str) -> Optional[str]:
    """None if backend ``name`` ('cpu' or 'cuda') can run on ``device_type``, else why not.

    The first call builds or loads the library (see the module docstring); later calls
    return the remembered answer (this runs on every op call, so it stays cheap).
    """
    if name not in ("cpu", "cuda"):
        return f"{LIBRARY} implements the 'cpu' and 'cuda' backends, not {name!r}"
    if name in _ready and _loaded is not None:
        return None
    try:
        load()
    except NativeBuildError as err:
        return err.reason
    dispatch_key = "CUDA" if name == "cuda" else "CPU"
    if not _has_kernel("window_attention", dispatch_key):
        hint = " (torch without CUDA, or no CUDA toolkit: set CUDA_HOME)" if name == "cuda" else ""
        return f"{LIBRARY} was built without {dispatch_key} kernels{hint}"
    _ready.add(name)
    return None


def require(device_type: str = "cpu") -> None:
    """Make sure the operators are loaded with kernels for ``device_type``; raise
    :class:`mat_fast.BackendUnavailableError` with the reason otherwise (the wrappers call
    this, so using them without a library fails with one clear message)."""
    name = "cuda" if device_type == "cuda" else "cpu"
    reason = probe(name, device_type)
    if reason is not None:
        raise BackendUnavailableError(f"mat_fast native kernels are unavailable: {reason}")


_python_side_done: set = set()


def register_python_side_once(register_python_side) -> None:
    """Run a wrapper module's Python-side registration (fakes, autograd) exactly once."""
    with _lock:
        if register_python_side not in _python_side_done:
            register_python_side()
            _python_side_done.add(register_python_side)


def operators(device_type: str, register_python_side):
    """``torch.ops.mat_fast_native`` once the library is loaded for ``device_type``, after
    running a wrapper module's one-time Python-side registration (fakes, autograd)."""
    if torch.compiler.is_compiling():
        # Traced code only reaches here after mat_fast.backend resolved this backend in plain
        # Python, which loaded the library (and the wrapper registered its fakes on import).
        return torch.ops.mat_fast_native
    require(device_type)
    register_python_side_once(register_python_side)
    return torch.ops.mat_fast_native
