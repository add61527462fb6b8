"""The JIT build of the native (C++ / CUDA) extension and its cache.

* a broken build falls back under 'auto' (logged once, with the log's path) and raises
  under an explicit 'cpu' with the compiler's error;
* a loaded library keeps working when the cache setting changes;
* two processes building into one cache at once both succeed, compiling once (a tiny
  library, and, marked slow, the real kernels);
* the cache keeps its most recently used entries and sweeps abandoned builds; a build
  compiles exactly the sources its key hashed; a cache hit marks the entry used.

The kernels' numbers against their references are in test_window_attention.py and
test_partial_conv.py (the 'cpu' and 'cuda' backend parameters).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mat_fast
from mat_fast import backend
from mat_fast.errors import NativeBuildError
from mat_fast.ops import native_build
from mat_fast.ops.bias_act.reference import bias_act_reference
from mat_fast.ops.window_attention.reference import window_attention_reference

from ..helpers.paths import ROOT

pytestmark = pytest.mark.usefixtures("default_backend")

#: The 'cpu' backend's ops whose kernels are native, and their packages.
NATIVE_CPU_OPS = {
    "window_attention": "window_attention",
    "partial_conv_mask": "partial_conv",
    "partial_conv_epilogue": "partial_conv",
}


def test_broken_build_leaves_the_cpu_backend_its_pytorch_paths_and_the_reference(
    native_ops, tmp_path, monkeypatch, caplog
):
    if native_build._loaded == native_build.AOT_MODULE:
        pytest.skip("an ahead-of-time build is loaded; this process cannot load another")
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "mat_fast_ops.cpp").write_text(
        'static_assert(false, "mat_fast broken-build probe");\n'
    )
    monkeypatch.setattr(native_build, "kernel_dir", lambda: kernels)
    monkeypatch.setattr(native_build, "_load_aot", lambda: False)
    monkeypatch.setenv("MAT_FAST_CACHE", str(tmp_path / "cache"))
    # As in a fresh process: this one has the real library loaded already.
    monkeypatch.setattr(native_build, "_loaded", None)
    monkeypatch.setattr(native_build, "_failures", {})
    monkeypatch.setattr(native_build, "_ready", set())
    backend._logged_fallbacks.clear()

    # The 'cpu' backend needs no compiler: auto still picks it, and without the native
    # layer its attention and partial-conv ops run their reference twins.
    monkeypatch.setattr(backend, "_REGISTRY", {k: dict(v) for k, v in backend._REGISTRY.items()})
    monkeypatch.setattr(backend, "_LAZY", {k: dict(v) for k, v in backend._LAZY.items()})
    for op, package in NATIVE_CPU_OPS.items():  # as before their first use
        backend._REGISTRY[op].pop("cpu", None)
        backend._LAZY[op]["cpu"] = (f"mat_fast.ops.{package}.native:{op}_native", "native")
    with caplog.at_level(logging.INFO, logger="mat_fast"):
        assert backend.resolve("cpu") == "cpu"
        for _ in range(2):  # remembered: neither rebuilt nor re-logged
            for op in NATIVE_CPU_OPS:
                assert backend.implementation(op, "cpu") is backend._REGISTRY[op]["reference"]
        assert backend.implementation("bias_act", "cpu") is not bias_act_reference
    logs = list((tmp_path / "cache" / "ext").glob("*.failed.log"))
    assert len(logs) == 1
    reason = backend.kernel_layers("cpu")["native"]
    assert reason is not None and str(logs[0]) in reason
    # Seen with default logging (WARNING), once, naming the log that exists.
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    unavailable = [m for m in warnings if "native kernels" in m and "unavailable" in m]
    assert len(unavailable) == 1 and str(logs[0]) in unavailable[0], warnings
    compiling = [m for m in warnings if m.startswith("mat_fast: compiling the native kernels (")]
    assert len(compiling) == 1 and str(logs[0]) in compiling[0], compiling
    assert "mat_fast broken-build probe" in logs[0].read_text()
    assert not [p for p in (tmp_path / "cache" / "ext").iterdir() if p.is_dir()], (
        "temp build dirs left"
    )

    with mat_fast.use_backend("cpu"):  # an explicit 'cpu' runs too, on the same terms
        q = torch.randn(1, 16, 12)
        out, _ = mat_fast.ops.window_attention.window_attention(q, q, q, None, (4, 4), 4, 0, 2)
    torch.testing.assert_close(out, window_attention_reference(q, q, q, None, (4, 4), 4, 0, 2)[0])
    with pytest.raises(mat_fast.BackendUnavailableError) as info:  # the native kernels alone
        native_build.require("cpu")
    message = str(info.value)
    assert "mat_fast broken-build probe" in message and str(logs[0]) in message


def test_loaded_library_survives_a_changed_cache_setting(native_ops, tmp_path, monkeypatch):
    """Once the operators are registered, pointing MAT_FAST_CACHE elsewhere neither builds
    again nor turns the backend off (a process cannot load a second copy anyway)."""

    def no_build(*args, **kwargs):
        raise AssertionError("built again although the library is loaded")

    monkeypatch.setattr(native_build, "build", no_build)
    monkeypatch.setenv("MAT_FAST_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(native_build, "_ready", set())
    assert native_build.probe("cpu", "cpu") is None
    q = torch.randn(1, 16, 12)
    out, _ = mat_fast.ops.window_attention.window_attention(
        q, q, q, None, (4, 4), 4, 0, 2, backend_name="cpu"
    )
    torch.testing.assert_close(out, window_attention_reference(q, q, q, None, (4, 4), 4, 0, 2)[0])
    assert not (tmp_path / "elsewhere").exists()


_BUILD_ONE = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.WARNING)
    from mat_fast.ops import native_build
    if sys.argv[1] != "-":
        native_build.kernel_dir = lambda: Path(sys.argv[1])
    print("LIBRARY", native_build.build())
""")


