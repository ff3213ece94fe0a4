"""The gateway's own Prometheus metrics: tiny counters and histograms, rendered as text on demand.

``prometheus_client`` would do, but its per-observation cost (locks, label lookups through
dicts of tuples, one object per child) is a noticeable share of a gateway whose whole budget is
a few hundred microseconds per request. Here every series is a plain list slot found once per
backend; an observation is one ``bisect`` and two additions; the text is built only when
``/metrics`` is scraped.

Label values are escaped per the text exposition format 0.0.4 (backslash, double quote, newline).
Nothing here ever sees an API key: the gateway passes backend ids, model names, status codes and
tier names only.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable, Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "render", "escape_label", "LATENCY_BUCKETS_S"]

#: seconds: from sub-millisecond (gateway overhead) to the 600 s default request timeout
LATENCY_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                        1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def escape_label(value: object) -> str:
    """A label value escaped for the text format."""
    s = str(value)
    if "\\" in s or '"' in s or "\n" in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return s


def _labels(names: Sequence[str], values: Sequence[object], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if x != x:
        return "NaN"
    if x == math.inf:
        return "+Inf"
    if x == -math.inf:
        return "-Inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


class Counter:
    """A monotonically increasing number per label set. ``inc(key)`` with ``key`` a label tuple."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.values: dict[tuple, float] = {}

    def inc(self, key: tuple, amount: float = 1.0) -> None:
        v = self.values
        v[key] = v.get(key, 0.0) + amount

    def lines(self) -> Iterable[str]:
        for key, value in sorted(self.values.items(), key=lambda kv: tuple(map(str, kv[0]))):
            yield f"{self.name}{_labels(self.labels, key)} {_num(value)}"


class Gauge:
    """A value per label set, read at render time from a callback (so it is never stale)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str],
                 read: Callable[[], Iterable[tuple[tuple, float]]]) -> None:
        self.name, self.help, self.labels, self.read = name, help_text, tuple(labels), read

    def lines(self) -> Iterable[str]:
        for key, value in self.read():
            yield f"{self.name}{_labels(self.labels, key)} {_num(value)}"


class Histogram:
    """Cumulative-bucket histogram per label set; ``observe(key, seconds)``."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str],
                 buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        #: key -> [per-bucket counts (non-cumulative, last = +Inf), sum, count]
        self.series: dict[tuple, list] = {}

    def observe(self, key: tuple, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [[0] * (len(self.buckets) + 1), 0.0, 0]
        s[0][bisect_left(self.buckets, value)] += 1
        s[1] += value
        s[2] += 1

    def lines(self) -> Iterable[str]:
        for key, (counts, total, n) in sorted(self.series.items(), key=lambda kv: tuple(map(str, kv[0]))):
            acc = 0
            for le, c in zip((*self.buckets, math.inf), counts):
                acc += c
                le_label = 'le="' + _num(le) + '"'
                yield f"{self.name}_bucket{_labels(self.labels, key, le_label)} {acc}"
            yield f"{self.name}_sum{_labels(self.labels, key)} {_num(total)}"
            yield f"{self.name}_count{_labels(self.labels, key)} {n}"


def render(metrics: Iterable[Counter | Gauge | Histogram]) -> str:
    """The text exposition (format 0.0.4) of ``metrics``, with HELP and TYPE lines."""
    out: list[str] = []
    for m in metrics:
        out.append(f"# HELP {m.name} {m.help}")
        out.append(f"# TYPE {m.name} {m.kind}")
        out.extend(m.lines())
    out.append("")
    return "\n".join(out)
