"""Where the tests find the repository and the shared upstream data."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MAT_FAST_SHARED", ROOT.parent / "shared"))
TEST_SETS = SHARED / "data" / "mat_test_sets"
MANIFEST = SHARED / "reference" / "mat_state_dicts.json"
GOLDEN = ROOT / "tests" / "golden"
