"""The one request-record schema that the simulator and the live load generator both emit.

``to_frame(records)`` gives a DataFrame with pinned columns and dtypes; ``validate_frame(df)``
checks a frame (from either source) against that schema and the causality invariants, so every
analysis function can take sim and live frames alike.

Times are seconds relative to the start of the run. ``queue_wait_s`` is time spent waiting for a
batch slot (gateway hold plus engine queue); ``ttft_s`` and ``e2e_s`` are measured from
``arrival_s`` as the client sees them (network included); ``tpot_s`` = (e2e - ttft) / (output - 1).
``model`` is the model that served the request (a gateway model fallback shows here);
``attempts`` counts dispatches, so a request retried once on another backend has 2.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["RequestRecord", "COLUMNS", "DTYPES", "STATUSES", "to_frame", "validate_frame", "empty_frame"]

STATUSES = ("ok", "rejected", "failed", "timeout", "incomplete")

#: the pinned schema: column name -> dtype. Strings use pandas' ``str`` dtype; NaN marks "unknown".
DTYPES: dict[str, str] = {
    "run_id": "str",
    "source": "str",
    "request_id": "int64",
    "arrival_s": "float64",
    "client_region": "str",
    "tier": "str",
    "model": "str",
    "prompt_tokens": "int64",
    "output_tokens": "int64",
    "policy": "str",
    "backend_id": "str",
    "partner": "str",
    "country": "str",
    "attempts": "int64",
    "status": "str",
    "error_type": "str",
    "queue_wait_s": "float64",
    "ttft_s": "float64",
    "e2e_s": "float64",
    "tpot_s": "float64",
}
COLUMNS: tuple[str, ...] = tuple(DTYPES)


@dataclass(slots=True)
class RequestRecord:
    """One finished (or abandoned) request. Field order is the column order."""

    run_id: str
    source: str
    request_id: int
    arrival_s: float
    client_region: str
    tier: str
    model: str
    prompt_tokens: int
    output_tokens: int
    policy: str
    backend_id: str | None
    partner: str | None
    country: str | None
    attempts: int
    status: str
    error_type: str | None
    queue_wait_s: float
    ttft_s: float
    e2e_s: float
    tpot_s: float


assert tuple(f.name for f in fields(RequestRecord)) == COLUMNS


def tpot_of(ttft_s: float, e2e_s: float, output_tokens: int) -> float:
    """Time per output token after the first; NaN when there is no second token."""
    if output_tokens <= 1 or math.isnan(e2e_s) or math.isnan(ttft_s):
        return math.nan
    return (e2e_s - ttft_s) / (output_tokens - 1)


def empty_frame() -> pd.DataFrame:
    return frame_from_columns({c: [] for c in COLUMNS})


def frame_from_columns(columns: dict[str, Sequence[object]]) -> pd.DataFrame:
    """Build a schema-conformant frame from column lists (the fast path the simulator uses)."""
    data = {}
    for name, dtype in DTYPES.items():
        values = columns[name]
        if dtype == "str":
            data[name] = pd.array(values, dtype="str") if len(values) else pd.array([], dtype="str")
        else:
            data[name] = np.asarray(values, dtype=dtype)
    return pd.DataFrame(data, columns=list(COLUMNS))


def to_frame(records: Iterable[RequestRecord | tuple]) -> pd.DataFrame:
    """Records (dataclasses or tuples in column order) -> DataFrame with the pinned schema."""
    rows = [astuple(r) if isinstance(r, RequestRecord) else tuple(r) for r in records]
    cols = {name: [row[i] for row in rows] for i, name in enumerate(COLUMNS)}
    return frame_from_columns(cols)


def validate_frame(df: pd.DataFrame, *, check_causality: bool = True) -> pd.DataFrame:
    """Raise ``ValueError`` naming the first problem; return ``df`` unchanged when it conforms.

    Checks: exact columns and dtypes; statuses known; unique request ids per run; non-negative
    times; ``ok`` rows have ``queue_wait_s <= ttft_s <= e2e_s`` (NaN allowed where unknown).
    """
    if list(df.columns) != list(COLUMNS):
        missing = [c for c in COLUMNS if c not in df.columns]
        extra = [c for c in df.columns if c not in DTYPES]
        raise ValueError(f"frame columns differ from the schema: missing {missing}, extra {extra}")
    for name, dtype in DTYPES.items():
        actual = df[name].dtype
        if dtype == "str":
            if not (pd.api.types.is_string_dtype(actual) or actual == object):
                raise ValueError(f"column {name!r}: dtype {actual}, expected str")
        elif str(actual) != dtype:
            raise ValueError(f"column {name!r}: dtype {actual}, expected {dtype}")
    bad = ~df["status"].isin(STATUSES)
    if bad.any():
        raise ValueError(f"column 'status': unknown value {df['status'][bad].iloc[0]!r}; allowed {STATUSES}")
    if df.duplicated(["run_id", "request_id"]).any():
        dup = df[df.duplicated(["run_id", "request_id"])].iloc[0]
        raise ValueError(f"duplicate request_id {dup['request_id']} in run {dup['run_id']!r}")
    for col in ("arrival_s", "queue_wait_s", "ttft_s", "e2e_s", "tpot_s"):
        neg = df[col] < 0
        if neg.any():
            raise ValueError(f"column {col!r}: negative value {df[col][neg].iloc[0]} "
                             f"(request {df['request_id'][neg].iloc[0]})")
    if check_causality:
        ok = df[df["status"] == "ok"]
        eps = 1e-9
        for a, b in (("queue_wait_s", "ttft_s"), ("ttft_s", "e2e_s")):
            viol = (ok[a] > ok[b] + eps) & ok[a].notna() & ok[b].notna()
            if viol.any():
                r = ok[viol].iloc[0]
                raise ValueError(f"causality: request {r['request_id']} has {a}={r[a]} > {b}={r[b]}")
        if (ok["e2e_s"].isna()).any():
            raise ValueError("an 'ok' request has no e2e_s")
    return df
