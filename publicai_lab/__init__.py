"""publicai_lab: simulate, run live and compare federated LLM inference (Public AI).

    >>> import publicai_lab as pl
    >>> scenario = pl.load_scenario("scenarios/toy.yaml")      # doctest: +SKIP
    >>> result = pl.simulate(scenario, policy="least_in_flight")  # doctest: +SKIP
    >>> result.summary()                                         # doctest: +SKIP

Reading guide: ``scenario.py`` (what a federation is), ``policies/`` (how a request is routed —
the same objects run in the simulator and the live gateway), ``sim/`` (the SimPy model),
``records.py`` (the one schema both worlds emit), ``analysis/`` (tables, figures, reports).
"""

from publicai_lab.errors import GatewayError, PolicyError, PublicAILabError, ScenarioError, SimulationError
from publicai_lab.records import RequestRecord, to_frame, validate_frame
from publicai_lab.scenario import Scenario, load_scenario
from publicai_lab.sim import SimResult, simulate
from publicai_lab.types import BackendSnapshot, ClusterView, RequestSpec, RouteDecision
from publicai_lab import policies

__version__ = "0.1.0"

__all__ = [
    "load_scenario",
    "Scenario",
    "simulate",
    "SimResult",
    "policies",
    "RequestSpec",
    "BackendSnapshot",
    "ClusterView",
    "RouteDecision",
    "RequestRecord",
    "to_frame",
    "validate_frame",
    "PublicAILabError",
    "ScenarioError",
    "PolicyError",
    "GatewayError",
    "SimulationError",
    "__version__",
]
