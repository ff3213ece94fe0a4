"""Where the project's bundled data lives, and cached readers for it.

``data/`` holds facts the scenarios refer to by name: accelerator specs (``hardware.yaml``), model
geometries (``models.yaml``) and fitted performance models (``perf_models/NAME.json``). Set the
environment variable ``PUBLICAI_LAB_DATA`` to point at another copy (tests, installed packages).

The readers return fresh copies of plain dicts, so a caller that edits what it got cannot change
what the next caller sees; the parsed files themselves are cached per directory.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DATA_DIR", "data_dir", "hardware_specs", "model_specs", "perf_model_path"]

#: The data directory as seen when this module was imported.
DATA_DIR: Path = Path(os.environ.get("PUBLICAI_LAB_DATA") or Path(__file__).resolve().parent.parent / "data")


def data_dir() -> Path:
    """The data directory now (re-reads ``PUBLICAI_LAB_DATA`` so tests can redirect it)."""
    env = os.environ.get("PUBLICAI_LAB_DATA")
    return Path(env) if env else DATA_DIR


@lru_cache(maxsize=16)
def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        loaded = yaml.safe_load(fh)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _read(name: str, directory: Path | None) -> dict[str, Any]:
    path = ((directory or data_dir()) / name).resolve()
    if not path.is_file():
        return {}
    return copy.deepcopy(_read_yaml_mapping(path))


def hardware_specs(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """``data/hardware.yaml``: accelerator name -> raw HardwareSpec fields."""
    return _read("hardware.yaml", directory)


def model_specs(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """``data/models.yaml``: spec name -> ``{hub_id, notes, geometry: {...}}``."""
    return _read("models.yaml", directory)


def perf_model_path(name: str, directory: Path | None = None) -> Path:
    """Path of the fitted perf model ``name`` (it may not exist; callers check)."""
    return (directory or data_dir()) / "perf_models" / f"{name}.json"
