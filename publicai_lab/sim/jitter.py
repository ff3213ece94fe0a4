"""The engine's speed wandering over seconds (a cluster's ``speed_jitter``), as timed state changes.

Every ``interval_s`` each replica of the cluster gets a new step-time factor exp(x), where x is an
Ornstein–Uhlenbeck process sampled exactly at those instants:

    x₀ ~ N(0, sd²),   x_{k+1} = ρ·x_k + sd·√(1 − ρ²)·ε_k,   ρ = exp(−interval_s / correlation_s)

so x is stationary with standard deviation ``sd`` and its correlation falls as exp(−Δt / τ). The
median factor is 1: the perf model (and a speed anchor, a median) stays the engine's typical
speed. One independent path per replica, all from one generator seeded from the scenario's seed.

Why a process and not independent noise per step: noise on single steps averages out over a
request's hundreds of steps and changes nothing, while a stretch of several seconds at +10 % is a
transient overload at 75 % of saturation, whose queue lengthens the latency tail and makes runs of
the same load disagree (docs/fidelity.md §10).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import simpy

from publicai_lab.sim.backend import Backend

__all__ = ["schedule_speed_jitter", "ou_values"]


def ou_values(rng: np.random.Generator, *, sd: float, interval_s: float, correlation_s: float) -> Iterator[float]:
    """The stationary Ornstein–Uhlenbeck process above, sampled ``interval_s`` apart, without end."""
    rho = math.exp(-interval_s / correlation_s)
    innovation_sd = sd * math.sqrt(1.0 - rho * rho)
    x = sd * float(rng.standard_normal())
    while True:
        for eps in rng.standard_normal(256):     # drawn in blocks: how long a run lasts is not known
            yield x
            x = rho * x + innovation_sd * float(eps)


def schedule_speed_jitter(env: simpy.Environment, scenario: Any, backends: dict[str, Backend],
                          rng: np.random.Generator) -> None:
    """Start one process per replica of every cluster with ``speed_jitter.sd > 0``."""
    for partner, cluster in scenario.clusters():
        spec = cluster.speed_jitter
        if spec is None or spec.sd <= 0:
            continue
        for replica in backends[scenario.backend_id(partner, cluster)].replicas:
            replica_rng = np.random.default_rng([int(rng.integers(2**63)), spec.path])
            env.process(_wander(env, replica, replica_rng, spec))


def _wander(env: simpy.Environment, replica: Any, rng: np.random.Generator, spec: Any) -> Iterator[simpy.Event]:
    """Set ``replica.jitter`` every ``spec.interval_s``, forever (the run ends when its work does)."""
    for x in ou_values(rng, sd=spec.sd, interval_s=spec.interval_s, correlation_s=spec.correlation_s):
        replica.jitter = math.exp(x)
        replica.speed_changed(env.now)
        yield env.timeout(spec.interval_s)
