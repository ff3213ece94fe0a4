"""The global load balancer, modelled: admission, routing, retries, cooldowns, timeouts, records.

A request's life (times in simulated seconds):

    arrival_s ── rate limit / context check ── route (policy on a ClusterView) ── transit ──►
    backend (replica queue → prefill → decode) ── transit back ──► client sees first token / end

Transit one way is half the RTT between the client's region and the backend's region, plus the
gateway's own overhead and, for requests that came through the Hugging Face router, half that
hop's RTT. The gateway sits at the network edge next to the client (a global anycast balancer),
so the routing decision is taken at the client's send time. The gateway never decides where a
request goes: the policy does, on a view of eligible backends; this module only builds the view,
carries out the decision, and keeps the books.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Callable

import numpy as np
import simpy

from publicai_lab.policies import BasePolicy, decide, eligible
from publicai_lab.records import RequestRecord, tpot_of
from publicai_lab.sim.backend import Backend
from publicai_lab.sim.events import at
from publicai_lab.sim.replica import Seq
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

__all__ = ["GatewayModel", "SimRequest"]

RATE_WINDOW_S = 60.0


class SimRequest:
    """A request in flight through the simulated federation (mutable bookkeeping)."""

    __slots__ = ("spec", "model", "attempts", "tried", "decision", "backend", "replica", "seq",
                 "transit_s", "counted", "done", "first_token_s", "queue_wait_s", "wait_extra_s", "held_since")

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.model = spec.model
        self.attempts = 0
        self.tried: list[str] = []
        self.decision: RouteDecision | None = None
        self.backend: Backend | None = None
        self.replica: Any = None
        self.seq: Seq | None = None
        self.transit_s = 0.0
        self.counted = False               # does it count in backend.in_flight right now?
        self.done = False
        self.first_token_s = math.nan      # engine time of the first token (latest attempt)
        self.queue_wait_s = math.nan
        self.wait_extra_s = 0.0            # time held at the gateway (flow control)
        self.held_since = math.nan


class GatewayModel:
    def __init__(self, env: simpy.Environment, scenario: Any, policy: Any, backends: list[Backend],
                 rng: np.random.Generator, *, run_id: str, max_context: dict[str, int],
                 on_done: Callable[[], None]) -> None:
        self.env = env
        self.scenario = scenario
        self.policy = policy
        self.policy_name = getattr(policy, "name", type(policy).__name__)
        self.rng = rng
        self.run_id = run_id
        gw = scenario.gateway
        self.num_retries = gw.num_retries
        self.timeout_s = gw.timeout_s
        self.allowed_fails = gw.allowed_fails
        self.cooldown_s = gw.cooldown_s
        self.retry_on_outage = gw.retry_on_outage
        self.max_in_flight_per_replica = gw.max_in_flight_per_replica
        self.fallback_models = {scenario.resolve_model(k): [scenario.resolve_model(m) for m in v]
                                for k, v in gw.model_fallbacks.items()}
        net = scenario.network
        self.gateway_overhead_s = net.gateway_overhead_ms / 1000.0
        self.hf_half_rtt_s = net.hf_router_rtt_ms / 2000.0
        self.backends = backends
        self.by_id = {b.backend_id: b for b in backends}
        self.by_model: dict[str, list[Backend]] = {}
        for b in backends:
            self.by_model.setdefault(b.model, []).append(b)
        self.max_context = max_context
        self.tier_rpm = {name: t.rpm for name, t in scenario.workload.tiers.items()}
        self._rate: dict[str, list] = {}
        self.held: dict[str, deque[SimRequest]] = {}
        self._deadlines: deque[tuple[float, SimRequest]] = deque()
        self._timer_armed = False
        self.live: dict[int, SimRequest] = {}
        self.rows: list[tuple] = []
        self.retries = 0
        self.horizon_s: float | None = None     # responses landing after it are incomplete
        self.last_client_s = 0.0                # when the last response reached its client
        self.on_done = on_done
        observe = getattr(type(policy), "observe", None)
        self._observe = (policy.observe if observe is not None and observe is not BasePolicy.observe
                         else None)

    # ------------------------------------------------------------------ helpers
    def _record(self, req: SimRequest, status: str, error_type: str | None,
                ttft_s: float = math.nan, e2e_s: float = math.nan) -> None:
        spec = req.spec
        b = req.backend
        out = spec.output_tokens
        tpot = tpot_of(ttft_s, e2e_s, out)
        row = (self.run_id, "sim", spec.request_id, spec.arrival_s, spec.client_region, spec.tier,
               req.model, spec.prompt_tokens, out, self.policy_name,
               b.backend_id if b is not None else None, b.partner if b is not None else None,
               b.country if b is not None else None, req.attempts, status, error_type,
               req.queue_wait_s, ttft_s, e2e_s, tpot)
        self.rows.append(row)
        req.done = True
        if req.seq is not None:
            req.seq.req = None     # break the request <-> sequence cycle (no GC during runs)
            req.seq = None
        req.replica = None
        self.live.pop(spec.request_id, None)
        if self._observe is not None and req.decision is not None:
            self._observe(req.decision, RequestRecord(*row))
        if not self.live:
            self.on_done()

    # ------------------------------------------------------------------ arrival and admission
    def arrive(self, spec: RequestSpec) -> None:
        now = self.env.now
        req = SimRequest(spec)
        self.live[spec.request_id] = req
        rpm = self.tier_rpm.get(spec.tier)
        if rpm is not None:
            window = int(now / RATE_WINDOW_S)
            slot = self._rate.get(spec.user)
            if slot is None or slot[0] != window:
                slot = self._rate[spec.user] = [window, 0]
            if slot[1] >= rpm:
                self._record(req, "rejected", "rate_limited")
                return
            slot[1] += 1
        limit = self.max_context.get(spec.model)
        if limit is not None and spec.prompt_tokens + spec.output_tokens > limit:
            self._record(req, "rejected", "context_length_exceeded")
            return
        if self.timeout_s is not None:
            self._deadlines.append((now + self.timeout_s, req))
            if not self._timer_armed:
                self._arm_timer(now)
        self._route(req, now)

    # ------------------------------------------------------------------ routing
    def _view(self, req: SimRequest, model: str, now: float) -> ClusterView:
        region = req.spec.client_region
        candidates = self.by_model.get(model, ())
        if req.tried:
            tried = req.tried
            candidates = [b for b in candidates if b.backend_id not in tried]
        return tuple.__new__(ClusterView, (now, tuple([b.snapshot(now, region) for b in candidates])))

    def _route(self, req: SimRequest, now: float) -> None:
        spec = req.spec
        decision = None
        view = None
        for model in (spec.model, *self.fallback_models.get(spec.model, ())):
            view = self._view(req, model, now)
            if not view.backends:
                continue
            ask = spec if model == spec.model else dataclasses.replace(spec, model=model)
            decision = decide(self.policy, ask, view, self.rng)
            if decision is not None:
                req.model = model
                break
        if decision is None:
            self._record(req, "failed", "no_eligible_backend" if req.attempts == 0 else "retries_exhausted")
            return
        limit = self.max_in_flight_per_replica
        if limit is not None:
            # gateway flow control: hold the request while every eligible backend is full
            ask = spec if req.model == spec.model else dataclasses.replace(spec, model=req.model)
            free = {s.backend_id for s in eligible(ask, view).backends if s.in_flight < limit * s.replicas}
            if not free:
                if req.held_since != req.held_since:
                    req.held_since = now
                self.held.setdefault(req.model, deque()).append(req)
                return
            if decision.backend_id not in free:
                order = (decision.backend_id, *decision.fallbacks)
                chosen = next((b for b in order if b in free), None) or sorted(free)[0]
                decision = RouteDecision(chosen, tuple(b for b in order if b != chosen),
                                         decision.reason + "; full, moved by flow control", decision.scores)
        if req.held_since == req.held_since:
            req.wait_extra_s += now - req.held_since
            req.held_since = math.nan
        self._dispatch(req, decision, now)

    def _dispatch(self, req: SimRequest, decision: RouteDecision, now: float) -> None:
        backend = self.by_id[decision.backend_id]
        req.decision = decision
        req.backend = backend
        req.attempts += 1
        req.tried.append(backend.backend_id)
        backend.in_flight += 1
        backend._snaps.clear()
        req.counted = True
        spec = req.spec
        transit = 0.5 * backend.rtt_s(spec.client_region) + self.gateway_overhead_s
        if spec.channel == "huggingface":
            transit += self.hf_half_rtt_s
        req.transit_s = transit
        frontend = backend.frontend
        if frontend is not None:
            # the server's frontend (HTTP, chat template, tokenisation) queues requests on the way in
            at(self.env, frontend.delay_s(now, now + transit, backend.in_flight - 1), self._on_reach_backend, req)
        else:
            at(self.env, transit, self._on_reach_backend, req)

    def _on_reach_backend(self, ev: simpy.Event) -> None:
        req: SimRequest = ev._value
        if req.done:
            return
        backend = req.backend
        assert backend is not None
        if not backend.up or not backend.active:
            self._backend_error(req, "backend_down")
            return
        replica = backend.pick_replica()
        req.replica = replica
        spec = req.spec
        req.seq = replica.add(req, spec.prompt_tokens, spec.output_tokens)

    # ------------------------------------------------------------------ outcomes
    def on_finish(self, seq: Seq, now: float) -> None:
        """Engine callback: the last token left the replica."""
        req: SimRequest = seq.req
        backend = req.backend
        self._uncount(req)
        if req.done:
            return
        back = req.transit_s
        arrival = req.spec.arrival_s
        ttft = seq.first_token_s + back - arrival
        e2e = now + back - arrival
        req.queue_wait_s = seq.admitted_s - seq.arrived_s + req.wait_extra_s
        if self.horizon_s is not None and now + back > self.horizon_s:
            self._record(req, "incomplete", None)
            self._release(backend)
            return
        if now + back > self.last_client_s:
            self.last_client_s = now + back
        backend.observe_latency(e2e)
        self._record(req, "ok", None, ttft, e2e)
        self._release(backend)

    def on_reject(self, seq: Seq, now: float) -> None:
        """Engine callback: the prompt can never fit in this replica's KV cache."""
        req: SimRequest = seq.req
        self._uncount(req)
        if not req.done:
            self._record(req, "rejected", "kv_cache_too_small")
        self._release(req.backend)

    def lost(self, reqs: list[SimRequest], error_type: str) -> None:
        """A backend went down (outage, withdrawal) while these requests were on it."""
        for req in reqs:
            self._uncount(req)
            if not req.done:
                self._backend_error(req, error_type)

    def _uncount(self, req: SimRequest) -> None:
        if req.counted:
            req.backend.in_flight -= 1
            req.backend._snaps.clear()
            req.counted = False

    def _backend_error(self, req: SimRequest, error_type: str) -> None:
        now = self.env.now
        backend = req.backend
        self._uncount(req)
        backend.record_failure(now, self.allowed_fails, self.cooldown_s)
        started = req.seq is not None and req.seq.first_token_s == req.seq.first_token_s
        req.seq = None
        if started or not self.retry_on_outage or req.attempts > self.num_retries:
            self._record(req, "failed", error_type)
        else:
            self.retries += 1
            # the error travels back to the gateway before the retry goes out
            at(self.env, req.transit_s, self._on_retry, req)
        self._release(backend)

    def _on_retry(self, ev: simpy.Event) -> None:
        req: SimRequest = ev._value
        if req.done:
            return
        self._route(req, self.env.now)

    def _arm_timer(self, now: float) -> None:
        """One timer for all client timeouts. The timeout is the same for every request, so
        deadlines come in arrival order: the timer only ever waits for the oldest live request."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done:
            deadlines.popleft()
        if not deadlines:
            self._timer_armed = False
            return
        self._timer_armed = True
        at(self.env, max(0.0, deadlines[0][0] - now), self._on_timer)

    def _on_timer(self, ev: simpy.Event) -> None:
        now = self.env.now
        deadlines = self._deadlines
        while deadlines and (deadlines[0][1].done or deadlines[0][0] <= now):
            deadline, req = deadlines.popleft()
            if not req.done:
                self._time_out(req)
        self._arm_timer(now)

    def _time_out(self, req: SimRequest) -> None:
        backend = req.backend
        if req.seq is not None:
            req.replica.abort(req.seq)
            req.seq = None
        if backend is not None:
            # also when in transit to the backend: on arrival it sees req.done and drops it
            self._uncount(req)
        held = self.held.get(req.model)
        if held and req in held:
            held.remove(req)
        self._record(req, "timeout", "timeout")
        if backend is not None:
            self._release(backend)

    def _release(self, backend: Backend) -> None:
        """A slot freed on ``backend``: dispatch the oldest request held for its model, if any."""
        if self.max_in_flight_per_replica is None:
            return
        held = self.held.get(backend.model)
        if held:
            self._route(held.popleft(), self.env.now)

    def finish(self, end_s: float) -> None:
        """The horizon: whatever is still in flight is recorded as incomplete."""
        for req in list(self.live.values()):
            self._record(req, "incomplete", None)
