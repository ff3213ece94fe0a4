"""Shared test set-up: import the package from the repo root, find shipped scenarios, and keep the
timing-sensitive modules from running beside each other in the two pytest-xdist workers."""

from __future__ import annotations

import fcntl
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIOS_DIR = ROOT / "scenarios"
SHARED_DIR = ROOT.parent / "shared"


@pytest.fixture(scope="module")
def cpu_alone() -> Iterator[None]:
    """Hold the suite's CPU lock for a whole module (``pytestmark = pytest.mark.usefixtures("cpu_alone")``).

    The modules that take it time an emulated engine on asyncio timers (calibration, fidelity) or
    start process pools (sweeps on local processes and a Dask cluster). On two cores, with ``-n 2``,
    one such module beside another can stretch the emulator's steps: in one fresh-clone run the
    emulated calibration fitted R² 0.73 and c0 a third of the truth (session 14; what the other worker
    ran then is not on record). Under the lock at most one of them runs at a time; the other worker
    runs everything else, or waits here (about two minutes more for the stage). A file lock, because
    xdist's ``--dist loadgroup`` does not work with this pytest (tests/live/conftest.py)."""
    path = Path(tempfile.gettempdir()) / "publicai_lab-tests-cpu-alone.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
