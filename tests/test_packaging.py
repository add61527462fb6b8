"""Packaging: what a wheel ships, and the ahead-of-time build (``MAT_FAST_BUILD_EXT=1``).

Each test builds a wheel with ``pip wheel --no-build-isolation`` (the installed torch and
setuptools, no download) from a copy of the files a source distribution holds, extracts
it, and imports it in a child process from that folder (``PYTHONPATH``; the working
directory is elsewhere, so the source tree is not imported by accident).

* plain wheel: every kernel source ships as ``mat_fast/_kernels``, the JIT build finds it
  there and keys its cache exactly as for the source tree (same sources, same entry); no
  prebuilt library is in it;
* prebuilt wheel (slow, one C++ build): ``mat_fast._C`` and the digest of its sources ship;
  it is what loads, and it matches the reference ops; once a kernel source changes, or the
  digest is missing, it is ignored with a warning that says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mat_fast.ops import native_build, native_sources

ROOT = Path(__file__).resolve().parents[1]
# What MANIFEST.in and pyproject.toml put in a source distribution, and nothing built.
SDIST_FILES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
SDIST_DIRS = ("mat_fast", "kernels")
BUILT = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", native_sources.AOT_DIGEST_FILE)

needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)


def _build_wheel(tmp_path: Path, prebuild: bool) -> Path:
    """Build a wheel of this tree (prebuilt kernels or not); return its extracted folder."""
    source = tmp_path / "src"
    source.mkdir()
    for name in SDIST_FILES:
        shutil.copy2(ROOT / name, source / name)
    for name in SDIST_DIRS:
        shutil.copytree(ROOT / name, source / name, ignore=BUILT)
    env = dict(os.environ)
    env.pop("MAT_FAST_BUILD_EXT", None)
    if prebuild:
        env["MAT_FAST_BUILD_EXT"] = "1"
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(dist),
            str(source),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    (wheel,) = dist.glob("mat_fast-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def _run_installed(site: Path, code: str, tmp_path: Path) -> dict:
    """Run ``code`` against the extracted wheel; it prints one JSON object last."""
    env = dict(os.environ, PYTHONPATH=str(site), MAT_FAST_CACHE=str(tmp_path / "cache"))
    prelude = textwrap.dedent(f"""
        import json, logging, sys
        import mat_fast
        from pathlib import Path
        assert Path(mat_fast.__file__).is_relative_to({str(site)!r}), mat_fast.__file__
        from mat_fast.ops import native_build, native_sources
    """)
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _kernel_files() -> list:
    return sorted(p.name for p in (ROOT / "kernels").iterdir() if p.is_file())


def test_wheel_ships_kernel_sources_and_jit_keys_them_as_the_source_tree(tmp_path):
    site = _build_wheel(tmp_path, prebuild=False)
    shipped = sorted(p.name for p in (site / "mat_fast" / "_kernels").iterdir())
    assert shipped == _kernel_files()
    assert (site / "mat_fast" / "assets" / "sample.png").is_file()
    for page_file in ("index.html", "app.js", "mask.js", "app.css"):  # mat-fast serve's page
        assert (site / "mat_fast" / "serve" / "static" / page_file).is_file()
    assert not list((site / "mat_fast").glob("_C*")), (
        "a plain wheel must not carry a prebuilt library"
    )

    seen = _run_installed(
        site,
        """
        config = native_build.BuildConfig.default()
        print(json.dumps(dict(kernels=str(native_build.kernel_dir()), key=config.key(),
                              sources=config.sources())))
    """,
        tmp_path,
    )
    assert seen["kernels"] == str(site / "mat_fast" / "_kernels")
    here = native_build.BuildConfig.default()
    assert seen["sources"] == here.sources()
    # same sources and toolchain: a wheel user reuses the cache entry a source checkout built
    assert seen["key"] == here.key()


PARITY_AND_STALENESS = """
    import torch
    from mat_fast.ops.partial_conv import partial_conv_mask
    from mat_fast.ops.window_attention import window_attention

    loaded = native_build.load()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 16 * 16, 48) for _ in range(3))
    mask = (torch.rand(2, 16 * 16, 1) > 0.6).float()
    errors = {}
    for shift in (0, 4):
        got = window_attention(q, k, v, mask, (16, 16), 8, shift, 3, backend_name="cpu")
        want = window_attention(q, k, v, mask, (16, 16), 8, shift, 3, backend_name="reference")
        errors[f"attention s{shift}"] = float((got[0] - want[0]).abs().max())
        errors[f"mask s{shift}"] = float((got[1] - want[1]).abs().max())
    image_mask = (torch.rand(2, 1, 33, 31) > 0.5).float()
    for name, a, b in zip(("update", "ratio"), partial_conv_mask(image_mask, 3, 2, 1, backend_name="cpu"),
                          partial_conv_mask(image_mask, 3, 2, 1, backend_name="reference")):
        errors[name] = float((a - b).abs().max())
    print(json.dumps(dict(loaded=loaded, errors=errors)))
"""

STALE_CHECK = """
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("mat_fast").addHandler(handler)
    print(json.dumps(dict(used=native_build._load_aot(), loaded=native_build.is_loaded(),
                          warnings=records)))
"""


@pytest.mark.slow
@needs_compiler
def test_prebuilt_wheel_loads_its_library_and_ignores_it_once_sources_change(tmp_path):
    site = _build_wheel(tmp_path, prebuild=True)
    package = site / "mat_fast"
    assert len(list(package.glob("_C*.so")) + list(package.glob("_C*.pyd"))) == 1
    digest = package / native_sources.AOT_DIGEST_FILE
    assert digest.read_text().strip() == native_sources.source_digest(ROOT / "kernels")

    seen = _run_installed(site, PARITY_AND_STALENESS, tmp_path)
    assert seen["loaded"] == native_build.AOT_MODULE
    assert not list((tmp_path / "cache").glob("ext/*/*.so")), (
        "the prebuilt library should spare a JIT build"
    )
    for what, error in seen["errors"].items():
        assert error <= 1e-5, f"{what}: prebuilt kernel differs from the reference by {error}"

    # An edited kernel (what an editable install sees after a change) must not run stale code.
    with open(package / "_kernels" / "common.h", "a") as header:
        header.write("\n// edited after the build\n")
    seen = _run_installed(site, STALE_CHECK, tmp_path)
    assert seen["used"] is False and seen["loaded"] is False
    assert any(
        "changed after it was built" in w and "MAT_FAST_BUILD_EXT=1" in w for w in seen["warnings"]
    ), seen["warnings"]

    # A library without its record is of unknown provenance: same treatment.
    digest.unlink()
    seen = _run_installed(site, STALE_CHECK, tmp_path)
    assert seen["used"] is False
    assert any("no record of the sources" in w for w in seen["warnings"]), seen["warnings"]
