"""Routing policies: the contract, the eligibility filter, the built-ins and a registry by name.

Reading guide: ``base.py`` (the ``RoutingPolicy`` protocol and the registry), ``eligibility.py``
(``eligible`` and the checked entry point ``decide``), then any built-in module.

    >>> import numpy as np
    >>> from publicai_lab import policies
    >>> from publicai_lab.types import BackendSnapshot, ClusterView, RequestSpec
    >>> view = ClusterView(0.0, (BackendSnapshot("a/x", "a", "CH", "eu", "m", in_flight=3),
    ...                          BackendSnapshot("b/y", "b", "DE", "eu", "m", in_flight=1)))
    >>> req = RequestSpec(1, 0.0, "m", 100, 10)
    >>> policies.decide(policies.get("least_in_flight"), req, view, np.random.default_rng(0)).backend_id
    'b/y'

Built-ins (short name -> class): random, weighted_shuffle, round_robin (``simple.py``);
least_in_flight, power_of_two, least_kv (``load.py``); latency_ewma (``latency.py``);
nearest_region, cost_aware (``placement.py``).
"""

from publicai_lab.policies.base import BasePolicy, ObservingPolicy, RoutingPolicy, available, get, register
from publicai_lab.policies.eligibility import decide, eligible
from publicai_lab.policies.latency import LatencyEWMAPolicy
from publicai_lab.policies.load import LeastInFlightPolicy, LeastKVPolicy, PowerOfTwoPolicy
from publicai_lab.policies.placement import CostAwarePolicy, NearestRegionPolicy
from publicai_lab.policies.simple import RandomPolicy, RoundRobinPolicy, WeightedShufflePolicy

__all__ = [
    "RoutingPolicy",
    "ObservingPolicy",
    "BasePolicy",
    "register",
    "get",
    "available",
    "eligible",
    "decide",
    "RandomPolicy",
    "WeightedShufflePolicy",
    "RoundRobinPolicy",
    "LeastInFlightPolicy",
    "PowerOfTwoPolicy",
    "LeastKVPolicy",
    "LatencyEWMAPolicy",
    "NearestRegionPolicy",
    "CostAwarePolicy",
]
