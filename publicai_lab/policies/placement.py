"""Placement policies for a federation: ``nearest_region`` and ``cost_aware``.

Both rank backends by a static preference (network distance, price) but refuse to pile onto a
preferred backend once its capacity-normalised load ``in_flight / max_num_seqs`` (``max_num_seqs``
summed over replicas) is above a threshold: at exactly the threshold a backend still counts as
available. When every backend is above it, both send to the least-loaded one.

Ranking is one float per backend (preference, plus a huge offset when overloaded) so selection
and the fallback sort stay cheap; secondary criteria only break exact ties of the chosen one.
"""

from __future__ import annotations

import math

import numpy as np

from publicai_lab.policies._select import INF, OVERLOADED, loads, pick_min_then, rest_by
from publicai_lab.policies.base import BasePolicy, float_param, register
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

__all__ = ["NearestRegionPolicy", "CostAwarePolicy"]


@register("nearest_region")
class NearestRegionPolicy(BasePolicy):
    """Smallest ``rtt_s``; spill to the next-nearest while the nearer ones are over ``spill_threshold``.

    Among backends at or under the threshold: smallest ``rtt_s``, then lowest load, then rng.
    All over: lowest load, then smallest ``rtt_s``, then rng. Fallbacks: the others, those under
    the threshold first, each group by ``rtt_s`` ascending (ties in view order). NaN rtt = far.
    """

    def __init__(self, spill_threshold: float = 0.8, *, scores: bool = False) -> None:
        super().__init__(scores=scores)
        self.spill_threshold = float_param(self.name, "spill_threshold", spill_threshold,
                                           low=0.0, high=math.inf)

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        thr = self.spill_threshold
        load = loads(backends)
        rtt = [r if (r := s.rtt_s) == r else INF for s in backends]
        keys = [r + OVERLOADED if x > thr else r for r, x in zip(rtt, load)]
        if min(load) <= thr:
            i = pick_min_then(keys, load.__getitem__, rng)
            reason = "nearest" if rtt[i] <= min(rtt) else "spill: nearer over threshold"
        else:
            i = pick_min_then(load, rtt.__getitem__, rng)
            reason = "all over threshold: least loaded"
        scores = dict(zip([s.backend_id for s in backends], rtt)) if self.scores else None
        return RouteDecision(backends[i].backend_id, rest_by(keys, backends, i), reason, scores)


@register("cost_aware")
class CostAwarePolicy(BasePolicy):
    """Cheapest ``cost_per_mtok_usd`` (donated capacity costs 0) among backends at or under ``max_load``.

    Among those: lowest cost, then donated before not, then lowest load, then rng. All over:
    lowest load, then cheapest, then rng. Fallbacks: the others, those under ``max_load`` first,
    each group by cost ascending (ties in view order). NaN cost = most expensive.
    """

    def __init__(self, max_load: float = 0.8, *, scores: bool = False) -> None:
        super().__init__(scores=scores)
        self.max_load = float_param(self.name, "max_load", max_load, low=0.0, high=math.inf)

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        limit = self.max_load
        load = loads(backends)
        cost = [c if (c := s.cost_per_mtok_usd) == c else INF for s in backends]
        keys = [c + OVERLOADED if x > limit else c for c, x in zip(cost, load)]
        if min(load) <= limit:
            i = pick_min_then(keys, lambda j: (not backends[j].donated, load[j]), rng)
            reason = "cheapest under max_load"
        else:
            i = pick_min_then(load, cost.__getitem__, rng)
            reason = "all over max_load: least loaded"
        scores = dict(zip([s.backend_id for s in backends], cost)) if self.scores else None
        return RouteDecision(backends[i].backend_id, rest_by(keys, backends, i), reason, scores)
