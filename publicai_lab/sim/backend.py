"""A backend as the global gateway sees it: one partner cluster's endpoint and its replicas.

The gateway routes to backends; inside a backend a cluster-local balancer (a Kubernetes service or
vLLM router in real deployments) spreads requests over the replicas. The backend keeps what a
router knows about it: its own in-flight count (exact), recent failures (for LiteLLM-style
allowed-fails and cooldown), an EWMA of observed latency, and the health the active checks saw.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

import simpy

from publicai_lab.failures import register_failure
from publicai_lab.perf import EngineParams
from publicai_lab.sim.frontend import Frontend
from publicai_lab.sim.replica import Replica, Seq
from publicai_lab.types import BackendSnapshot

__all__ = ["Backend"]

EWMA_ALPHA = 0.2


class Backend:
    def __init__(self, env: simpy.Environment, *, backend_id: str, partner: Any, cluster: Any,
                 params: EngineParams, scrape_interval_s: float, health_check_interval_s: float,
                 on_finish: Callable[[Seq, float], None], on_reject: Callable[[Seq, float], None],
                 cost_per_mtok_usd: float, samples: list[tuple] | None,
                 rtt_s: Callable[[str, str], float]) -> None:
        self.env = env
        self.backend_id = backend_id
        self.partner = partner.name
        self.cluster = cluster.name
        self.country = partner.country
        self.region = cluster.region
        self.model = cluster.model
        self.weight = float(cluster.weight)
        self.donated = bool(cluster.donated)
        self.cost_per_mtok_usd = 0.0 if self.donated else cost_per_mtok_usd
        self.params = params
        self.frontend = Frontend.for_perf(params.perf, cluster.replicas)
        self.replicas = [
            Replica(env, params, name=f"{backend_id}#{i}", on_finish=on_finish, on_reject=on_reject,
                    scrape_interval_s=scrape_interval_s, samples=samples, sample_key=(backend_id, i))
            for i in range(cluster.replicas)]
        self.active = list(self.replicas)          # replicas not withdrawn
        self.balancer = cluster.replica_balancer
        self._rr = 0
        self.in_flight = 0
        self.up = True
        self._transitions: list[tuple[float, bool]] = [(-math.inf, True)]
        self.cooldown_until_s = -math.inf
        self._fails: deque[float] = deque()
        self.latency_ewma_s = math.nan
        self._scrape_interval = scrape_interval_s
        self._health_interval = health_check_interval_s
        self._up_since = 0.0
        self.available_replica_s = 0.0
        # engine gauges are constant within a scrape epoch: aggregate them once per epoch
        self._gauge_epoch = -1
        self._gauges = (0, 0, 0.0)
        self._health_epoch = -1
        self._health_up = True
        # snapshots per client region, valid until something the router sees changes
        self._snaps: dict[str, BackendSnapshot] = {}
        self._snaps_key: tuple = ()
        self._network_rtt_s = rtt_s
        self._rtt_from: dict[str, float] = {}

    # ------------------------------------------------------------------ routing-side state
    def healthy(self, now: float) -> bool:
        """What the router believes: not cooling down, and up at the last active health check."""
        if now < self.cooldown_until_s or not self.active:
            return False
        epoch = int(now / self._health_interval)
        if epoch != self._health_epoch:
            checked_at = epoch * self._health_interval
            self._health_epoch = epoch
            self._health_up = next(up for t, up in reversed(self._transitions) if t <= checked_at)
        return self._health_up

    def record_failure(self, now: float, allowed_fails: int, cooldown_s: float) -> None:
        if register_failure(self._fails, now, allowed_fails):
            self.cooldown_until_s = now + cooldown_s
            self._snaps.clear()

    def observe_latency(self, e2e_s: float) -> None:
        old = self.latency_ewma_s
        self.latency_ewma_s = e2e_s if old != old else old + EWMA_ALPHA * (e2e_s - old)
        self._snaps.clear()

    def gauges(self, now: float) -> tuple[int, int, float]:
        """(running, waiting, mean KV use) over active replicas, as the last scrape saw them."""
        epoch = int(now / self._scrape_interval)
        if epoch != self._gauge_epoch:
            running = waiting = 0
            kv = 0.0
            for r in self.active:
                a, b, c = r.scraped(now)
                running += a
                waiting += b
                kv += c
            n = len(self.active)
            self._gauges = (running, waiting, kv / n if n else 0.0)
            self._gauge_epoch = epoch
        return self._gauges

    def changed(self) -> None:
        """Router-side state changed (in-flight count, latency, cooldown): drop cached snapshots."""
        self._snaps.clear()

    def rtt_s(self, client_region: str) -> float:
        """Round-trip time between a client region and this backend, seconds (cached)."""
        v = self._rtt_from.get(client_region)
        if v is None:
            v = self._rtt_from[client_region] = self._network_rtt_s(client_region, self.region)
        return v

    def snapshot(self, now: float, region: str) -> BackendSnapshot:
        """The router's view of this backend for a client in ``region`` (cached until it changes)."""
        key = (int(now / self._scrape_interval), int(now / self._health_interval),
               now < self.cooldown_until_s)
        if key != self._snaps_key:
            self._snaps.clear()
            self._snaps_key = key
        else:
            snap = self._snaps.get(region)
            if snap is not None:
                return snap
        running, waiting, kv = self.gauges(now)
        n = len(self.active)
        snap = self._snaps[region] = tuple.__new__(BackendSnapshot, (
            self.backend_id, self.partner, self.country, self.region, self.model,
            self.healthy(now), self.weight, self.in_flight, running, waiting, kv,
            self._gauge_epoch * self._scrape_interval, self.rtt_s(region), self.cost_per_mtok_usd,
            self.latency_ewma_s, n, n * self.params.max_num_seqs, self.donated))
        return snap

    # ------------------------------------------------------------------ engine side
    def pick_replica(self) -> Replica:
        active = self.active
        if self.balancer == "round_robin":
            self._rr = (self._rr + 1) % len(active)
            return active[self._rr]
        best = active[0]
        best_load = best.load
        for r in active[1:]:
            load = r.load
            if load < best_load:
                best, best_load = r, load
        return best

    def set_up(self, up: bool) -> list[Any]:
        """Outage start (up=False) or end. Returns the requests lost on the replicas."""
        now = self.env.now
        if up == self.up:
            return []
        self.up = up
        self._transitions.append((now, up))
        self._health_epoch = self._gauge_epoch = -1
        self._snaps.clear()
        lost: list[Any] = []
        if not up:
            self.available_replica_s += len(self.active) * (now - self._up_since)
            for r in self.active:
                lost.extend(r.fail_all())
        else:
            self._up_since = now
        return lost

    def withdraw(self, n: int) -> list[Any]:
        """A partner takes ``n`` replicas back: their requests are lost, capacity shrinks."""
        now = self.env.now
        lost: list[Any] = []
        if self.up:
            self.available_replica_s += len(self.active) * (now - self._up_since)
            self._up_since = now
        self._gauge_epoch = -1
        self._snaps.clear()
        for _ in range(min(n, len(self.active))):
            r = self.active.pop()
            lost.extend(r.fail_all())
        return lost

    def restore(self, n: int) -> None:
        now = self.env.now
        if self.up:
            self.available_replica_s += len(self.active) * (now - self._up_since)
            self._up_since = now
        self._gauge_epoch = -1
        self._snaps.clear()
        idle = [r for r in self.replicas if r not in self.active][:n]
        self.active.extend(idle)

    def close(self, end_s: float) -> None:
        """Finish the accounting at the end of the run."""
        if self.up:
            self.available_replica_s += len(self.active) * (end_s - self._up_since)
            self._up_since = end_s
        for r in self.replicas:
            if r.mode != 0:
                r.busy_s += end_s - r._busy_since
                r._busy_since = end_s
                r._touch(end_s)
