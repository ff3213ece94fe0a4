"""``simulate(scenario)``: wire the federation together, run the clock, return a ``SimResult``.

Randomness: one ``numpy.random.SeedSequence(seed)`` spawns independent streams — the workload
(arrivals, lengths, regions, tiers), the router (policy draws) and the engines' speed wandering
(clusters with ``speed_jitter``; ``sim/jitter.py``). The replica model itself is deterministic.
Same scenario + seed → identical records; a different policy sees the very same workload, so
policies can be compared request for request.
"""

from __future__ import annotations

import gc
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd
import simpy

from publicai_lab.sim.events import at

from publicai_lab import policies
from publicai_lab.errors import PolicyError, SimulationError
from publicai_lab.perf import EngineParams, engine_params_for
from publicai_lab.records import COLUMNS, frame_from_columns
from publicai_lab.sim.backend import Backend
from publicai_lab.sim.faults import schedule_faults
from publicai_lab.sim.gateway import GatewayModel
from publicai_lab.sim.jitter import schedule_speed_jitter
from publicai_lab.types import RequestSpec

__all__ = ["simulate", "SimResult", "resolve_policy"]

NOMINAL_BATCH = 64
NOMINAL_CONTEXT_TOKENS = 1000


@dataclass
class SimResult:
    """What a simulation produced. ``requests`` follows the pinned record schema."""

    requests: pd.DataFrame
    replicas: pd.DataFrame
    backends: pd.DataFrame
    duration_s: float
    scenario: Any
    policy_name: str
    seed: int
    wall_s: float
    events: dict[str, int] = field(default_factory=dict)

    def summary(self, slo: Any = None) -> pd.DataFrame:
        """Per partner and overall: throughput, goodput under SLO, latency percentiles, cost."""
        from publicai_lab.analysis import summarize
        return summarize(self.requests, self.backends, slo=slo or self.scenario.slo,
                         duration_s=self.duration_s, prices=prices_of(self.scenario))

    def report(self, out_dir: str, *, title: str | None = None) -> Any:
        """Write report.md, figures and the records (Parquet) to ``out_dir``."""
        from publicai_lab.analysis import write_report
        return write_report(out_dir, self.requests, self.replicas, self.backends,
                            title=title or f"Simulation: {self.scenario.name} ({self.policy_name})",
                            scenario_name=self.scenario.name, policy=self.policy_name,
                            seed=self.seed, slo=_slo_dict(self.scenario.slo), duration_s=self.duration_s,
                            prices=prices_of(self.scenario))

    def __repr__(self) -> str:
        ok = int((self.requests["status"] == "ok").sum()) if len(self.requests) else 0
        return (f"SimResult(scenario={self.scenario.name!r}, policy={self.policy_name!r}, seed={self.seed}, "
                f"requests={len(self.requests)}, ok={ok}, duration_s={self.duration_s:.1f})")


def _slo_dict(slo: Any) -> dict[str, float]:
    return {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "e2e_s": slo.e2e_s}


def prices_of(scenario: Any) -> dict[str, tuple[float, float]]:
    return {name: (m.price_in_per_mtok_usd, m.price_out_per_mtok_usd) for name, m in scenario.models.items()}


def resolve_policy(scenario: Any, policy: Any) -> Any:
    """None → the scenario's policy; a name → the registry; anything else is used as the object."""
    if policy is None:
        ref = scenario.gateway.policy
        return policies.get(ref.name, **dict(ref.params))
    if isinstance(policy, str):
        return policies.get(policy)
    if not callable(getattr(policy, "route", None)):
        raise PolicyError(f"policy {policy!r} has no route(req, view, rng) method")
    return policy


def _cost_per_mtok(params: EngineParams, cluster: Any) -> float:
    """Rough marginal cost of a cluster's tokens at a nominal batch, for cost-aware routing."""
    if cluster.donated or not cluster.cost_per_gpu_hour_usd:
        return 0.0
    batch = min(NOMINAL_BATCH, params.max_num_seqs)
    step = params.perf.step_s(0, batch, batch * NOMINAL_CONTEXT_TOKENS)
    tokens_per_hour = batch / step * 3600.0
    gpus_per_replica = cluster.gpus / cluster.replicas
    return cluster.cost_per_gpu_hour_usd * gpus_per_replica / tokens_per_hour * 1e6


