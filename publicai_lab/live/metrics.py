"""Read a vLLM server's Prometheus ``/metrics`` page into the numbers a router needs.

The gateway scrapes every backend on an interval and turns each page into an
:class:`EngineGauges` (running, waiting, KV-cache use) for a ``BackendSnapshot`` — the same three
gauges the simulator samples from its replica model. The emulated backend publishes the same
names, so one parser serves both.

Only the Prometheus text exposition format (version 0.0.4, what vLLM serves) is needed, so it is
parsed here by hand rather than by pulling in ``prometheus_client``: ``# HELP``/``# TYPE``
comments, label values with escaped quotes, backslashes and newlines, ``+Inf``/``-Inf``/``NaN``,
optional timestamps and OpenMetrics exemplars (ignored). Histograms are not special: their
``_bucket``, ``_sum`` and ``_count`` samples are ordinary series, and :func:`histogram_buckets` /
:func:`histogram_quantile` read them back the way PromQL's ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from publicai_lab.errors import GatewayError

__all__ = [
    "EngineGauges",
    "Samples",
    "parse_prometheus",
    "histogram_totals",
    "engine_gauges",
    "sample_sum",
    "histogram_buckets",
    "histogram_quantile",
]

#: metric name -> one ``(labels, value)`` per series, in page order
Samples = dict[str, list[tuple[dict[str, str], float]]]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USE = "vllm:kv_cache_usage_perc"
KV_USE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM releases before the V1 engine

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_value(token: str) -> float:
    """A sample value: Go's float syntax plus ``+Inf``, ``-Inf``, ``NaN`` (any case)."""
    low = token.lower()
    if low in ("+inf", "inf"):
        return math.inf
    if low == "-inf":
        return -math.inf
    if low == "nan":
        return math.nan
    return float(token)


