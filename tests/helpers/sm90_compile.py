"""Compile Triton kernels for an H100 (sm_90: PTX, then ptxas) without a GPU.

Triton's interpreter accepts code the real compiler rejects (non-constexpr globals, bad
block shapes, dtype mixes), so each Triton test module also builds its kernels for sm_90.
This runs in a subprocess without TRITON_INTERPRET: one process cannot hold interpreted and
compiled kernels. A test supplies the build loop; the prelude below gives it ``kernels``
(the module at the given path), ``build(fn, types, consts, num_warps)`` and
``resources(compiled)`` (registers, stack, shared memory of the sm_90 cubin).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_PRELUDE = r"""
import importlib.util, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
try:
    import triton.backends.nvidia  # noqa: F401
except ImportError as err:
    print("SKIP", err); sys.exit(0)
spec = importlib.util.spec_from_file_location("kernels", sys.argv[1])
kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kernels)

def build(fn, types, consts, num_warps=4):
    # types: argument name -> Triton type ("*fp16", "fp32", ...); other arguments are i32
    signature = {n: "constexpr" if n in consts else types.get(n, "i32") for n in fn.arg_names}
    constexprs = {(fn.arg_names.index(n),): v for n, v in consts.items()}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    assert compiled.asm["cubin"]
    return compiled

def resources(compiled):
    # registers, stack frame (spills land there) and shared memory per thread/block, as
    # cuobjdump (bundled with Triton's NVIDIA backend) reads them from the cubin: the
    # driver that fills CompiledKernel.n_regs / n_spills needs a GPU.
    import os, re, subprocess, tempfile
    import triton.backends.nvidia as nvidia
    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        report = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True,
                                text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", report)
    assert found, report
    regs, stack, shared, local = (int(g) for g in found.groups())
    return dict(regs=regs, stack=stack, shared=shared, local=local)
"""


def compile_for_sm90(kernels_path: Path, build_loop: str) -> str:
    """Run ``build_loop`` (Python source using ``kernels``, ``build`` and ``resources``) for
    the kernels module at ``kernels_path``; skip when this Triton has no NVIDIA backend.
    Returns what the loop printed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = _PRELUDE + build_loop + '\nprint("OK")\n'
    proc = subprocess.run(
        [sys.executable, "-c", script, str(kernels_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.stdout.startswith("SKIP"):
        pytest.skip(f"this Triton has no NVIDIA backend: {proc.stdout.strip()}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
    return proc.stdout
