"""Load-aware policies: ``least_in_flight``, ``power_of_two``, ``least_kv``.

``in_flight`` is the router's own count (always fresh); ``kv_use`` and ``waiting`` are scraped
engine gauges (possibly stale). Comparing these two families under scrape staleness is one of the
experiments the simulator exists for.
"""

from __future__ import annotations

import numpy as np

from publicai_lab.policies._select import (INF, per_replica, pick_min, pick_min_then, replica_loads, rest_by,
                                           scores_of, uniform_index)
from publicai_lab.policies.base import BasePolicy, register
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

__all__ = ["LeastInFlightPolicy", "PowerOfTwoPolicy", "LeastKVPolicy"]


@register("least_in_flight")
class LeastInFlightPolicy(BasePolicy):
    """Fewest router-side in-flight requests per replica; exact ties broken by ``rng``.

    Fallbacks: the others by the same load, ascending (ties in view order).
    """

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        keys = replica_loads(backends)
        i = pick_min(keys, rng)
        scores = scores_of(backends, keys) if self.scores else None
        return RouteDecision(backends[i].backend_id, rest_by(keys, backends, i),
                             "least in-flight per replica", scores)


@register("power_of_two")
class PowerOfTwoPolicy(BasePolicy):
    """Sample two distinct backends uniformly; send to the one with fewer in-flight requests.

    Load is ``in_flight / replicas`` so a 4-replica backend is not penalised for carrying 4x the
    traffic (with one replica each this is plain ``in_flight``). On a tie the first sample wins
    (already random). Fallbacks: the other sampled backend, then the rest by load, ascending.
    Two draws per request; one backend: no draw.
    """

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        n = len(backends)
        if n == 1:
            return RouteDecision(backends[0].backend_id, (), "only backend",
                                 {backends[0].backend_id: per_replica(backends[0])} if self.scores else None)
        a = uniform_index(rng, n)
        b = uniform_index(rng, n - 1)
        if b >= a:
            b += 1
        keys = replica_loads(backends)
        if keys[b] < keys[a]:
            a, b = b, a
        scores = scores_of(backends, keys) if self.scores else None
        keys[b] = -INF  # the sampled runner-up is the first fallback
        rest = rest_by(keys, backends, a)
        return RouteDecision(backends[a].backend_id, rest, "power of two choices", scores)


@register("least_kv")
class LeastKVPolicy(BasePolicy):
    """Lowest scraped KV-cache use, then fewest scraped ``waiting``; exact ties broken by ``rng``.

    Uses only the (possibly stale) engine gauges, as a metrics-scraping router must. Unknown (NaN)
    ``kv_use`` sorts last. Fallbacks: the others by ``kv_use`` ascending (ties in view order).
    """

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        keys = [k if (k := s.kv_use) == k else INF for s in backends]  # unknown gauge sorts last
        i = pick_min_then(keys, lambda j: backends[j].waiting, rng)
        scores = scores_of(backends, keys) if self.scores else None
        return RouteDecision(backends[i].backend_id, rest_by(keys, backends, i),
                             "least kv-cache use", scores)
