"""One JSON schema for every benchmark, written as rows are measured.

    {"meta": {"schema": 1, "benchmark": "attention", "device": ..., "device_type": ...,
              "versions": {python, torch, triton, cuda, mat_fast}, "commit": ...,
              "command": ..., "started": ..., "finished": ..., "status": ..., "skipped": {...},
              <the benchmark's own fields>},
     "rows": [{...}, ...]}

:class:`ResultsFile` rewrites the file atomically (temporary file + rename) after every row,
so a run cut by a time limit (SIGINT, SIGTERM, or killed outright) leaves a valid JSON with
every row measured so far; ``status`` says ``running`` until the run ends, then
``complete`` or ``interrupted``. The commit is ``MAT_FAST_COMMIT`` when set (the GPU box
gets the tree without .git), else ``git rev-parse HEAD`` (``-dirty`` with local changes).
On CUDA, creating a result file switches fp32 matmuls and convolutions to IEEE (no TF32)
and records it in ``fp32_precision``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from benchmarks.common import device_name, git_commit, triton_version, use_ieee_fp32

SCHEMA_VERSION = 1


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def commit() -> Optional[str]:
    """The commit measured: MAT_FAST_COMMIT when given, else git's."""
    return os.environ.get("MAT_FAST_COMMIT") or git_commit()


def machine_meta(device: torch.device) -> Dict[str, Any]:
    """Device, versions, commit, command and start time: what every result file records."""
    import mat_fast

    # fp32 means IEEE fp32 here, as upstream computes it (cuDNN would use TF32)
    fp32 = use_ieee_fp32() if device.type == "cuda" else None
    return dict(
        schema=SCHEMA_VERSION,
        device=device_name(device),
        device_type=device.type,
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            triton=triton_version(),
            cuda=torch.version.cuda,
            mat_fast=mat_fast.__version__,
        ),
        commit=commit(),
        command=" ".join(["python"] + sys.argv),
        started=_now(),
        finished=None,
        status="running",
        skipped={},
        fp32_precision=fp32,
    )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class ResultsFile:
    """The result JSON of one benchmark run, kept valid on disk after every row.

    Use as a context manager: on leaving it the status becomes ``complete``, or
    ``interrupted`` when a KeyboardInterrupt (SIGINT, or SIGTERM, which it turns into one)
    ended the run; the interrupt is then swallowed so the caller can still report."""

    def __init__(self, path: Path, benchmark: str, device: torch.device, **fields: Any):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.meta = dict(machine_meta(device), benchmark=benchmark, **fields)
        self.rows: list = []
        self.interrupted = False
        self._write()

    @property
    def skipped(self) -> Dict[str, str]:
        return self.meta["skipped"]

    def skip(self, what: str, why: str) -> None:
        self.meta["skipped"][what] = why
        self._write()

    def add(self, row: Dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(dict(meta=self.meta, rows=self.rows), indent=1, default=str))
        os.replace(tmp, self.path)

    def __enter__(self) -> "ResultsFile":
        try:
            self._previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            self._previous_term = None
        return self

    def __exit__(self, kind, value, tb) -> bool:
        if self._previous_term is not None:
            signal.signal(signal.SIGTERM, self._previous_term)
        self.interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self.meta["finished"] = _now()
        self.meta["status"] = "interrupted" if self.interrupted else "complete"
        if kind is not None and not self.interrupted:
            self.meta["status"] = f"failed: {kind.__name__}: {value}"[:300]
        self._write()
        if self.interrupted:
            print(f"\ninterrupted; {len(self.rows)} rows kept in {self.path}")
        return self.interrupted


def load(path: Path) -> Dict[str, Any]:
    """A result file, checked against the schema (what the tests and the README table read)."""
    data = json.loads(Path(path).read_text())
    if set(data) != {"meta", "rows"}:
        raise ValueError(f"{path}: expected the keys meta and rows, found {sorted(data)}")
    meta = data["meta"]
    missing = [
        k
        for k in ("schema", "benchmark", "device", "versions", "commit", "command", "started")
        if k not in meta
    ]
    if missing:
        raise ValueError(f"{path}: meta lacks {', '.join(missing)}")
    if meta["schema"] != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema {meta['schema']}, this code reads {SCHEMA_VERSION}")
    if not isinstance(data["rows"], list):
        raise ValueError(f"{path}: rows must be a list")
    return data


def draw(path: Path) -> Path:
    """The PNG chart of a speed benchmark's result file, beside it (same name, .png)."""
    from benchmarks.common import draw_chart

    data = load(path)
    meta, rows = data["meta"], data["rows"]
    png = Path(path).with_suffix(".png")
    torch_version = meta["versions"].get("torch")
    if meta["benchmark"] == "attention":
        title = f"window attention, {meta['device']}, {meta.get('dtype')}, torch {torch_version}"
        draw_chart([r for r in rows if r["impl"] != "proj"], png, title)
    elif meta["benchmark"] == "generator":
        title = f"MAT generator, {meta['device']}, torch {torch_version}"
        draw_chart(
            rows, png, title, speedup_key="speedup_vs_reference", baseline="reference float32"
        )
    else:
        raise ValueError(f"{path}: no chart for the {meta['benchmark']} benchmark")
    return png


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Check result files against the schema, or draw their charts."
    )
    parser.add_argument("action", choices=["check", "chart"])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        data = load(path)
        if args.action == "chart":
            print(f"wrote {draw(path)}")
        else:
            print(f"{path}: {data['meta']['status']}, {len(data['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
