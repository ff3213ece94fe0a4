"""Small selection helpers shared by the built-in policies (private).

They work on parallel lists (one key per backend, in view order) and draw at most one number
from the rng, and only when a draw is needed, so a policy's rng consumption is easy to reason
about and cheap (``rng.random()`` costs ~0.3 us; ``rng.choice`` ~6 us).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from publicai_lab.types import BackendSnapshot

INF = math.inf
#: added to a ranking key to push a backend behind every non-overloaded one (keys are seconds
#: or USD per Mtok, far below this); inf stays inf
OVERLOADED = 1e12


def uniform_index(rng: np.random.Generator, n: int) -> int:
    """A uniform index in ``range(n)`` from one ``rng.random()`` draw."""
    i = int(rng.random() * n)
    return i if i < n else n - 1


def pick_min(keys: Sequence[Any], rng: np.random.Generator) -> int:
    """Index of the smallest key; exact ties are broken uniformly (one draw, only if tied).

    Keys must be totally ordered (no NaN): callers map NaN to ``INF`` first.
    """
    best = min(keys)
    ties = [i for i, k in enumerate(keys) if k == best]
    if len(ties) == 1:
        return ties[0]
    return ties[uniform_index(rng, len(ties))]


def pick_min_then(keys: Sequence[float], second: Callable[[int], Any], rng: np.random.Generator) -> int:
    """Like :func:`pick_min`, but exact ties are first narrowed by ``second(index)`` (smallest wins).

    Lets a policy rank by one float (cheap to compare and sort) and consult a secondary criterion
    only for the few tied backends.
    """
    best = min(keys)
    ties = [i for i, k in enumerate(keys) if k == best]
    if len(ties) == 1:
        return ties[0]
    seconds = [second(i) for i in ties]
    best2 = min(seconds)
    ties = [i for i, k in zip(ties, seconds) if k == best2]
    if len(ties) == 1:
        return ties[0]
    return ties[uniform_index(rng, len(ties))]


def rest_by(keys: Sequence[Any], backends: Sequence[BackendSnapshot], chosen: int) -> tuple[str, ...]:
    """Ids of every backend but ``chosen``, ascending by key (stable: ties keep view order)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return tuple([backends[i].backend_id for i in order if i != chosen])


def rotate_after(backends: Sequence[BackendSnapshot], chosen: int) -> tuple[str, ...]:
    """Ids of every backend but ``chosen``, in view order starting just after it (cyclic)."""
    ids = [s.backend_id for s in backends]
    return tuple(ids[chosen + 1:] + ids[:chosen])


def load_of(s: BackendSnapshot) -> float:
    """Capacity-normalised load: router in-flight count over total batch slots (max_num_seqs)."""
    return s.in_flight / s.max_num_seqs if s.max_num_seqs > 0 else INF


def loads(backends: Sequence[BackendSnapshot]) -> list[float]:
    """``load_of`` for every backend (fast path without per-item calls; no capacity -> inf)."""
    try:
        return [s.in_flight / s.max_num_seqs for s in backends]
    except ZeroDivisionError:
        return [load_of(s) for s in backends]


def per_replica(s: BackendSnapshot) -> float:
    """Router in-flight count per engine replica."""
    return s.in_flight / s.replicas if s.replicas > 0 else INF


def replica_loads(backends: Sequence[BackendSnapshot]) -> list[float]:
    """``per_replica`` for every backend (fast path; no replicas -> inf)."""
    try:
        return [s.in_flight / s.replicas for s in backends]
    except ZeroDivisionError:
        return [per_replica(s) for s in backends]


def scores_of(backends: Sequence[BackendSnapshot], keys: Sequence[float]) -> dict[str, float]:
    return {s.backend_id: float(k) for s, k in zip(backends, keys)}