class _Feeder:
    """Pulls RequestSpecs from the workload one at a time and schedules each at its arrival."""

    def __init__(self, env: simpy.Environment, specs: Iterator[RequestSpec], gateway: GatewayModel,
                 progress: Any) -> None:
        self.env = env
        self.specs = specs
        self.gateway = gateway
        self.exhausted = False
        self.count = 0
        self.progress = progress

    def start(self) -> None:
        self._schedule_next()

    def _schedule_next(self) -> None:
        spec = next(self.specs, None)
        if spec is None:
            self.exhausted = True
            return
        at(self.env, max(0.0, spec.arrival_s - self.env.now), self._on_arrival, spec)

    def _on_arrival(self, ev: simpy.Event) -> None:
        self.count += 1
        if self.progress is not None and self.count % 2048 == 0:
            self.progress.update(2048)
        self._schedule_next()
        self.gateway.arrive(ev._value)


def simulate(scenario: Any, *, seed: int | None = None, policy: Any = None,
             requests: int | None = None, horizon_s: float | None = None,
             progress: bool | None = None, run_id: str | None = None) -> SimResult:
    """Run the scenario in the simulator.

    ``policy`` is a registered name, a policy object (any class with ``route``), or None for the
    scenario's own. ``requests``/``horizon_s`` override the scenario's limits. ``progress``: None
    shows a bar only on a terminal. Without a horizon the run drains: it ends when the last request
    is done; with one, requests still in flight at the horizon are recorded as ``incomplete``.
    """
    from publicai_lab.scenario import load_scenario
    from publicai_lab.workload import generate

    if not hasattr(scenario, "partners"):
        scenario = load_scenario(scenario)
    seed = scenario.seed if seed is None else int(seed)
    max_requests = requests if requests is not None else (None if horizon_s is not None else scenario.requests)
    horizon = horizon_s if horizon_s is not None else (None if requests is not None else scenario.horizon_s)
    if max_requests is None and horizon is None:
        raise SimulationError("set requests or horizon_s: the run would never end")
    pol = resolve_policy(scenario, policy)
    policy_name = getattr(pol, "name", type(pol).__name__)
    run_id = run_id or f"sim-{scenario.name}-{policy_name}-{seed}"

    # spawn(3)'s first two children are spawn(2)'s: adding the jitter stream changed no earlier run
    workload_ss, router_ss, jitter_ss = np.random.SeedSequence(seed).spawn(3)
    workload_rng = np.random.default_rng(workload_ss)
    router_rng = np.random.default_rng(router_ss)

    env = simpy.Environment()
    gw_cfg = scenario.gateway
    samples: list[tuple] = []
    backends: dict[str, Backend] = {}
    gateway: GatewayModel | None = None
    done_event = env.event()

    def on_finish(seq: Any, t: float) -> None:
        gateway.on_finish(seq, t)

    def on_reject(seq: Any, t: float) -> None:
        gateway.on_reject(seq, t)

    info: list[dict[str, Any]] = []
    max_context: dict[str, int] = {}
    for partner, cluster in scenario.clusters():
        params = engine_params_for(scenario, partner, cluster)
        bid = scenario.backend_id(partner, cluster)
        backends[bid] = Backend(
            env, backend_id=bid, partner=partner, cluster=cluster, params=params,
            scrape_interval_s=gw_cfg.scrape_interval_s, health_check_interval_s=gw_cfg.health_check_interval_s,
            on_finish=on_finish, on_reject=on_reject, cost_per_mtok_usd=_cost_per_mtok(params, cluster),
            samples=samples, rtt_s=scenario.network.rtt_s)
        model = scenario.resolve_model(cluster.model)
        max_context[model] = max(max_context.get(model, 0), params.max_context_tokens)
        info.append(dict(backend_id=bid, partner=partner.name, cluster=cluster.name, country=partner.country,
                         region=cluster.region, model=model, hardware=cluster.hardware, gpus=cluster.gpus,
                         replicas=cluster.replicas, tensor_parallel=cluster.tensor_parallel,
                         donated=bool(cluster.donated), cost_per_gpu_hour_usd=float(cluster.cost_per_gpu_hour_usd or 0.0),
                         weight=float(cluster.weight), perf_model=params.perf.source,
                         kv_cache_tokens=params.kv_blocks * params.block_size))

    feeder_box: list[_Feeder] = []

    def on_done() -> None:
        if feeder_box and feeder_box[0].exhausted and not done_event.triggered:
            done_event.succeed()

    gateway = GatewayModel(env, scenario, pol, list(backends.values()), router_rng, run_id=run_id,
                           max_context=max_context, on_done=on_done)
    gateway.horizon_s = horizon
    schedule_faults(env, scenario, backends, gateway.lost)
    schedule_speed_jitter(env, scenario, backends, np.random.default_rng(jitter_ss))

    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_requests, desc=f"simulate {scenario.name}", unit="req", mininterval=0.5)
    specs = generate(scenario, workload_rng, max_requests=max_requests, horizon_s=horizon)
    feeder = _Feeder(env, specs, gateway, bar)
    feeder_box.append(feeder)

    wall0 = time.perf_counter()
    # The cyclic garbage collector walks every live object each time a generation fills up; with
    # a million records alive that made runs 1.5x slower. The simulator creates no reference
    # cycles that outlive a request (the gateway breaks request <-> sequence links when it
    # records), so collection is paused for the run and restored after.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        feeder.start()
        if feeder.exhausted and not gateway.live:
            done_event.succeed()
        until: Any = done_event
        if horizon is not None:
            until = env.any_of([done_event, env.timeout(horizon)])
        env.run(until=until)
        return _collect(env, scenario, gateway, backends, feeder, bar, info, samples, horizon,
                        policy_name, seed, wall0)
    finally:
        if gc_was_enabled:
            gc.enable()


