"""Packaging. Metadata lives in pyproject.toml; this file adds the native kernels.

* Every build copies ``kernels/`` (in sdists via MANIFEST.in) into the package as ``mat_fast/_kernels`` so that an
  installed wheel can compile the 'cpu'/'cuda' backends just in time (see
  ``mat_fast/ops/native_build.py``).
* ``MAT_FAST_BUILD_EXT=1 pip install --no-build-isolation .`` also compiles them ahead of
  time into ``mat_fast._C`` (a CUDAExtension when torch has CUDA and a toolkit is found,
  else a CppExtension), with the digest of the sources it came from beside it, so that
  the package ignores it once those sources change. A plain install never needs a compiler.
"""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "kernels"


class build_py_with_kernels(build_py):
    def run(self):
        super().run()
        if KERNELS.is_dir():
            shutil.copytree(
                KERNELS, Path(self.build_lib) / "mat_fast" / "_kernels", dirs_exist_ok=True
            )


def native_extension():
    import torch
    from torch.utils import cpp_extension

    cpp = sorted(str(p.relative_to(ROOT)) for p in KERNELS.glob("*.cpp"))
    cu = sorted(str(p.relative_to(ROOT)) for p in KERNELS.glob("*.cu"))
    with_cuda = bool(cu) and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    cxx = ["-O3", "-DMAT_FAST_PYTHON_MODULE"]
    link = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        cxx.append("-fopenmp")  # at::parallel_for is header code: without it, one thread
        link.append("-fopenmp")
    kind = cpp_extension.CUDAExtension if with_cuda else cpp_extension.CppExtension
    return kind(
        "mat_fast._C",
        cpp + (cu if with_cuda else []),
        include_dirs=[str(KERNELS)],
        extra_link_args=link,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]} if with_cuda else cxx,
    )


def native_sources_module():
    """mat_fast/ops/native_sources.py on its own (the package is not importable while it is
    being built): the one definition of the source digest."""
    spec = importlib.util.spec_from_file_location(
        "_mat_fast_native_sources", ROOT / "mat_fast" / "ops" / "native_sources.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ext_modules, cmdclass = [], {"build_py": build_py_with_kernels}
if os.environ.get("MAT_FAST_BUILD_EXT") == "1":
    from torch.utils.cpp_extension import BuildExtension

    class build_ext_with_digest(BuildExtension):
        def run(self):
            super().run()
            native_sources = native_sources_module()
            for ext in self.extensions:
                # get_ext_fullpath honours --inplace (editable installs) and build_lib (wheels)
                digest = Path(self.get_ext_fullpath(ext.name)).with_name(
                    native_sources.AOT_DIGEST_FILE
                )
                digest.write_text(native_sources.source_digest(KERNELS) + "\n")

    ext_modules.append(native_extension())
    cmdclass["build_ext"] = build_ext_with_digest

setup(ext_modules=ext_modules, cmdclass=cmdclass)
