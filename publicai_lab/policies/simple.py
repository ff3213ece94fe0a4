"""Load-blind policies: ``random``, ``weighted_shuffle`` (LiteLLM's simple-shuffle), ``round_robin``.

They ignore gauges, so they are the baselines every load-aware policy must beat, and the ones
that behave identically whatever the scrape staleness.
"""

from __future__ import annotations

import numpy as np

from publicai_lab.policies._select import rotate_after, uniform_index
from publicai_lab.policies.base import BasePolicy, register
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

__all__ = ["RandomPolicy", "WeightedShufflePolicy", "RoundRobinPolicy"]


@register("random")
class RandomPolicy(BasePolicy):
    """Uniform choice among eligible backends.

    Fallbacks: the other backends in view order, starting just after the chosen one (cyclic), so
    the first fallback is uniform too without spending more random draws.
    """

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        i = uniform_index(rng, len(backends))
        scores = {s.backend_id: 1.0 / len(backends) for s in backends} if self.scores else None
        return RouteDecision(backends[i].backend_id, rotate_after(backends, i), "uniform", scores)


@register("weighted_shuffle")
class WeightedShufflePolicy(BasePolicy):
    """Pick with probability proportional to ``weight`` (LiteLLM ``simple-shuffle``).

    Weights that are not positive numbers (0, negative, NaN) count as 0; if every weight is 0 the
    choice is uniform. Fallbacks: the others by weight, heaviest first (ties in view order); that
    is deterministic and free, unlike a weighted draw without replacement.
    """

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        n = len(backends)
        weights = [w if w > 0.0 else 0.0 for w in [s.weight for s in backends]]  # NaN > 0 is False
        total = sum(weights)
        if not total > 0.0 or total == float("inf"):
            if total == float("inf"):  # infinite weights dominate: uniform among them
                heavy = [i for i, w in enumerate(weights) if w == total]
                i = heavy[uniform_index(rng, len(heavy))]
                reason = "weighted: infinite weight"
            else:
                i = uniform_index(rng, n)
                reason = "weighted: all weights 0, uniform"
        else:
            u = rng.random() * total
            acc = 0.0
            i = -1
            for j, w in enumerate(weights):
                acc += w
                if u < acc and w > 0.0:
                    i = j
                    break
            if i < 0:  # rounding put u at the very top: take the last positive weight
                i = max(j for j, w in enumerate(weights) if w > 0.0)
            reason = "weighted"
        order = sorted(range(n), key=weights.__getitem__, reverse=True)  # stable: ties keep view order
        fallbacks = tuple([backends[j].backend_id for j in order if j != i])
        scores = None
        if self.scores:
            scores = {s.backend_id: (w / total if total > 0.0 and total != float("inf") else 1.0 / n)
                      for s, w in zip(backends, weights)}
        return RouteDecision(backends[i].backend_id, fallbacks, reason, scores)


@register("round_robin")
class RoundRobinPolicy(BasePolicy):
    """Cycle through the eligible backends in sorted-id order; ignores ``rng``.

    One counter per distinct eligible set (keyed by its sorted ids): with a single shared counter,
    two interleaved request streams with different eligible sets (other models, residency) alias
    and can each hit the same backend forever. State lives in the instance: use a fresh instance
    (``get()``) per run. Fallbacks: the next backends in the cycle.
    """

    _MAX_SETS = 4096  # bound memory if health flaps keep creating new eligible sets

    def __init__(self, *, scores: bool = False) -> None:
        super().__init__(scores=scores)
        self._next: dict[tuple[str, ...], int] = {}

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        ids = tuple(sorted([s.backend_id for s in view.backends]))
        counters = self._next
        k = counters.get(ids, 0)
        if k == 0 and len(counters) >= self._MAX_SETS:
            counters.clear()
        n = len(ids)
        i = k % n
        counters[ids] = i + 1
        scores = {b: float((j - i) % n) for j, b in enumerate(ids)} if self.scores else None
        return RouteDecision(ids[i], ids[i + 1:] + ids[:i], "round robin", scores)
