"""The CUDA half of the native extension compiles for an H100 (sm_90), without a GPU.

CPU-only torch cannot build a CUDA extension (cpp_extension wants CUDA torch to link
against), so where nvcc is installed this compiles each ``kernels/*.cu`` to an object file
with the flags cpp_extension would use: torch's headers, its NVCC defines, sm_90, and
``-std=c++17`` (what torch 2.11 on the GPU box builds with; newer headers accept it). That
proves the device code and the host-side registration compile - template instantiation,
dtype dispatch, launch bounds - and lets ptxas report registers and spills. Linking and
running need CUDA torch and a GPU: those tests are the ``cuda`` backend parameters (marked
``gpu``) of test_window_attention.py and test_partial_conv.py.

The CPU wheel lacks one generated header, ``c10/cuda/impl/cuda_cmake_macros.h``; a copy
with the single define CUDA builds of torch put there is supplied for the compile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Dict, List

import pytest

from mat_fast.ops import native_build

from ..helpers.paths import ROOT

pytestmark = pytest.mark.slow  # ~75 s of nvcc on two cores

KERNELS = ROOT / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))
ARCH = "sm_90"
DTYPES = ("float", "c10::Half", "c10::BFloat16")


def _nvcc() -> str:
    from torch.utils import cpp_extension

    found = shutil.which("nvcc")
    if found is None and cpp_extension.CUDA_HOME is not None:
        candidate = Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc"
        found = str(candidate) if candidate.exists() else None
    if found is None:
        pytest.skip("nvcc is not installed")
    return found


def _include_flags(shim: Path) -> List[str]:
    from torch.utils import cpp_extension

    torch_includes = [Path(p) for p in cpp_extension.include_paths()]
    if not any((p / "c10" / "cuda" / "CUDAMacros.h").exists() for p in torch_includes):
        pytest.skip("this torch ships no c10/cuda headers")
    generated = Path("c10/cuda/impl/cuda_cmake_macros.h")
    if not any((p / generated).exists() for p in torch_includes):
        (shim / generated).parent.mkdir(parents=True)
        (shim / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    paths = [*torch_includes, shim, Path(sysconfig.get_paths()["include"]), KERNELS]
    return [f"-I{p}" for p in paths]


@pytest.fixture(scope="module")
def ptxas_reports(tmp_path_factory) -> Dict[str, Dict[str, int]]:
    """Compile every .cu at once; map each kernel (demangled) to its spill bytes."""
    from torch.utils import cpp_extension

    # a failure, not a skip: an empty list once hid this whole module (a wrong path)
    assert SOURCES, f"no CUDA sources in {KERNELS}"
    nvcc = _nvcc()
    out = tmp_path_factory.mktemp("cuda_build")
    flags = [
        *_include_flags(out / "shim"),
        *cpp_extension.COMMON_NVCC_FLAGS,
        "-std=c++17",
        f"-arch={ARCH}",
        "-O3",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        f"-DTORCH_EXTENSION_NAME={native_build.LIBRARY}",
        "-Xcompiler",
        "-fPIC",
        "-Xptxas",
        "-v",
        "-w",
    ]
    procs = {
        src.name: subprocess.Popen(
            [nvcc, "-c", str(src), "-o", str(out / f"{src.stem}.o"), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for src in SOURCES
    }
    logs = {name: proc.communicate()[0] for name, proc in procs.items()}
    failed = {name: log for name, log in logs.items() if procs[name].returncode != 0}
    assert not failed, "nvcc failed:\n" + "\n".join(
        f"== {name}\n{log[-4000:]}" for name, log in failed.items()
    )
    reports: Dict[str, Dict[str, int]] = {}
    for log in logs.values():
        reports.update(_parse_ptxas(log))
    return reports


def _parse_ptxas(log: str) -> Dict[str, Dict[str, int]]:
    mangled, spills = [], []
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
        if entry:
            assert entry.group(2) == ARCH, line
            mangled.append(entry.group(1))
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill and len(spills) < len(mangled):
            spills.append(int(spill.group(1)) + int(spill.group(2)))
    assert len(mangled) == len(spills), "unexpected ptxas output:\n" + log[-4000:]
    names = _demangle(mangled)
    return {name: {"spill_bytes": s} for name, s in zip(names, spills)}


def _demangle(symbols: List[str]) -> List[str]:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:  # kernels are matched by their C++ names
        pytest.skip("c++filt (binutils) is not installed")
    if not symbols:
        return symbols
    result = subprocess.run(
        [cxxfilt], input="\n".join(symbols), capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def _kernels(reports, name: str, template_args: str = "") -> List[str]:
    return [k for k in reports if f"{name}<" in k and template_args in k]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kernel",
    [
        "window_attention_fwd_kernel",
        "window_attention_bwd_kernel",
        "window_mask_update_kernel",
        "partial_conv_mask_kernel",
        "partial_conv_epilogue_kernel",
    ],
)
def test_every_kernel_has_sm90_code_per_dtype(ptxas_reports, kernel, dtype):
    assert _kernels(ptxas_reports, kernel, f"<{dtype}"), (
        f"no {ARCH} code for {kernel}<{dtype}>; compiled: {sorted(ptxas_reports)}"
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_mat_head_dim_attention_kernels_do_not_spill(ptxas_reports, dtype):
    # MAT's heads are 30 channels wide: the kMaxDim = 32 instantiation runs every
    # transformer block, so a spill there is a slowdown of the whole network.
    hot = _kernels(ptxas_reports, "window_attention_fwd_kernel", f"<{dtype}, 32>") + _kernels(
        ptxas_reports, "window_attention_bwd_kernel", f"<{dtype}, 32>"
    )
    assert len(hot) == 2, sorted(ptxas_reports)
    spilling = {k: ptxas_reports[k]["spill_bytes"] for k in hot if ptxas_reports[k]["spill_bytes"]}
    assert not spilling, f"register spills on the hot path: {spilling}"


def test_partial_conv_kernels_do_not_spill(ptxas_reports):
    kernels = _kernels(ptxas_reports, "partial_conv_mask_kernel") + _kernels(
        ptxas_reports, "partial_conv_epilogue_kernel"
    )
    # (mask, epilogue NCHW, epilogue channels_last) x fp32/fp16/bf16/fp64
    assert len(kernels) == 12, sorted(ptxas_reports)
    spilling = {
        k: ptxas_reports[k]["spill_bytes"] for k in kernels if ptxas_reports[k]["spill_bytes"]
    }
    assert not spilling, f"register spills: {spilling}"
