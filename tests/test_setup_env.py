"""scripts/setup_env.sh picks its environment as documented (the full set-up, which
installs torch, is exercised by CI's scripts/test.sh on a clean clone)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_for(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAT_FAST_VENV")}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_env.sh"), "--print-python"],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, str(ROOT / ".venv" / "bin" / "python")),  # a venv in the repository
        ({"VIRTUAL_ENV": "/opt/active"}, "/opt/active/bin/python"),  # the active one
        ({"VIRTUAL_ENV": "/opt/active", "MAT_FAST_VENV": "/opt/mine"}, "/opt/mine/bin/python"),
    ],
)
def test_environment_choice(env, expected):
    assert _python_for(**env) == expected
