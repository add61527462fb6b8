"""mat_fast.cpu_memory: freed CPU memory kept for reuse (glibc), released on request, and
turned on by the Inpainter for CPU work.

The setting is process-wide and cannot be undone, so everything that really sets it runs in
a child process; the logic around mallopt is checked in-process against a fake libc.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from mat_fast import cpu_memory

from .helpers.paths import ROOT

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the malloc knobs are glibc's (Linux)")
MIB = 1 << 20

# Large blocks of a few sizes allocated, written and freed in turn, as in a forward. Prints
# each round's page faults and the resident size before and after release_freed_memory().
WORKLOAD = """
import json, resource, sys
import torch
from mat_fast import cpu_memory

kept = cpu_memory.keep_freed_memory() if sys.argv[1] == "keep" else False

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(96 << 20, dtype=torch.uint8).fill_(1)
    b = torch.empty(24 << 20, dtype=torch.uint8).fill_(2)
    del a
    c = torch.empty(48 << 20, dtype=torch.uint8).fill_(3)
    del b, c
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
held = resident()
released = cpu_memory.release_freed_memory()
print(json.dumps(dict(kept=kept, faults=faults, held=held, after_release=resident(),
                      released=released)))
"""


def _child(code: str, *args: str, env: dict = None) -> dict:
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_glibc
def test_kept_memory_stops_the_page_faults_and_release_returns_it():
    default = _child(WORKLOAD, "default")
    kept = _child(WORKLOAD, "keep")
    assert kept["kept"] is True
    steady_default, steady_kept = sum(default["faults"][-3:]), sum(kept["faults"][-3:])
    if steady_default < 10_000:  # e.g. transparent huge pages always on: nothing to remove
        pytest.skip(f"glibc's default here faults only {steady_default} times in 3 rounds")
    # Each round writes 168 MiB (43,000 pages); kept memory is reused without faulting.
    assert steady_kept < 500, kept["faults"]
    # What is kept can be given back: at least the largest block's worth.
    assert kept["released"] is True
    assert kept["held"] - kept["after_release"] >= 64 * MIB, kept


@needs_glibc
@pytest.mark.parametrize("opt_out", [False, True])
def test_cpu_inpainter_keeps_freed_memory_unless_opted_out(opt_out):
    code = """
    import json
    import numpy as np
    from mat_fast import Inpainter, cpu_memory
    hole = np.zeros((64, 64), bool)
    hole[8:24, 8:24] = True
    Inpainter.random(0, resolution=128, device="cpu")(np.zeros((64, 64, 3), np.uint8), hole)
    print(json.dumps(dict(kept=cpu_memory.freed_memory_kept())))
    """
    env = {cpu_memory.ENV_VAR: "0"} if opt_out else {cpu_memory.ENV_VAR: "1"}
    assert _child(code, env=env)["kept"] is (not opt_out)


class FakeLibc:
    """Records mallopt calls; answers with the given results, per parameter."""

    def __init__(self, results=None):
        self.results = results or {}
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value.value))
        return self.results.get(param, 1)


@pytest.fixture
def fake_libc(monkeypatch):
    def install(results=None):
        libc = FakeLibc(results)
        monkeypatch.setattr(cpu_memory, "_libc", lambda: libc)
        monkeypatch.setattr(cpu_memory, "_kept", False)
        return libc

    return install


def test_keep_sets_both_thresholds_once(fake_libc):
    libc = fake_libc()
    assert cpu_memory.keep_freed_memory() is True
    assert sorted(libc.calls) == sorted(
        [(cpu_memory._M_MMAP_THRESHOLD, (1 << 31) - 1), (cpu_memory._M_TRIM_THRESHOLD, -1)]
    )
    assert cpu_memory.keep_freed_memory() is True and len(libc.calls) == 2  # no second call
    assert cpu_memory.freed_memory_kept() is True


def test_a_refused_threshold_is_reported_not_raised_and_changes_nothing_more(fake_libc, caplog):
    libc = fake_libc({cpu_memory._M_MMAP_THRESHOLD: 0})
    with caplog.at_level("INFO", logger="mat_fast"):
        assert cpu_memory.keep_freed_memory() is False
    assert cpu_memory.freed_memory_kept() is False
    assert "refused mallopt(mmap threshold" in caplog.text
    assert [param for param, _ in libc.calls] == [cpu_memory._M_MMAP_THRESHOLD]  # trim untouched


def test_without_glibc_nothing_happens(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_libc", lambda: None)
    monkeypatch.setattr(cpu_memory, "_kept", False)
    assert cpu_memory.keep_freed_memory() is False
    assert cpu_memory.release_freed_memory() is False


@pytest.mark.parametrize(
    "device, env, expected_calls",
    [("cpu", None, 2), ("cpu", "1", 2), ("cpu", "0", 0), ("cuda", None, 0), ("meta", None, 0)],
)
def test_keep_for_device_only_for_cpu_and_not_when_opted_out(
    fake_libc, monkeypatch, device, env, expected_calls
):
    libc = fake_libc()
    if env is None:
        monkeypatch.delenv(cpu_memory.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(cpu_memory.ENV_VAR, env)
    assert cpu_memory.keep_freed_memory_for(torch.device(device)) is (expected_calls == 2)
    assert len(libc.calls) == expected_calls
