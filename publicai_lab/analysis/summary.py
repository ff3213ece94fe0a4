"""Summary tables: one row per partner plus an ``ALL`` row, from any frame that passes
``records.validate_frame`` (sim or live alike).

What a row says, and why it is computed that way:

- counts by status (``requests``, ``ok``, ``rejected``, ``failed``, ``timeout``, ``incomplete``);
- rates over the run (``throughput_rps``, ``output_tokens_per_s``, ``goodput_rps``) count ``ok``
  requests only and divide by ``duration_s`` when given, else by the span of arrivals, so a
  partner row and the ``ALL`` row share one denominator and partner rates add up to ``ALL``;
- ``slo_attainment`` is the share of requests the federation *tried to serve* (everything except
  ``rejected``) that finished ``ok`` within every SLO; rejections are an admission decision and are
  counted separately;
- latency percentiles (``ttft_p50_s`` … ``e2e_p99_s``) use ``ok`` requests only, because a failed
  request's latency measures the failure, not the service;
- with a ``backends`` frame: ``utilisation`` (busy replica-seconds / available replica-seconds),
  ``gpu_hours``, ``donated_gpu_hours`` and ``cost_usd`` (paid GPU-hours only — donated capacity is
  free to Public AI), and ``cost_per_mtok_usd`` over the prompt+output tokens of ``ok`` requests;
- with ``prices``: ``list_price_usd``, what the served tokens would have cost at list prices.

Requests that never reached a partner (typically rejections) have no partner; they get their own
``(unrouted)`` row so that the partner rows plus that row always add up to ``ALL``.
Empty frames and all-NaN columns give NaN, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ALL",
    "UNROUTED",
    "DEFAULT_SLO",
    "slo_thresholds",
    "meets_slo",
    "slo_attainment",
    "percentiles",
    "summarize",
]

#: label of the row that aggregates every request and backend
ALL = "ALL"
#: label of the row for requests that carry no partner (never routed)
UNROUTED = "(unrouted)"
#: SLO thresholds used when the caller gives none (the scenario's SLO defaults)
DEFAULT_SLO: dict[str, float] = {"ttft_s": 2.0, "tpot_s": 0.1, "e2e_s": 60.0}

_STATUS_COUNTS = ("ok", "rejected", "failed", "timeout", "incomplete")
_LATENCY_METRICS = ("ttft", "tpot", "e2e")
_QS = (50, 90, 99)


def slo_thresholds(slo: Any = None) -> dict[str, float]:
    """Normalise an SLO given as ``None``, a dict, or any object with ``ttft_s``/``tpot_s``/``e2e_s``.

    Missing keys fall back to :data:`DEFAULT_SLO`, so ``{"e2e_s": 30}`` is a valid partial SLO.
    """
    out = dict(DEFAULT_SLO)
    if slo is None:
        return out
    for key in DEFAULT_SLO:
        if isinstance(slo, Mapping):
            value = slo.get(key, out[key])
        else:
            value = getattr(slo, key, out[key])
        out[key] = float(value) if value is not None else math.inf
    return out


def meets_slo(requests: pd.DataFrame, slo: Any = None) -> pd.Series:
    """Boolean per request: ``ok`` and within every SLO threshold.

    A NaN ``tpot_s`` (single-token answers have no time *between* tokens) counts as meeting the
    TPOT SLO; a NaN ``ttft_s`` or ``e2e_s`` does not, since an unmeasured latency cannot be vouched for.
    """
    t = slo_thresholds(slo)
    ok = requests["status"] == "ok"
    ttft_ok = requests["ttft_s"] <= t["ttft_s"]          # NaN compares False
    tpot_ok = requests["tpot_s"].isna() | (requests["tpot_s"] <= t["tpot_s"])
    e2e_ok = requests["e2e_s"] <= t["e2e_s"]
    return (ok & ttft_ok & tpot_ok & e2e_ok).astype(bool)


def slo_attainment(requests: pd.DataFrame, slo: Any = None) -> float:
    """Share of non-rejected requests that finished ``ok`` within every SLO; NaN if there are none."""
    served = requests["status"] != "rejected"
    n = int(served.sum())
    if n == 0:
        return math.nan
    return float(meets_slo(requests[served], slo).sum()) / n


def percentiles(series: Iterable[float], qs: Iterable[float] = _QS) -> pd.Series:
    """Percentiles (linear interpolation, NaNs dropped) indexed by ``q``; all NaN when no data."""
    qs = tuple(qs)
    values = pd.to_numeric(pd.Series(series, dtype="float64"), errors="coerce").dropna().to_numpy()
    if values.size == 0:
        return pd.Series([math.nan] * len(qs), index=list(qs), dtype="float64")
    return pd.Series(np.percentile(values, qs), index=list(qs), dtype="float64")


def _rate(x: float, duration_s: float) -> float:
    return x / duration_s if duration_s > 0 and math.isfinite(duration_s) else math.nan


def _run_duration_s(requests: pd.DataFrame, duration_s: float | None) -> float:
    """The rate denominator: the given duration, else the span of arrivals (NaN if undefined)."""
    if duration_s is not None:
        return float(duration_s)
    arrivals = requests["arrival_s"].dropna()
    if arrivals.empty:
        return math.nan
    span = float(arrivals.max() - arrivals.min())
    return span if span > 0 else math.nan


def _price_pair(entry: Any) -> tuple[float, float]:
    """(in, out) USD per 1M tokens from a tuple, a dict, or a ModelSpec-like object."""
    if isinstance(entry, Mapping):
        return float(entry["in"]), float(entry["out"])
    if hasattr(entry, "price_in_per_mtok_usd"):
        return float(entry.price_in_per_mtok_usd), float(entry.price_out_per_mtok_usd)
    p_in, p_out = entry
    return float(p_in), float(p_out)


def _list_price_usd(ok: pd.DataFrame, prices: Mapping[str, Any]) -> float:
    """List-price value of the served tokens; NaN if any served model has no price (no silent
    under-statement)."""
    if ok.empty:
        return 0.0
    total = 0.0
    for model, grp in ok.groupby("model", dropna=False, sort=True):
        if model not in prices or (isinstance(model, float) and math.isnan(model)):
            return math.nan
        p_in, p_out = _price_pair(prices[model])
        total += (grp["prompt_tokens"].sum() * p_in + grp["output_tokens"].sum() * p_out) / 1e6
    return float(total)


def _request_stats(reqs: pd.DataFrame, slo: Any, duration_s: float) -> dict[str, float]:
    row: dict[str, float] = {"requests": len(reqs)}
    status = reqs["status"]
    for s in _STATUS_COUNTS:
        row[s] = int((status == s).sum())
    ok = reqs[status == "ok"]
    met = int(meets_slo(reqs, slo).sum())
    row["throughput_rps"] = _rate(len(ok), duration_s)
    row["output_tokens_per_s"] = _rate(float(ok["output_tokens"].sum()), duration_s)
    row["goodput_rps"] = _rate(met, duration_s)
    row["slo_attainment"] = slo_attainment(reqs, slo)
    for metric in _LATENCY_METRICS:
        pct = percentiles(ok[f"{metric}_s"], _QS)
        for q in _QS:
            row[f"{metric}_p{q}_s"] = float(pct[q])
    return row


def _backend_stats(backends: pd.DataFrame, ok_tokens: float) -> dict[str, float]:
    def col(name: str, default: float) -> pd.Series:
        if name in backends.columns:
            return pd.to_numeric(backends[name], errors="coerce").astype("float64")
        return pd.Series(default, index=backends.index, dtype="float64")

    busy, avail, gpu_h = col("busy_s", math.nan), col("available_s", math.nan), col("gpu_hours", math.nan)
    price = col("cost_per_gpu_hour_usd", 0.0).fillna(0.0)
    if "donated" in backends.columns:
        donated = backends["donated"].fillna(False).astype(bool)
    else:
        donated = pd.Series(False, index=backends.index)
    avail_sum = float(avail.sum(min_count=1))
    busy_sum = float(busy.sum(min_count=1))
    cost = float((gpu_h[~donated] * price[~donated]).sum(min_count=1)) if len(backends) else math.nan
    if len(backends) and not (~donated).any():
        cost = 0.0                                   # all donated: free, not unknown
    return {
        "utilisation": busy_sum / avail_sum if avail_sum > 0 else math.nan,
        "gpu_hours": float(gpu_h.sum(min_count=1)) if len(backends) else math.nan,
        "donated_gpu_hours": float(gpu_h[donated].sum()) if len(backends) else math.nan,
        "cost_usd": cost,
        "cost_per_mtok_usd": cost / ok_tokens * 1e6 if ok_tokens > 0 else math.nan,
    }


def summarize(requests: pd.DataFrame, backends: pd.DataFrame | None = None, *, slo: Any = None,
              duration_s: float | None = None,
              prices: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per partner (sorted), an ``(unrouted)`` row if any request lacks a partner, and ``ALL``.

    The index is named ``partner`` so ``summary.loc["ALL", "goodput_rps"]`` reads naturally.
    See the module docstring for what every column means.
    """
    duration = _run_duration_s(requests, duration_s)
    partner = requests["partner"].astype("object").where(requests["partner"].notna(), UNROUTED)
    names = set(partner.unique())
    if backends is not None and "partner" in backends.columns:
        names |= set(backends["partner"].dropna().astype(str).unique())
    ordered = sorted(n for n in names if n != UNROUTED) + ([UNROUTED] if UNROUTED in names else [])

    groups: list[tuple[str, pd.DataFrame, pd.DataFrame | None]] = []
    for name in ordered:
        b = None
        if backends is not None:
            b = backends[backends["partner"] == name] if "partner" in backends.columns else backends.iloc[:0]
        groups.append((name, requests[partner == name], b))
    groups.append((ALL, requests, backends))

    rows = []
    for name, reqs, b in groups:
        row = _request_stats(reqs, slo, duration)
        ok = reqs[reqs["status"] == "ok"]
        if backends is not None:
            ok_tokens = float(ok["prompt_tokens"].sum() + ok["output_tokens"].sum())
            row.update(_backend_stats(b, ok_tokens))
        if prices is not None:
            row["list_price_usd"] = _list_price_usd(ok, prices)
        rows.append(row)

    out = pd.DataFrame(rows, index=pd.Index([g[0] for g in groups], name="partner", dtype="str"))
    for c in ("requests",) + _STATUS_COUNTS:
        out[c] = out[c].astype("int64")
    return out
