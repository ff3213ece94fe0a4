"""Feedback policy ``latency_ewma``: send to the backend with the lowest estimated latency.

The estimate is an exponentially weighted mean of observed end-to-end latencies, learnt through
``observe(decision, record)``, scaled up by the backend's current load (in the spirit of Finagle's
"peak EWMA"). Without that load term every request between two observations herds onto the same
backend, because feedback arrives one e2e latency late; ``load_penalty=0`` gives the pure EWMA.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from publicai_lab.policies._select import INF, loads, pick_min, rest_by, scores_of, uniform_index
from publicai_lab.policies.base import BasePolicy, float_param, register
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

if TYPE_CHECKING:
    from publicai_lab.records import RequestRecord

__all__ = ["LatencyEWMAPolicy"]

#: statuses whose e2e_s says something about the backend's speed. ``failed`` is excluded on
#: purpose: a backend that errors fast would otherwise look fast (health checks handle it).
_LEARN_FROM = frozenset({"ok", "timeout"})


@register("latency_ewma")
class LatencyEWMAPolicy(BasePolicy):
    """Lowest ``ewma_e2e_s * (1 + load_penalty * in_flight / max_num_seqs)``; ties broken by rng.

    - EWMA per backend id: ``ewma += alpha * (e2e_s - ewma)``, seeded with the first observation,
      learnt from records with status ``ok`` or ``timeout`` and a finite ``e2e_s``.
    - No own observation yet: use ``snapshot.latency_ewma_s`` if it is a number.
    - No estimate at all and never routed to: *unexplored*, tried first (uniformly among them).
      Once routed to but still without a result, such a backend is scored with the mean of the
      known estimates, so one slow first answer does not lock all traffic onto it meanwhile.
    State (EWMAs, explored set) lives in the instance: use a fresh instance per run.
    Fallbacks: the others by estimated latency, ascending (unexplored first).
    """

    def __init__(self, alpha: float = 0.2, load_penalty: float = 1.0, *, scores: bool = False) -> None:
        super().__init__(scores=scores)
        self.alpha = float_param(self.name, "alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.load_penalty = float_param(self.name, "load_penalty", load_penalty, low=0.0, high=1e9)
        self._ewma: dict[str, float] = {}
        self._tried: set[str] = set()

    def estimate_s(self, backend_id: str) -> float:
        """This policy's own EWMA for a backend, seconds (NaN if never observed)."""
        return self._ewma.get(backend_id, math.nan)

    def observe(self, decision: RouteDecision, record: "RequestRecord") -> None:
        if record.status not in _LEARN_FROM:
            return
        e2e_s = record.e2e_s
        if not (e2e_s >= 0.0 and e2e_s < INF):  # NaN, negative, inf: nothing to learn
            return
        bid = record.backend_id or decision.backend_id
        old = self._ewma.get(bid)
        self._ewma[bid] = e2e_s if old is None else old + self.alpha * (e2e_s - old)

    def route(self, req: RequestSpec, view: ClusterView, rng: np.random.Generator) -> RouteDecision:
        backends = view.backends
        ewma = self._ewma
        tried = self._tried
        unexplored: list[int] = []
        est: list[float] = [ewma.get(s.backend_id, math.nan) for s in backends]
        if any([e != e for e in est]):  # some lack an own EWMA: snapshot value, else unknown
            for i, s in enumerate(backends):
                if est[i] != est[i]:
                    est[i] = s.latency_ewma_s
                    if est[i] != est[i] and s.backend_id not in tried:
                        unexplored.append(i)
            known = [e for e in est if e == e]
            known_sum, known_n = sum(known), len(known)
        else:
            known_sum, known_n = sum(est), len(est)
        # backends without an estimate are scored as average; with no estimate anywhere, any
        # positive constant makes the load term alone decide
        prior = known_sum / known_n if known_n else 1.0
        penalty = self.load_penalty
        if penalty:
            keys = [(prior if e != e else e) * (1.0 + penalty * load) for e, load in zip(est, loads(backends))]
            keys = [k if k == k else INF for k in keys]  # 0 * inf (no capacity) -> last
        else:
            keys = [prior if e != e else e for e in est]
        if unexplored:
            i = unexplored[uniform_index(rng, len(unexplored))]
            reason = "explore"
            for j in unexplored:
                keys[j] = -INF
        else:
            i = pick_min(keys, rng)
            reason = "lowest latency estimate"
        tried.add(backends[i].backend_id)
        scores = scores_of(backends, keys) if self.scores else None
        return RouteDecision(backends[i].backend_id, rest_by(keys, backends, i), reason, scores)
