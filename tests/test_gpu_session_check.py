"""scripts/check_session_out.py: what a GPU session (or its CPU dry run) brings back is
checked against the device's limits and the plan before anyone trusts it."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from benchmarks.results_io import ResultsFile

from .helpers.paths import ROOT


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_session_out", ROOT / "scripts" / "check_session_out.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session(out, phases, total=100, elapsed=50):
    rows = [
        dict(name=n, budget_s=b, limit_s=b, seconds=s, status=st, rc=0 if st == "ok" else 1)
        for n, b, s, st in phases
    ]
    (out / "session.json").write_text(
        json.dumps(dict(commit="abc", dry_run=True, total_s=total, elapsed_s=elapsed, phases=rows))
    )


def _results(out, name, rows):
    with ResultsFile(out / f"{name}_cpu.json", name, torch.device("cpu")) as results:
        for i in range(rows):
            results.add(dict(config=f"c{i}", median_ms=1.0))


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv("MAT_FAST_COMMIT", "abc1234")
    return tmp_path


def test_a_plan_that_kept_to_its_budgets_passes(out):
    _session(out, [("attention", 40, 30, "ok"), ("generator", 40, 41, "cut at the 40s limit")])
    _results(out, "attention", 2)
    _results(out, "generator", 1)
    assert _checker().check(out, 100, strict=True) == []


def test_a_results_file_without_rows_fails_only_the_dry_run(out):
    _session(out, [("generator", 40, 41, "cut at the 40s limit")])
    _results(out, "generator", 0)  # cut before its first row
    check = _checker().check
    assert check(out, 100, strict=False) == []
    assert check(out, 100, strict=True) == ["generator_cpu.json: no rows (complete)"]


def test_budgets_overruns_and_failures_are_named(out):
    _session(out, [("a", 60, 80, "ok"), ("b", 50, 1, "failed")], total=100, elapsed=130)
    problems = _checker().check(out, 100, strict=True)
    assert "the phase budgets sum to 110s, over the 100s total" in problems
    assert "a: ran 80s, limit 60s" in problems
    assert "b failed (exit 1; see session.log)" in problems
    assert "the session took 130s, total 100s" in problems
    (out / "session.json").unlink()
    assert _checker().check(out, 100) == ["no session.json"]