def _build_twice_at_once(kernels, cache: Path):
    env = dict(
        os.environ,
        MAT_FAST_CACHE=str(cache),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD_ONE, str(kernels)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=900) + (p.returncode,) for p in procs]
    for _, err, rc in results:
        assert rc == 0, err[-3000:]
    libraries = {
        line.split(" ", 1)[1]
        for out, _, _ in results
        for line in out.splitlines()
        if line.startswith("LIBRARY ")
    }
    assert len(libraries) == 1 and Path(libraries.pop()).is_file()
    compiled = sum("compiling the native kernels" in err for _, err, _ in results)
    assert compiled == 1, "both processes compiled"
    entries = list((cache / "ext").iterdir())
    assert len([p for p in entries if p.is_dir()]) == 1, entries  # no temp dirs left over
    assert not [p for p in entries if p.name.endswith(".failed.log")]


@pytest.mark.slow
def test_concurrent_builds_share_one_compile(tmp_path):
    """Two processes build into one empty cache at once: one compiles, the other waits on
    the lock and loads the result. (A tiny library: the mechanism does not care. Slow all
    the same: ~20 s of compiling against torch's headers.)"""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "mat_fast_ops.cpp").write_text(
        textwrap.dedent("""
        #include <torch/library.h>
        TORCH_LIBRARY(mat_fast_native_concurrency_probe, m) { m.def("noop(Tensor x) -> Tensor"); }
    """)
    )
    _build_twice_at_once(kernels, tmp_path / "cache")


@pytest.mark.slow
def test_concurrent_builds_of_the_real_kernels(tmp_path):
    _build_twice_at_once("-", tmp_path / "cache")


