"""Which CUDA architectures a JIT build targets, without creating a CUDA context.

A process that only wants the 'cpu' backend on a GPU machine still builds (and keys its
cache on) the CUDA part. Asking torch for the GPUs' capabilities there would initialise
CUDA in the caller: hundreds of MB of GPU memory and no CUDA in forked workers. These
tests fake a GPU machine on CPU torch; the real query runs on the GPU box (tests marked gpu).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from mat_fast.ops import native_sources


@pytest.fixture
def fake_gpu_machine(monkeypatch):
    """CUDA available but not initialised; the in-process capability query must not run."""
    native_sources._visible_gpu_archs.cache_clear()
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)

    def no_context(*args):
        raise AssertionError("the capability query would create a CUDA context in this process")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_context)
    yield monkeypatch
    native_sources._visible_gpu_archs.cache_clear()


def _child_answers(monkeypatch, stdout: str = "", error: Exception = None) -> list:
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if error is not None:
            raise error
        return SimpleNamespace(stdout=stdout, returncode=0)

    monkeypatch.setattr(native_sources.subprocess, "run", run)
    return calls


def test_arch_list_comes_from_a_child_process_when_cuda_is_not_initialised(fake_gpu_machine):
    calls = _child_answers(fake_gpu_machine, stdout="[[8, 6], [9, 0]]\n")
    assert native_sources.cuda_arch_list() == "8.6;9.0"
    assert native_sources.cuda_arch_list() == "8.6;9.0"
    assert len(calls) == 1, "asked once per process"
    assert calls[0][0] == sys.executable


def test_arch_list_asks_torch_directly_once_cuda_is_initialised(fake_gpu_machine):
    calls = _child_answers(fake_gpu_machine, stdout="[]")
    fake_gpu_machine.setattr(torch.cuda, "is_initialized", lambda: True)
    fake_gpu_machine.setattr(torch.cuda, "device_count", lambda: 2)
    fake_gpu_machine.setattr(torch.cuda, "get_device_capability", lambda i: ((9, 0), (8, 0))[i])
    assert native_sources.cuda_arch_list() == "8.0;9.0"
    assert calls == []


def test_arch_list_environment_wins_and_no_gpu_means_empty(fake_gpu_machine):
    calls = _child_answers(fake_gpu_machine, stdout="[[9, 0]]")
    fake_gpu_machine.setenv("TORCH_CUDA_ARCH_LIST", " 8.0;9.0+PTX ")
    assert native_sources.cuda_arch_list() == "8.0;9.0+PTX"
    fake_gpu_machine.delenv("TORCH_CUDA_ARCH_LIST")
    fake_gpu_machine.setattr(torch.cuda, "is_available", lambda: False)
    assert native_sources.cuda_arch_list() == ""
    assert calls == []


@pytest.mark.parametrize(
    "answer",
    [
        dict(stdout="not json"),
        dict(stdout=""),
        dict(error=subprocess.TimeoutExpired("python", 300)),
        dict(error=subprocess.CalledProcessError(1, "python")),
    ],
)
def test_a_failed_arch_query_builds_for_every_arch_and_says_so(fake_gpu_machine, caplog, answer):
    _child_answers(fake_gpu_machine, **answer)
    with caplog.at_level(logging.INFO, logger="mat_fast"):
        assert native_sources.cuda_arch_list() == ""
    assert any("could not query the GPUs' architectures" in r.getMessage() for r in caplog.records)


def _expected_archs() -> list:
    return sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})


def test_the_capability_script_runs_against_this_torch():
    # The real child on whatever this machine has (no GPU in CI: an empty list).
    proc = subprocess.run(
        [sys.executable, "-c", native_sources._CAPABILITY_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert [tuple(cap) for cap in json.loads(proc.stdout)] == _expected_archs()


@pytest.mark.gpu
def test_arch_query_leaves_cuda_uninitialised_on_a_gpu():
    code = (
        "import json, torch; from mat_fast.ops import native_sources; "
        "archs = native_sources.cuda_arch_list(); "
        "print(json.dumps([archs, torch.cuda.is_initialized()]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=env,
    )
    archs, initialised = json.loads(proc.stdout.strip().splitlines()[-1])
    assert initialised is False
    assert archs == ";".join(f"{major}.{minor}" for major, minor in _expected_archs())
