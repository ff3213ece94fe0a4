"""Shared test set-up: import the package from the repo root, find shipped scenarios."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIOS_DIR = ROOT / "scenarios"
SHARED_DIR = ROOT.parent / "shared"