def test_jit_cache_keeps_the_most_recently_used_entries(tmp_path):
    """After a build, entries past CACHE_ENTRIES_KEPT (oldest last use first) are removed
    with their lock and failed-build files, and so are temporary directories abandoned by
    killed builds; builds in progress and other files stay."""
    cache = tmp_path / "ext"
    cache.mkdir()
    lib = native_build._library_file(Path("."))
    entries = []
    for age in range(7):  # entry 0 is the newest
        entry = cache / f"{native_build.LIBRARY}-{age:020x}"
        entry.mkdir()
        (entry / lib.name).write_bytes(b"")
        (cache / f"{entry.name}.lock").write_bytes(b"")
        os.utime(entry, (1e9 - age * 1000, 1e9 - age * 1000))
        entries.append(entry)
    (cache / f"{entries[6].name}.failed.log").write_text("old failure")
    building = cache / f".{native_build.LIBRARY}-feedfacefeedfacefeed-tmp"  # a build in progress
    building.mkdir()
    abandoned = [
        cache / f".{native_build.LIBRARY}-deadbeefdeadbeefdead-old",  # killed builds
        cache / f".trash-{native_build.LIBRARY}-0123-999",
    ]
    for path in abandoned:
        (path / "src").mkdir(parents=True)
        old = time.time() - native_build.ABANDONED_AFTER_S - 60
        os.utime(path, (old, old))
    (cache / "unrelated.txt").write_text("keep me")
    just_built = entries[5]  # oldest mtime, but it is the one just built
    native_build._prune_cache(cache, keep=just_built)
    kept = {p.name for p in cache.iterdir()}
    survivors = [just_built] + entries[: native_build.CACHE_ENTRIES_KEPT - 1]
    assert {
        p.name for p in cache.iterdir() if p.name.startswith(native_build.LIBRARY) and p.is_dir()
    } == {e.name for e in survivors}
    assert {e.name + ".lock" for e in survivors} <= kept
    for gone in set(entries) - set(survivors):
        assert (
            not (cache / f"{gone.name}.lock").exists()
            and not (cache / f"{gone.name}.failed.log").exists()
        )
    assert building.is_dir() and (cache / "unrelated.txt").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".trash")]
    assert not [p for p in abandoned if p.exists()]


def test_build_compiles_the_very_sources_its_key_hashed(tmp_path, monkeypatch):
    """A source edited between hashing and compiling must not land under the old key:
    the build compiles the bytes it hashed (the compiler is faked here)."""
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "mat_fast_ops.cpp").write_text("// version 1\n")
    config = dataclasses.replace(
        native_build.BuildConfig.default(),
        kernels=kernels,
        cache=tmp_path / "cache",
        with_cuda=False,
    )
    hashed = config.read_sources()
    read_sources = native_build.BuildConfig.read_sources

    def read_then_edit(self):  # someone saves the file right after the build read it
        result = read_sources(self)
        (kernels / "mat_fast_ops.cpp").write_text("// version 2\n")
        return result

    compiled = {}

    def fake_compiler(cmd, cwd, **kwargs):
        compiled.update({p.name: p.read_bytes() for p in (Path(cwd) / "src").iterdir()})
        native_build._library_file(Path(cwd)).write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(native_build.BuildConfig, "read_sources", read_then_edit)
    monkeypatch.setattr(native_build, "_preflight", lambda: None)
    monkeypatch.setattr(native_build.subprocess, "run", fake_compiler)
    library = native_build.build(config)
    assert compiled == hashed
    assert library.parent.name == f"{native_build.LIBRARY}-{config.key(hashed)}"


def test_jit_cache_hit_marks_the_entry_used(tmp_path):
    config = dataclasses.replace(native_build.BuildConfig.default(), cache=tmp_path)
    entry = tmp_path / f"{native_build.LIBRARY}-{config.key()}"
    entry.mkdir()
    native_build._library_file(entry).write_bytes(b"")
    os.utime(entry, (1e9, 1e9))
    assert native_build.build(config) == native_build._library_file(entry)
    assert entry.stat().st_mtime > 1e9 + 1000


def test_no_build_setting_loads_a_cached_build_and_never_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("MAT_FAST_NO_BUILD", "1")
    config = dataclasses.replace(native_build.BuildConfig.default(), cache=tmp_path / "ext")
    with pytest.raises(NativeBuildError, match="MAT_FAST_NO_BUILD=1 forbids"):
        native_build.build(config)
    assert not (tmp_path / "ext").exists()  # no lock, temp folder or log: nothing started
    entry = tmp_path / "ext" / f"{native_build.LIBRARY}-{config.key()}"
    entry.mkdir(parents=True)
    native_build._library_file(entry).write_bytes(b"")
    assert native_build.build(config) == native_build._library_file(entry)  # cached: loads