def _collect(env: simpy.Environment, scenario: Any, gateway: GatewayModel, backends: dict[str, Backend],
             feeder: _Feeder, bar: Any, info: list[dict[str, Any]], samples: list[tuple],
             horizon: float | None, policy_name: str, seed: int, wall0: float) -> SimResult:
    """After the clock stops: close the books and build the result frames."""
    end_s = max(env.now, gateway.last_client_s)
    if horizon is not None:
        end_s = min(end_s, horizon)
    gateway.finish(end_s)
    for b in backends.values():
        b.close(end_s)
    wall_s = time.perf_counter() - wall0
    if bar is not None:
        bar.update(feeder.count - bar.n)
        bar.close()

    requests_df = _frame(gateway.rows)
    replicas_df = pd.DataFrame(samples, columns=["time_s", "backend_id", "replica", "running", "waiting", "kv_use"])
    replicas_df = replicas_df.sort_values(["time_s", "backend_id", "replica"], kind="stable").reset_index(drop=True)
    bdf = pd.DataFrame(info)
    by_id = {b.backend_id: b for b in backends.values()}
    bdf["busy_s"] = [sum(r.busy_s for r in by_id[i].replicas) for i in bdf["backend_id"]]
    bdf["available_s"] = [by_id[i].available_replica_s for i in bdf["backend_id"]]
    bdf["gpu_hours"] = [by_id[i].available_replica_s * (row.gpus / row.replicas) / 3600.0
                        for i, row in zip(bdf["backend_id"], bdf.itertuples())]
    bdf["preemptions"] = [sum(r.preemptions for r in by_id[i].replicas) for i in bdf["backend_id"]]
    return SimResult(requests=requests_df, replicas=replicas_df, backends=bdf, duration_s=float(end_s),
                     scenario=scenario, policy_name=policy_name, seed=seed, wall_s=wall_s,
                     events={"arrivals": feeder.count, "retries": gateway.retries,
                             "preemptions": int(bdf["preemptions"].sum())})


def _frame(rows: list[tuple]) -> pd.DataFrame:
    rows.sort(key=lambda r: r[2])   # by request_id: deterministic order independent of completion
    if rows:
        cols = {name: list(col) for name, col in zip(COLUMNS, zip(*rows))}
    else:
        cols = {name: [] for name in COLUMNS}
    return frame_from_columns(cols)
