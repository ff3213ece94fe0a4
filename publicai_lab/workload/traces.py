"""Trace readers: recorded request streams as one uniform DataFrame.

Every reader returns a DataFrame with exactly three columns, sorted by time:

- ``arrival_s`` (float64): seconds since the trace's first request (so it starts at 0),
- ``prompt_tokens`` (int64) and ``output_tokens`` (int64): both at least 1.

A recorded completion of 0 tokens (a refused or empty answer) becomes 1, because a request
always runs at least one decode step in vLLM and the simulator's per-token maths divides by the
output length; prompts of 0 tokens become 1 for the same reason. Rows are stably sorted by time,
so a trace whose rows are slightly out of order still replays in arrival order.

Formats (``read_trace(path, format)``):

========= =========================================================================================
azure     Azure LLM inference trace 2023 (CC-BY 4.0): ``TIMESTAMP`` (``2023-11-16 18:15:46.6805900``),
          ``ContextTokens``, ``GeneratedTokens``
csv       this project's generic form: ``arrival_s``, ``prompt_tokens``, ``output_tokens``
          (lines starting with ``#`` are comments)
burstgpt  BurstGPT CSV: ``Timestamp`` (seconds), ``Request tokens``, ``Response tokens``
mooncake  Mooncake JSONL: ``timestamp`` (milliseconds), ``input_length``, ``output_length``
auto      pick one of the above from the file suffix and header
========= =========================================================================================

Errors are :class:`~publicai_lab.errors.ScenarioError` with one line naming the file and, for a
missing column, the column, because a trace is scenario input and the CLI prints those as one
line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from publicai_lab.errors import ScenarioError

__all__ = [
    "TRACE_COLUMNS",
    "TRACE_FORMATS",
    "read_trace",
    "read_azure_trace",
    "read_csv_trace",
    "read_burstgpt_trace",
    "read_mooncake_trace",
]

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
TRACE_FORMATS = ("auto", "azure", "csv", "burstgpt", "mooncake")

PathLike = str | os.PathLike[str]


def _fail(path: PathLike, what: str, *, field: str | None = None) -> ScenarioError:
    return ScenarioError(f"{path}: {what}", source=str(path), field=field)


def _read_table(path: PathLike, columns: tuple[str, ...], label: str, **read_kw: object
                ) -> pd.DataFrame:
    """Read only ``columns`` of a CSV, failing with one line if the file or a column is missing."""
    try:
        header = pd.read_csv(path, nrows=0, **read_kw)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise _fail(path, f"{label} trace file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read {label} trace as CSV: {exc}".splitlines()[0]) from exc
    present = [str(c).strip() for c in header.columns]
    for col in columns:
        if col not in present:
            raise _fail(path, f"missing column {col!r} in {label} trace "
                              f"(needs {', '.join(columns)}; found {', '.join(present) or 'none'})",
                        field=col)
    frame = pd.read_csv(path, **read_kw)  # type: ignore[arg-type]
    frame.columns = present
    return frame[list(columns)]


def _tokens(path: PathLike, values: pd.Series, column: str) -> np.ndarray:
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(num) | (num < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(path, f"column {column!r} row {row}: not a non-negative token count "
                          f"({values.iloc[row]!r})", field=column)
    return np.maximum(np.rint(num).astype(np.int64), 1)


def _finish(path: PathLike, seconds: np.ndarray, prompt: np.ndarray, output: np.ndarray,
            time_column: str) -> pd.DataFrame:
    """Sort by time, re-base to the first arrival, and build the uniform frame."""
    if seconds.size and not np.all(np.isfinite(seconds)):
        row = int(np.flatnonzero(~np.isfinite(seconds))[0])
        raise _fail(path, f"column {time_column!r} row {row}: not a time", field=time_column)
    order = np.argsort(seconds, kind="stable")
    if seconds.size and np.any(order != np.arange(seconds.size)):
        seconds, prompt, output = seconds[order], prompt[order], output[order]
    start = seconds[0] if seconds.size else 0.0
    return pd.DataFrame({"arrival_s": seconds - start, "prompt_tokens": prompt,
                         "output_tokens": output})


def read_azure_trace(path: PathLike) -> pd.DataFrame:
    """Read an Azure LLM inference 2023 CSV (``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``)."""
    cols = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    raw = _read_table(path, cols, "Azure", dtype={"TIMESTAMP": str})
    stamps = pd.to_datetime(raw["TIMESTAMP"].str.strip(), format="ISO8601", errors="coerce")
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise _fail(path, f"column 'TIMESTAMP' row {row}: cannot parse "
                          f"{raw['TIMESTAMP'].iloc[row]!r} as a time", field="TIMESTAMP")
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    seconds = (ns - (ns[0] if ns.size else 0)) / 1e9
    return _finish(path, seconds, _tokens(path, raw["ContextTokens"], "ContextTokens"),
                   _tokens(path, raw["GeneratedTokens"], "GeneratedTokens"), "TIMESTAMP")


def read_csv_trace(path: PathLike) -> pd.DataFrame:
    """Read the generic CSV form: ``arrival_s, prompt_tokens, output_tokens`` (``#`` comments)."""
    raw = _read_table(path, TRACE_COLUMNS, "CSV", comment="#")
    seconds = pd.to_numeric(raw["arrival_s"], errors="coerce").to_numpy(dtype=np.float64)
    return _finish(path, seconds, _tokens(path, raw["prompt_tokens"], "prompt_tokens"),
                   _tokens(path, raw["output_tokens"], "output_tokens"), "arrival_s")


def read_burstgpt_trace(path: PathLike) -> pd.DataFrame:
    """Read a BurstGPT CSV (``Timestamp`` seconds, ``Request tokens``, ``Response tokens``)."""
    cols = ("Timestamp", "Request tokens", "Response tokens")
    raw = _read_table(path, cols, "BurstGPT")
    seconds = pd.to_numeric(raw["Timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    return _finish(path, seconds, _tokens(path, raw["Request tokens"], "Request tokens"),
                   _tokens(path, raw["Response tokens"], "Response tokens"), "Timestamp")


def read_mooncake_trace(path: PathLike) -> pd.DataFrame:
    """Read a Mooncake JSONL trace (``timestamp`` ms, ``input_length``, ``output_length``)."""
    cols = ("timestamp", "input_length", "output_length")
    try:
        raw = pd.read_json(path, lines=True)
    except FileNotFoundError:
        raise _fail(path, "Mooncake trace file not found") from None
    except (ValueError, json.JSONDecodeError) as exc:
        raise _fail(path, f"cannot read Mooncake trace as JSON lines: {exc}".splitlines()[0]) from exc
    for col in cols:
        if col not in raw.columns:
            raise _fail(path, f"missing field {col!r} in Mooncake trace (needs {', '.join(cols)})",
                        field=col)
    seconds = pd.to_numeric(raw["timestamp"], errors="coerce").to_numpy(dtype=np.float64) / 1e3
    return _finish(path, seconds, _tokens(path, raw["input_length"], "input_length"),
                   _tokens(path, raw["output_length"], "output_length"), "timestamp")


def _sniff(path: PathLike) -> str:
    """Guess the format from the suffix and the first non-comment line."""
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".json"):
        return "mooncake"
    try:
        with open(p, encoding="utf-8") as fh:
            header = next((ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")), "")
    except FileNotFoundError:
        raise _fail(path, "trace file not found") from None
    names = {c.strip() for c in header.split(",")}
    if "TIMESTAMP" in names:
        return "azure"
    if "Request tokens" in names:
        return "burstgpt"
    return "csv"


_READERS = {"azure": read_azure_trace, "csv": read_csv_trace, "burstgpt": read_burstgpt_trace,
            "mooncake": read_mooncake_trace}


def read_trace(path: PathLike, format: str | None = "auto") -> pd.DataFrame:  # noqa: A002
    """Read a trace in any supported ``format`` into ``arrival_s, prompt_tokens, output_tokens``."""
    fmt = (format or "auto").lower()
    if fmt == "auto":
        fmt = _sniff(path)
    reader = _READERS.get(fmt)
    if reader is None:
        raise _fail(path, f"unknown trace format {format!r}; allowed {', '.join(TRACE_FORMATS)}",
                    field="format")
    return reader(path)
