"""Check a GPU session's output folder against what the device returns and the plan.

    python scripts/check_session_out.py check OUT_DIR --total 475 [--strict]
    python scripts/check_session_out.py merge-junit OUT_DIR/tests.xml part1.xml part2.xml ...

The device returns at most 8 files of at most 16 MiB, at most two folders deep; the
session's phases must keep to their budgets (a phase may overrun its limit only by the
10 s between SIGINT and SIGKILL) and their sum to the total; every result JSON must follow
benchmarks/results_io.py's schema (a cut benchmark says ``interrupted`` and keeps its
rows); with --strict (the dry run) no phase may fail outright and every result file needs a
row. Prints one line per finding; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_FILES = 8
MAX_BYTES = 16 * 2**20
MAX_DEPTH = 2  # folders below OUT
KILL_GRACE_S = 10 + 5  # timeout's --kill-after, and a loaded machine's process exit


def check(out: Path, total: float, strict: bool = False) -> list:
    from benchmarks.results_io import load  # imports torch: only here, not for merge-junit

    problems = []
    files = sorted(p for p in out.rglob("*") if p.is_file())
    print(f"{len(files)} files (at most {MAX_FILES}):")
    for p in files:
        size = p.stat().st_size
        print(f"  {p.relative_to(out)}  {size / 2**20:.2f} MiB")
        if size > MAX_BYTES:
            problems.append(f"{p.name} is {size / 2**20:.1f} MiB, over 16 MiB")
        if len(p.relative_to(out).parts) - 1 > MAX_DEPTH:
            problems.append(f"{p.relative_to(out)} is more than {MAX_DEPTH} folders deep")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, the device returns at most {MAX_FILES}")

    session = out / "session.json"
    if not session.is_file():
        problems.append("no session.json")
    else:
        plan = json.loads(session.read_text())
        budgets = sum(p["budget_s"] for p in plan["phases"])
        print(f"phases: budgets sum to {budgets}s of the {total:g}s total")
        if budgets > total:
            problems.append(f"the phase budgets sum to {budgets}s, over the {total:g}s total")
        for p in plan["phases"]:
            print(f"  {p['name']:<14} {p['seconds']:>4}s of {p['limit_s']:>4}s  {p['status']}")
            if p["limit_s"] > p["budget_s"]:
                problems.append(f"{p['name']}: limit {p['limit_s']}s over its budget")
            if strict and p["status"] == "failed":
                problems.append(f"{p['name']} failed (exit {p['rc']}; see session.log)")
            if p["seconds"] > p["limit_s"] + KILL_GRACE_S:
                problems.append(f"{p['name']}: ran {p['seconds']}s, limit {p['limit_s']}s")
        if plan["elapsed_s"] > total + KILL_GRACE_S:
            problems.append(f"the session took {plan['elapsed_s']}s, total {total:g}s")

    for p in files:
        if p.suffix == ".json" and p.name != "session.json":
            try:
                data = load(p)
            except (ValueError, KeyError) as err:
                problems.append(f"{p.name}: {err}")
                continue
            print(f"  {p.name}: {data['meta']['status']}, {len(data['rows'])} rows")
            if strict and not data["rows"]:  # a phase cut before its first row proves nothing
                problems.append(f"{p.name}: no rows ({data['meta']['status']})")
    return problems


def merge_junit(target: Path, parts: list) -> None:
    """One junit file from several pytest runs (the device returns 8 files at most)."""
    import xml.etree.ElementTree as ET

    merged = ET.Element("testsuites")
    for part in parts:
        if not Path(part).is_file():
            continue  # a group cut before pytest wrote its file
        root = ET.parse(part).getroot()
        suites = [root] if root.tag == "testsuite" else list(root)
        for suite in suites:
            suite.set("name", Path(part).stem)
            merged.append(suite)
    tmp = target.with_name(target.name + ".tmp")
    ET.ElementTree(merged).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(target)
    counts = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
    for suite in merged:
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    print(f"{target.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    checking = sub.add_parser("check", help="check OUT against the device's limits and the plan")
    checking.add_argument("out", type=Path)
    checking.add_argument("--total", type=float, required=True, help="the session's total seconds")
    checking.add_argument(
        "--strict",
        action="store_true",
        help="a failed phase or a results file without rows is a problem too (dry runs)",
    )
    merging = sub.add_parser("merge-junit", help="merge junit files into one")
    merging.add_argument("target", type=Path)
    merging.add_argument("parts", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.action == "merge-junit":
        merge_junit(args.target, args.parts)
        return 0
    problems = check(args.out, args.total, args.strict)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("check: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
