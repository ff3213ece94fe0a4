"""vLLM's API server in front of each engine: a queue and a delay.

Every request passes through the server's frontend (HTTP parsing, chat template, tokenisation)
before its engine sees it: ``request_overhead_s`` from the perf model, measured on a lone
request. Part of that time the frontend — one Python process per vLLM server — is busy and can
take no other request (``frontend_busy_s``, its CPU time); the rest (socket hops, waiting for the
engine's next step) overlaps with other requests. So requests queue for the busy part, FIFO, one
server per replica, and then wait out the rest. A frontend busy for most of its overhead
saturates before its engine does (vLLM's single API process is a known bottleneck at high request
rates); the calibrated CPU server here is busy 0–2.6 ms of its 7–16 ms (docs/fidelity.md).
With both times 0 (published GPU fits) it costs nothing and changes nothing.

Its streaming work (detokenising, SSE for every running request) shares that process's core, so a
new request's way in and its first token wait behind it: each other request in flight at the
server adds ``request_overhead_per_stream_s`` to the delay. That is a slope measured in the
frontend's linear range (lone chat requests beside 0–15 running streams, ``calibrate``), not a
queue: on a time-sliced core the cost per token falls as batches grow, and a queue fed with
per-token costs overloads where the real server does not (docs/fidelity.md §4, runs J and M).
Past that range the real frontend saturates, which this delay does not follow (§6).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Frontend"]


class Frontend:
    """``delay_s(now_s, arrive_s, in_flight)``: from ``now_s`` until a request arriving at
    ``arrive_s`` is through the frontend: a wait for a free server, ``busy_s`` on it, then the rest
    of ``overhead_s`` plus ``per_stream_s`` for each other request in flight at its server."""

    __slots__ = ("busy_s", "rest_s", "per_stream_s", "servers", "_free_at_s")

    def __init__(self, servers: int, overhead_s: float, busy_s: float = 0.0, per_stream_s: float = 0.0) -> None:
        self.busy_s = float(busy_s)                                   # the overhead is at least the busy time
        self.rest_s = max(0.0, float(overhead_s) - self.busy_s)
        self.per_stream_s = float(per_stream_s)
        self.servers = max(1, int(servers))
        self._free_at_s = [0.0] * self.servers

    @classmethod
    def for_perf(cls, perf: Any, servers: int) -> "Frontend | None":
        """The frontend of a perf model's servers, or None when it takes no time (nothing to do)."""
        per_stream_s = perf.request_overhead_per_stream_s
        if perf.request_overhead_s <= 0.0 and perf.frontend_busy_s <= 0.0 and per_stream_s <= 0.0:
            return None
        return cls(servers, perf.request_overhead_s, perf.frontend_busy_s, per_stream_s)

    def delay_s(self, now_s: float, arrive_s: float, in_flight: int = 0) -> float:
        """``in_flight``: requests held by all this frontend's servers, this one excluded; they are
        taken as spread evenly over the servers."""
        rest = self.rest_s
        if self.per_stream_s > 0.0 and in_flight > 0:
            rest += self.per_stream_s * in_flight / self.servers
        if self.busy_s <= 0.0:
            return arrive_s + rest - now_s
        free = self._free_at_s
        i = free.index(min(free)) if len(free) > 1 else 0
        start = arrive_s if arrive_s > free[i] else free[i]
        free[i] = start + self.busy_s
        return free[i] + rest - now_s
