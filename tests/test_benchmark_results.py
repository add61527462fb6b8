"""benchmarks/results_io.py: one schema for every benchmark's JSON, kept valid row by row,
so a run cut by the GPU session's time limit keeps what it measured."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from benchmarks import results_io
from benchmarks.results_io import ResultsFile, load

from .helpers.paths import ROOT

COMMITTED = sorted(p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json"))


def test_every_benchmark_has_committed_results():
    kinds = {name.split("_")[0] for name in COMMITTED}
    assert {"attention", "generator", "precision", "memory", "folder", "train"} <= kinds


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_follow_the_schema(name):
    data = load(ROOT / "benchmarks" / "results" / f"{name}.json")
    assert data["meta"]["benchmark"] == name.split("_")[0]
    assert data["rows"], "no rows"


def test_every_row_is_on_disk_as_soon_as_it_is_added(tmp_path, monkeypatch):
    monkeypatch.setenv("MAT_FAST_COMMIT", "abc1234")
    path = tmp_path / "sub" / "bench.json"
    with ResultsFile(path, "attention", torch.device("cpu"), dtype="float32") as results:
        assert load(path)["meta"]["status"] == "running"
        results.add(dict(config="a", median_ms=1.0))
        on_disk = load(path)
        assert on_disk["rows"] == [dict(config="a", median_ms=1.0)]
        assert on_disk["meta"]["commit"] == "abc1234" and on_disk["meta"]["dtype"] == "float32"
        results.skip("flex", "opt-in")
    data = load(path)
    assert data["meta"]["status"] == "complete" and data["meta"]["finished"]
    assert data["meta"]["skipped"] == {"flex": "opt-in"}
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"


def test_an_interrupt_keeps_the_rows_and_says_so(tmp_path):
    path = tmp_path / "bench.json"
    with ResultsFile(path, "generator", torch.device("cpu")) as results:
        results.add(dict(config="a"))
        raise KeyboardInterrupt  # what `timeout --signal=INT` raises
    assert results.interrupted
    data = load(path)
    assert data["meta"]["status"] == "interrupted" and len(data["rows"]) == 1


def test_an_error_is_recorded_and_raised(tmp_path):
    path = tmp_path / "bench.json"
    with pytest.raises(ZeroDivisionError):
        with ResultsFile(path, "generator", torch.device("cpu")):
            raise ZeroDivisionError("a bug in the benchmark")
    assert load(path)["meta"]["status"].startswith("failed: ZeroDivisionError")


_SLOW_BENCHMARK = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[2])
from benchmarks.results_io import ResultsFile
with ResultsFile(sys.argv[1], "attention", torch.device("cpu")) as results:
    for i in range(2):
        results.add(dict(row=i))
    print("READY", flush=True)
    time.sleep(60)
    results.add(dict(row="never"))
"""


def test_sigterm_mid_run_leaves_a_valid_file(tmp_path):
    path = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BENCHMARK, str(path), str(ROOT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    data = load(path)
    assert data["rows"] == [dict(row=0), dict(row=1)]
    assert data["meta"]["status"] == "interrupted"


def test_load_names_what_is_wrong(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(dict(meta=dict(device="x"), rows=[])))
    with pytest.raises(ValueError, match="meta lacks schema, benchmark"):
        load(path)
    path.write_text(json.dumps(dict(device="x", rows=[])))
    with pytest.raises(ValueError, match="expected the keys meta and rows"):
        load(path)


def test_commit_falls_back_to_git_without_the_variable(monkeypatch):
    monkeypatch.delenv("MAT_FAST_COMMIT", raising=False)
    monkeypatch.setattr(results_io, "git_commit", lambda: "deadbee")
    assert results_io.commit() == "deadbee"


@pytest.mark.parametrize("min_rounds", [0, 1, 3])
def test_time_group_takes_enough_samples_for_its_deciles(min_rounds):
    from benchmarks.common import time_group

    calls = {"a": 0, "b": 0}

    def counter(name):
        def fn():
            calls[name] += 1

        return fn

    stats = time_group({n: counter(n) for n in calls}, torch.device("cpu"), 0.0, min_rounds)
    assert calls == {"a": 1 + max(2, min_rounds), "b": 1 + max(2, min_rounds)}  # + warm-up
    for row in stats.values():
        assert row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