def _parse_labels(line: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y\\"z"}`` starting at the ``{`` at ``pos``; return labels and the index
    just past ``}``. Written as a scanner because label values may contain ``,``, ``}`` and
    escaped quotes, which defeat a regular expression."""
    labels: dict[str, str] = {}
    i = pos + 1
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == "}":
            return labels, i + 1
        m = _LABEL_NAME.match(line, i)
        if not m:
            raise ValueError(f"line {lineno}: bad label name at column {i + 1}: {line!r}")
        key = m.group(0)
        i = m.end()
        while i < n and line[i] in " \t":
            i += 1
        if i + 1 >= n or line[i] != "=" or line[i + 1] != '"':
            raise ValueError(f"line {lineno}: expected =\" after label {key!r}: {line!r}")
        i += 2
        chars: list[str] = []
        while True:
            if i >= n:
                raise ValueError(f"line {lineno}: unterminated label value: {line!r}")
            c = line[i]
            if c == "\\" and i + 1 < n:
                nxt = line[i + 1]
                chars.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                chars.append(c)
                i += 1
        labels[key] = "".join(chars)
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ",":
            i += 1
        elif i < n and line[i] == "}":
            return labels, i + 1
        else:
            raise ValueError(f"line {lineno}: expected , or }} after label {key!r}: {line!r}")


def parse_prometheus(text: str) -> Samples:
    """Parse a Prometheus text page into ``{sample name: [(labels, value), ...]}``.

    Comment lines (``# HELP``, ``# TYPE``, ``# EOF``) and blank lines are skipped; timestamps and
    exemplars after the value are dropped. A malformed line raises ``ValueError`` naming its line
    number: a scrape that half-parses would feed the router wrong numbers silently.
    """
    out: Samples = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _NAME.match(line)
        if not m:
            raise ValueError(f"line {lineno}: bad metric name: {raw!r}")
        name = m.group(0)
        i = m.end()
        labels: dict[str, str] = {}
        if i < len(line) and line[i] == "{":
            labels, i = _parse_labels(line, i, lineno)
        rest = line[i:].split("#", 1)[0].split()  # drop an OpenMetrics exemplar
        if not rest:
            raise ValueError(f"line {lineno}: no value: {raw!r}")
        try:
            value = _parse_value(rest[0])
        except ValueError:
            raise ValueError(f"line {lineno}: bad value {rest[0]!r}: {raw!r}") from None
        out.setdefault(name, []).append((labels, value))
    return out


def _matches(labels: Mapping[str, str], match: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


def sample_sum(samples: Samples, name: str, **match: str) -> float | None:
    """Sum of every series of ``name`` whose labels include ``match``; ``None`` if there is none
    (so that "absent" and "zero" stay distinguishable)."""
    vals = [v for labels, v in samples.get(name, ()) if _matches(labels, match)]
    return sum(vals) if vals else None


def histogram_totals(samples: Samples, names: Sequence[str]) -> tuple[float, float] | None:
    """(sum, count) of the first histogram of ``names`` the page has (a metric renamed across
    versions: the current name first), or ``None``."""
    for name in names:
        total, count = sample_sum(samples, name + "_sum"), sample_sum(samples, name + "_count")
        if total is not None and count is not None:
            return float(total), float(count)
    return None


@dataclass(frozen=True, slots=True)
class EngineGauges:
    """The load of one vLLM server, as its ``/metrics`` page shows it.

    ``running`` and ``waiting`` are summed over the server's engines (data-parallel ranks), which is
    what a router compares across servers. ``kv_use`` (0..1) is the *maximum* over engines: a
    request lands on one engine, and the fullest one is where preemption starts, so the max is the
    conservative reading (with one engine — always the case on our CPU backends — max = mean).
    """

    running: int
    waiting: int
    kv_use: float


def engine_gauges(text: str | Samples, *, model_name: str | None = None) -> EngineGauges:
    """Extract :class:`EngineGauges` from a vLLM ``/metrics`` page (text or already parsed).

    ``model_name`` restricts to series with that ``model_name`` label (a server may serve several).
    Reads ``vllm:kv_cache_usage_perc`` and falls back to ``vllm:gpu_cache_usage_perc`` (older
    releases); a page without a KV gauge gives ``kv_use=0.0``. A page without the running/waiting
    gauges is not a vLLM page: :class:`GatewayError`.
    """
    samples = parse_prometheus(text) if isinstance(text, str) else text
    match = {"model_name": model_name} if model_name is not None else {}
    running = sample_sum(samples, RUNNING, **match)
    waiting = sample_sum(samples, WAITING, **match)
    if running is None or waiting is None:
        missing = [n for n, v in ((RUNNING, running), (WAITING, waiting)) if v is None]
        what = f" for model_name={model_name!r}" if model_name is not None else ""
        raise GatewayError(f"not a vLLM /metrics page: no {' or '.join(missing)}{what}")
    kv_values: list[float] = []
    for name in (KV_USE, KV_USE_OLD):
        kv_values = [v for labels, v in samples.get(name, ()) if _matches(labels, match)]
        if kv_values:
            break
    kv = max((v for v in kv_values if not math.isnan(v)), default=0.0)
    return EngineGauges(running=int(round(running)), waiting=int(round(waiting)), kv_use=float(kv))


def histogram_buckets(samples: Samples, name: str, **match: str) -> list[tuple[float, float]]:
    """Cumulative buckets ``[(le, count), ...]`` of histogram ``name`` (without ``_bucket``),
    summed over every series whose labels include ``match``, sorted by ``le`` (``+Inf`` last)."""
    acc: dict[float, float] = {}
    for labels, v in samples.get(name + "_bucket", ()):
        if "le" in labels and _matches(labels, match):
            le = _parse_value(labels["le"])
            acc[le] = acc.get(le, 0.0) + v
    return sorted(acc.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """The ``q`` quantile (0..1) of cumulative ``buckets``, interpolated linearly within a bucket,
    as PromQL's ``histogram_quantile`` does: the lowest bucket starts at 0, a quantile in the
    ``+Inf`` bucket returns the highest finite bound, no observations give NaN."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if not buckets or buckets[-1][0] != math.inf:
        raise ValueError("buckets must end with le=+Inf")
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return prev_le
            if count == prev_count:
                return le
            lower = prev_le if prev_le < le else 0.0
            return lower + (le - lower) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le
