"""Faults and availability windows, turned into timed state changes of backends.

- ``outage``: the cluster goes dark at ``at_s`` for ``duration_s`` (or for good): requests on it are
  lost and retried or failed per ``gateway.retry_on_outage``; the router finds out from failures
  (allowed-fails/cooldown) and from its active health checks.
- ``slowdown``: every step on the cluster takes ``factor`` times longer (thermal throttling, a noisy
  neighbour, a degraded interconnect).
- ``withdraw``: the partner takes ``replicas`` engines back (a donation ends or shrinks).
- availability windows: outside its windows a cluster is down, exactly like an outage.
"""

from __future__ import annotations

from typing import Any, Callable

import simpy

from publicai_lab.sim import events
from publicai_lab.sim.backend import Backend

__all__ = ["schedule_faults"]


def _at(env: simpy.Environment, t: float, action: Callable[[], None]) -> None:
    events.at(env, max(0.0, t - env.now), lambda _call: action())


def schedule_faults(env: simpy.Environment, scenario: Any, backends: dict[str, Backend],
                    lost: Callable[[list, str], None]) -> None:
    """Schedule every fault and availability transition of the scenario on ``env``."""

    def down(b: Backend, why: str) -> None:
        lost(b.set_up(False), why)

    def up(b: Backend) -> None:
        b.set_up(True)

    def set_slowdown(b: Backend, factor: float) -> None:
        for r in b.replicas:
            r.slowdown = factor
            r.speed_changed(env.now)

    for partner, cluster in scenario.clusters():
        b = backends[scenario.backend_id(partner, cluster)]
        windows = sorted((w.start_s, w.end_s) for w in cluster.availability)
        if not windows:
            continue
        if windows[0][0] > 0:
            _at(env, 0.0, lambda b=b: down(b, "unavailable"))
        for start, end in windows:
            if start > 0:
                _at(env, start, lambda b=b: up(b))
            _at(env, end, lambda b=b: down(b, "unavailable"))

    for fault in scenario.faults:
        b = backends[fault.cluster]
        end = None if fault.duration_s is None else fault.at_s + fault.duration_s
        if fault.kind == "outage":
            _at(env, fault.at_s, lambda b=b: down(b, "backend_down"))
            if end is not None:
                _at(env, end, lambda b=b: up(b))
        elif fault.kind == "slowdown":
            _at(env, fault.at_s, lambda b=b, f=fault.factor: set_slowdown(b, f))
            if end is not None:
                _at(env, end, lambda b=b: set_slowdown(b, 1.0))
        elif fault.kind == "withdraw":
            n = fault.replicas if fault.replicas is not None else len(b.replicas)
            _at(env, fault.at_s, lambda b=b, n=n: lost(b.withdraw(n), "capacity_withdrawn"))
            if end is not None:
                _at(env, end, lambda b=b, n=n: b.restore(n))
