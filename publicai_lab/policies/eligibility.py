"""Eligibility filters and the checked entry point :func:`decide`.

Eligibility (serves the requested model, healthy, in an allowed country) is decided here, once,
before any policy scores anything, so no policy can break data-residency or send traffic to a
dead backend. ``decide`` then checks the policy's answer against the filtered view.

Both functions run for every simulated request (tens of thousands per second), so they avoid
allocation when they can: when every backend is eligible, ``eligible`` returns the very same view.
"""

from __future__ import annotations

import numpy as np

from publicai_lab.errors import PolicyError
from publicai_lab.policies.base import RoutingPolicy
from publicai_lab.types import ClusterView, RequestSpec, RouteDecision

__all__ = ["eligible", "decide"]


def eligible(req: RequestSpec, view: ClusterView) -> ClusterView:
    """The backends that may serve ``req``: same model, healthy, and resident if required.

    Returns ``view`` itself (no copy) when nothing is filtered out.
    """
    model = req.model
    residency = req.residency
    backends = view.backends
    if residency:
        keep = [s for s in backends if s.healthy and s.model == model and s.country in residency]
    else:
        keep = [s for s in backends if s.healthy and s.model == model]
    if len(keep) == len(backends):
        return view
    return ClusterView(view.now_s, tuple(keep))


def decide(policy: RoutingPolicy, req: RequestSpec, view: ClusterView, rng: np.random.Generator,
           *, check: bool = True) -> RouteDecision | None:
    """Filter ``view``, let ``policy`` route on the eligible backends, and validate the answer.

    Returns ``None`` when no backend is eligible (the caller decides: reject, model fallback...).
    Raises :class:`PolicyError` naming the policy and the bad id when the decision picks an
    ineligible backend or its fallbacks are ineligible, repeated, or include the choice.
    ``check=False`` skips validation (for trusted policies in hot loops; the built-ins pass it).
    """
    ev = eligible(req, view)
    backends = ev.backends
    if not backends:
        return None
    decision = policy.route(req, ev, rng)
    if check:
        _validate(policy, req, ev, decision)
    return decision


def _validate(policy: RoutingPolicy, req: RequestSpec, ev: ClusterView, decision: object) -> None:
    name = getattr(policy, "name", type(policy).__name__)
    if not isinstance(decision, RouteDecision):
        raise PolicyError(f"policy {name!r} returned {type(decision).__name__}, not a RouteDecision")
    ids = {s.backend_id for s in ev.backends}
    chosen = decision.backend_id
    if chosen not in ids:
        raise PolicyError(f"policy {name!r} chose {chosen!r}, which is not eligible for request "
                          f"{req.request_id} (model {req.model!r}); eligible: {sorted(ids)}")
    fallbacks = decision.fallbacks
    if not isinstance(fallbacks, tuple):
        raise PolicyError(f"policy {name!r}: fallbacks must be a tuple, got {type(fallbacks).__name__}")
    if not fallbacks:
        return
    fb = set(fallbacks)
    if len(fb) == len(fallbacks) and chosen not in fb and fb <= ids:
        return
    seen: set[str] = set()
    for bid in fallbacks:
        if bid == chosen:
            raise PolicyError(f"policy {name!r}: fallback {bid!r} repeats the chosen backend")
        if bid in seen:
            raise PolicyError(f"policy {name!r}: fallback {bid!r} appears twice")
        if bid not in ids:
            raise PolicyError(f"policy {name!r}: fallback {bid!r} is not eligible for request "
                              f"{req.request_id} (model {req.model!r}); eligible: {sorted(ids)}")
        seen.add(bid)
