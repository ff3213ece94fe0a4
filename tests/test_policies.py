"""Unit tests for publicai_lab.policies: registry, eligibility, decide() checks, each built-in."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from publicai_lab import policies
from publicai_lab.errors import PolicyError
from publicai_lab.policies import base
from publicai_lab.records import RequestRecord
from publicai_lab.types import BackendSnapshot, ClusterView, RequestSpec, RouteDecision

BUILTINS = ["cost_aware", "latency_ewma", "least_in_flight", "least_kv", "nearest_region",
            "power_of_two", "random", "round_robin", "weighted_shuffle"]


def snap(bid: str, **kw: object) -> BackendSnapshot:
    defaults: dict[str, object] = dict(partner=bid.split("/")[0], country="CH", region="eu", model="m")
    defaults.update(kw)
    return BackendSnapshot(bid, **defaults)  # type: ignore[arg-type]


def view(*snaps: BackendSnapshot, now_s: float = 0.0) -> ClusterView:
    return ClusterView(now_s, tuple(snaps))


def req(model: str = "m", residency: tuple[str, ...] = (), rid: int = 1) -> RequestSpec:
    return RequestSpec(rid, 0.0, model, 100, 10, residency=residency)


def record(backend_id: str, e2e_s: float, status: str = "ok") -> RequestRecord:
    return RequestRecord("run", "sim", 1, 0.0, "eu", "free", "m", 100, 10, "latency_ewma", backend_id,
                         None, None, 1, status, None, 0.0, min(e2e_s, 0.1), e2e_s, math.nan)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def choose(policy: policies.RoutingPolicy, v: ClusterView, seed: int = 0, r: RequestSpec | None = None) -> str:
    d = policies.decide(policy, r or req(), v, rng(seed))
    assert d is not None
    return d.backend_id


# ------------------------------------------------------------------------------------ registry


def test_available_lists_every_builtin() -> None:
    assert set(BUILTINS) <= set(policies.available())
    assert policies.available() == sorted(policies.available())


def test_public_names() -> None:
    expected = {"RoutingPolicy", "BasePolicy", "register", "get", "available", "eligible", "decide",
                "RandomPolicy", "WeightedShufflePolicy", "RoundRobinPolicy", "LeastInFlightPolicy",
                "PowerOfTwoPolicy", "LeastKVPolicy", "LatencyEWMAPolicy", "NearestRegionPolicy",
                "CostAwarePolicy"}
    assert expected <= set(policies.__all__)
    for name in policies.__all__:
        assert hasattr(policies, name)


@pytest.mark.parametrize("name", BUILTINS)
def test_get_returns_fresh_protocol_instances(name: str) -> None:
    a, b = policies.get(name), policies.get(name)
    assert a is not b
    assert a.name == name
    assert isinstance(a, policies.RoutingPolicy)
    assert type(a).__name__ in repr(a)
    assert callable(getattr(a, "observe", None))


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(PolicyError) as exc:
        policies.get("fastest")
    msg = str(exc.value)
    assert "'fastest'" in msg and "\n" not in msg
    for name in BUILTINS:
        assert name in msg


@pytest.mark.parametrize("name, params", [
    ("random", {"alpha": 0.3}),
    ("nearest_region", {"spill": 0.5}),
    ("latency_ewma", {"alpha": 0.0}),
    ("latency_ewma", {"alpha": 1.5}),
    ("latency_ewma", {"alpha": "fast"}),
    ("latency_ewma", {"alpha": math.nan}),
    ("latency_ewma", {"load_penalty": -1.0}),
    ("nearest_region", {"spill_threshold": -0.1}),
    ("cost_aware", {"max_load": True}),
    ("least_kv", {"scores": "yes"}),
])
def test_bad_params_raise_one_line_policy_error(name: str, params: dict[str, object]) -> None:
    with pytest.raises(PolicyError) as exc:
        policies.get(name, **params)
    assert name in str(exc.value) and "\n" not in str(exc.value)


def test_params_are_applied_and_shown() -> None:
    p = policies.get("nearest_region", spill_threshold=0.5)
    assert p.spill_threshold == 0.5  # type: ignore[attr-defined]
    assert repr(p) == "NearestRegionPolicy(spill_threshold=0.5, scores=False)"
    assert policies.get("latency_ewma", alpha=1).params == {"alpha": 1.0, "load_penalty": 1.0, "scores": False}


def test_register_custom_policy_and_reject_name_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @policies.register("first_listed")
    class FirstListed(policies.BasePolicy):
        def route(self, req, view, rng):  # type: ignore[no-untyped-def]
            return RouteDecision(view.backends[0].backend_id)

    p = policies.get("first_listed")
    assert p.name == "first_listed" and "first_listed" in policies.available()
    assert choose(p, view(snap("a/1"), snap("b/1"))) == "a/1"
    with pytest.raises(PolicyError, match="already registered"):
        @policies.register("random")
        class Other(policies.BasePolicy):
            def route(self, req, view, rng):  # type: ignore[no-untyped-def]
                raise AssertionError
    with pytest.raises(PolicyError):
        policies.register("")
    with pytest.raises(PolicyError, match="route"):
        policies.register("no_route")(type("NoRoute", (), {}))


# --------------------------------------------------------------------------------- eligibility


def test_eligible_filters_model_health_and_residency() -> None:
    v = view(snap("a/1", country="CH"), snap("b/1", country="DE", healthy=False),
             snap("c/1", country="DE"), snap("d/1", country="US", model="other"), now_s=7.0)
    assert policies.eligible(req(), v).ids == ("a/1", "c/1")
    assert policies.eligible(req(residency=("DE",)), v).ids == ("c/1",)
    assert policies.eligible(req(residency=("SE",)), v).ids == ()
    assert policies.eligible(req(model="other"), v).ids == ("d/1",)
    assert policies.eligible(req(), v).now_s == 7.0


def test_eligible_returns_same_view_when_nothing_filtered() -> None:
    v = view(snap("a/1", country="CH"), snap("b/1", country="DE"))
    assert policies.eligible(req(), v) is v
    assert policies.eligible(req(residency=("CH", "DE")), v) is v


@pytest.mark.parametrize("name", BUILTINS)
def test_decide_returns_none_when_nothing_eligible(name: str) -> None:
    v = view(snap("a/1", healthy=False), snap("b/1", model="other"))
    assert policies.decide(policies.get(name), req(), v, rng()) is None
    assert policies.decide(policies.get(name), req(), view(), rng()) is None


def test_policy_sees_only_eligible_backends() -> None:
    seen: list[tuple[str, ...]] = []

    class Spy(policies.BasePolicy):
        name = "spy"

        def route(self, req, view, rng):  # type: ignore[no-untyped-def]
            seen.append(view.ids)
            return RouteDecision(view.backends[0].backend_id)

    v = view(snap("a/1", healthy=False), snap("b/1", country="US"), snap("c/1"))
    policies.decide(Spy(), req(residency=("CH",)), v, rng())
    assert seen == [("c/1",)]


class Fixed(policies.BasePolicy):
    name = "fixed"

    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer = answer

    def route(self, req, view, rng):  # type: ignore[no-untyped-def]
        return self.answer


@pytest.mark.parametrize("answer, bad", [
    (RouteDecision("x/1"), "'x/1'"),                                 # unknown id
    (RouteDecision("b/1"), "'b/1'"),                                 # unhealthy
    (RouteDecision("a/1", ("c/1",)), "'c/1'"),                       # wrong country
    (RouteDecision("a/1", ("d/1", "d/1")), "'d/1'"),                 # duplicate fallback
    (RouteDecision("a/1", ("d/1", "a/1")), "'a/1'"),                 # fallback repeats choice
    (RouteDecision("a/1", ["d/1"]), "tuple"),                        # type: ignore[arg-type]
    ("a/1", "RouteDecision"),
])
def test_decide_rejects_bad_decisions_naming_policy_and_id(answer: object, bad: str) -> None:
    v = view(snap("a/1"), snap("b/1", healthy=False), snap("c/1", country="US"), snap("d/1"))
    with pytest.raises(PolicyError) as exc:
        policies.decide(Fixed(answer), req(residency=("CH",)), v, rng())
    assert "'fixed'" in str(exc.value) and bad in str(exc.value)


def test_decide_accepts_valid_partial_fallbacks_and_can_skip_checks() -> None:
    v = view(snap("a/1"), snap("b/1"), snap("c/1"))
    d = RouteDecision("a/1", ("c/1",))
    assert policies.decide(Fixed(d), req(), v, rng()) == d
    bad = RouteDecision("zzz")
    assert policies.decide(Fixed(bad), req(), v, rng(), check=False) == bad


# ----------------------------------------------------------------------------- the built-ins


def counts(name: str, v: ClusterView, n: int = 3000, **params: object) -> Counter[str]:
    p = policies.get(name, **params)
    g = rng(1)
    return Counter(policies.decide(p, req(), v, g).backend_id for _ in range(n))  # type: ignore[union-attr]


@pytest.mark.parametrize("name", BUILTINS)
def test_fallbacks_are_all_other_eligible_backends(name: str) -> None:
    v = view(*(snap(f"p{i}/c", in_flight=i, kv_use=i / 10, rtt_s=i / 100, cost_per_mtok_usd=i % 2)
               for i in range(6)), snap("x/c", healthy=False))
    d = policies.decide(policies.get(name), req(), v, rng())
    assert d is not None and d.reason
    assert sorted((d.backend_id,) + d.fallbacks) == [f"p{i}/c" for i in range(6)]


@pytest.mark.parametrize("name", BUILTINS)
def test_scores_are_optional(name: str) -> None:
    v = view(snap("a/1"), snap("b/1", in_flight=3))
    assert policies.decide(policies.get(name), req(), v, rng()).scores is None  # type: ignore[union-attr]
    d = policies.decide(policies.get(name, scores=True), req(), v, rng())
    assert d is not None and d.scores is not None and d.backend_id in d.scores


def test_random_is_uniform_and_fallbacks_rotate() -> None:
    v = view(snap("a/1"), snap("b/1"), snap("c/1"))
    c = counts("random", v)
    assert all(900 < c[b] < 1100 for b in v.ids)
    d = policies.decide(policies.get("random"), req(), v, rng())
    assert d is not None
    i = v.ids.index(d.backend_id)
    assert d.fallbacks == v.ids[i + 1:] + v.ids[:i]


def test_weighted_shuffle_never_picks_zero_weight_and_orders_fallbacks_by_weight() -> None:
    v = view(snap("a/1", weight=0.0), snap("b/1", weight=1.0), snap("c/1", weight=3.0),
             snap("d/1", weight=math.nan), snap("e/1", weight=-2.0))
    c = counts("weighted_shuffle", v, n=4000)
    assert set(c) == {"b/1", "c/1"}
    assert abs(c["c/1"] / 4000 - 0.75) < 0.03
    d = policies.decide(policies.get("weighted_shuffle"), req(), v, rng())
    assert d is not None
    heaviest_first = [b for b in ("c/1", "b/1", "a/1", "d/1", "e/1") if b != d.backend_id]
    assert list(d.fallbacks) == heaviest_first


def test_weighted_shuffle_all_zero_weights_is_uniform() -> None:
    v = view(snap("a/1", weight=0.0), snap("b/1", weight=0.0))
    c = counts("weighted_shuffle", v, n=2000)
    assert 900 < c["a/1"] < 1100


def test_round_robin_cycles_sorted_ids_whatever_the_view_order() -> None:
    p = policies.get("round_robin")
    v1 = view(snap("c/1"), snap("a/1"), snap("b/1"))
    v2 = view(snap("b/1"), snap("c/1"), snap("a/1"))
    got = [choose(p, v1 if k % 2 else v2, seed=k) for k in range(6)]
    assert got == ["a/1", "b/1", "c/1", "a/1", "b/1", "c/1"]
    d = p.route(req(), v1, rng())
    assert d.backend_id == "a/1" and d.fallbacks == ("b/1", "c/1")


def test_round_robin_keeps_one_cycle_per_eligible_set() -> None:
    # two interleaved models with two backends each: a shared counter would send every m1
    # request to the same backend; per-set counters cycle both
    p = policies.get("round_robin")
    v = view(snap("a/1"), snap("b/1"), snap("x/1", model="m2"), snap("y/1", model="m2"))
    got = [choose(p, v, r=req(model="m" if k % 2 == 0 else "m2")) for k in range(8)]
    assert Counter(got) == {"a/1": 2, "b/1": 2, "x/1": 2, "y/1": 2}


def test_least_in_flight_picks_least_loaded_per_replica() -> None:
    v = view(snap("a/1", in_flight=5), snap("b/1", in_flight=2), snap("c/1", in_flight=9))
    d = policies.decide(policies.get("least_in_flight"), req(), v, rng())
    assert d is not None and d.backend_id == "b/1" and d.fallbacks == ("a/1", "c/1")
    # 8 in flight over 4 replicas (2 each) beats 3 on one replica
    v = view(snap("a/1", in_flight=3), snap("b/1", in_flight=8, replicas=4))
    assert choose(policies.get("least_in_flight"), v) == "b/1"


def test_least_in_flight_breaks_ties_with_the_rng() -> None:
    v = view(snap("a/1", in_flight=1), snap("b/1", in_flight=1), snap("c/1", in_flight=4))
    picks = {choose(policies.get("least_in_flight"), v, seed=s) for s in range(40)}
    assert picks == {"a/1", "b/1"}


def test_power_of_two_never_picks_the_most_loaded() -> None:
    v = view(snap("a/1", in_flight=1), snap("b/1", in_flight=5), snap("c/1", in_flight=9))
    c = counts("power_of_two", v)
    assert c["c/1"] == 0
    assert abs(c["a/1"] / 3000 - 2 / 3) < 0.04  # a wins whenever it is sampled
    two = view(snap("a/1", in_flight=7), snap("b/1", in_flight=2))
    d = policies.decide(policies.get("power_of_two"), req(), two, rng())
    assert d is not None and d.backend_id == "b/1" and d.fallbacks == ("a/1",)


def test_power_of_two_single_backend_draws_nothing() -> None:
    g = rng(5)
    d = policies.decide(policies.get("power_of_two"), req(), view(snap("a/1")), g)
    assert d is not None and d.backend_id == "a/1" and d.fallbacks == ()
    assert g.random() == rng(5).random()


def test_least_kv_uses_kv_then_waiting_and_puts_unknown_last() -> None:
    v = view(snap("a/1", kv_use=0.7), snap("b/1", kv_use=0.2, waiting=4),
             snap("c/1", kv_use=0.2, waiting=1), snap("d/1", kv_use=math.nan))
    d = policies.decide(policies.get("least_kv"), req(), v, rng())
    assert d is not None and d.backend_id == "c/1"
    assert d.fallbacks == ("b/1", "a/1", "d/1")


def test_latency_ewma_explores_each_backend_first() -> None:
    p = policies.get("latency_ewma")
    v = view(snap("a/1"), snap("b/1"), snap("c/1"))
    g = rng(3)
    first = [p.route(req(), v, g).backend_id for _ in range(3)]
    assert sorted(first) == ["a/1", "b/1", "c/1"]


def test_latency_ewma_moves_away_after_slow_observations() -> None:
    p = policies.get("latency_ewma")
    v = view(snap("a/1"), snap("b/1"))
    for bid in ("a/1", "b/1"):
        p.observe(RouteDecision(bid), record(bid, 1.0))
    p.observe(RouteDecision("b/1"), record("b/1", 1.5))  # b a bit slower
    assert choose(p, v) == "a/1"
    for _ in range(5):
        p.observe(RouteDecision("a/1"), record("a/1", 8.0))
    assert choose(p, v) == "b/1"


def test_latency_ewma_update_rule_and_ignored_records() -> None:
    p = policies.get("latency_ewma", alpha=0.2)
    p.observe(RouteDecision("a/1"), record("a/1", 1.0))
    p.observe(RouteDecision("a/1"), record("a/1", 2.0))
    assert p.estimate_s("a/1") == pytest.approx(1.2)  # type: ignore[attr-defined]
    p.observe(RouteDecision("a/1"), record("a/1", 0.001, status="failed"))  # fast failure: ignored
    p.observe(RouteDecision("a/1"), record("a/1", math.nan))
    assert p.estimate_s("a/1") == pytest.approx(1.2)  # type: ignore[attr-defined]
    p.observe(RouteDecision("a/1"), record("a/1", 11.2, status="timeout"))
    assert p.estimate_s("a/1") == pytest.approx(3.2)  # type: ignore[attr-defined]
    # the record's backend (after retries) is what gets the observation
    p.observe(RouteDecision("a/1"), record("b/1", 5.0))
    assert p.estimate_s("b/1") == 5.0  # type: ignore[attr-defined]
    assert math.isnan(p.estimate_s("c/1"))  # type: ignore[attr-defined]


def test_latency_ewma_uses_snapshot_ewma_and_load() -> None:
    v = view(snap("a/1", latency_ewma_s=3.0), snap("b/1", latency_ewma_s=1.0))
    assert choose(policies.get("latency_ewma"), v) == "b/1"
    # same latency, b is busier: the load term prefers a; pure EWMA ties and both get picked
    v = view(snap("a/1", latency_ewma_s=1.0), snap("b/1", latency_ewma_s=1.0, in_flight=128))
    assert {choose(policies.get("latency_ewma"), v, seed=s) for s in range(20)} == {"a/1"}
    pure = {choose(policies.get("latency_ewma", load_penalty=0), v, seed=s) for s in range(40)}
    assert pure == {"a/1", "b/1"}


def test_nearest_region_spills_only_above_the_threshold() -> None:
    def v(near_in_flight: int) -> ClusterView:
        return view(snap("far/1", rtt_s=0.120), snap("near/1", rtt_s=0.010, in_flight=near_in_flight,
                                                     max_num_seqs=100),
                    snap("mid/1", rtt_s=0.040))
    p = policies.get("nearest_region")
    assert choose(p, v(0)) == "near/1"
    assert choose(p, v(80)) == "near/1"          # exactly 0.8: not over
    d = policies.decide(p, req(), v(81), rng())  # 0.81 > 0.8: spill to the next-nearest
    assert d is not None and d.backend_id == "mid/1" and d.reason.startswith("spill")
    assert d.fallbacks == ("far/1", "near/1")    # non-overloaded first, by rtt
    assert choose(policies.get("nearest_region", spill_threshold=0.9), v(81)) == "near/1"


def test_nearest_region_all_over_threshold_takes_least_loaded() -> None:
    v = view(snap("a/1", rtt_s=0.01, in_flight=300), snap("b/1", rtt_s=0.2, in_flight=210),
             snap("c/1", rtt_s=0.1, in_flight=250))
    assert choose(policies.get("nearest_region"), v) == "b/1"


def test_nearest_region_equal_rtt_prefers_lower_load() -> None:
    v = view(snap("a/1", rtt_s=0.01, in_flight=30), snap("b/1", rtt_s=0.01, in_flight=10))
    assert choose(policies.get("nearest_region"), v) == "b/1"


def test_cost_aware_prefers_donated_until_busy() -> None:
    def v(donated_in_flight: int) -> ClusterView:
        return view(snap("paid/1", cost_per_mtok_usd=2.0), snap("cheap/1", cost_per_mtok_usd=0.5),
                    snap("don/1", cost_per_mtok_usd=0.0, donated=True, in_flight=donated_in_flight,
                         max_num_seqs=10))
    p = policies.get("cost_aware")
    assert choose(p, v(8)) == "don/1"
    assert choose(p, v(9)) == "cheap/1"
    d = policies.decide(p, req(), v(9), rng())
    assert d is not None and d.fallbacks == ("paid/1", "don/1")
    assert choose(policies.get("cost_aware", max_load=1.0), v(9)) == "don/1"


def test_cost_aware_tie_on_cost_prefers_donated_and_all_busy_takes_least_loaded() -> None:
    v = view(snap("a/1", cost_per_mtok_usd=0.0), snap("b/1", cost_per_mtok_usd=0.0, donated=True))
    assert choose(policies.get("cost_aware"), v) == "b/1"
    busy = view(snap("a/1", cost_per_mtok_usd=0.0, in_flight=250), snap("b/1", cost_per_mtok_usd=3.0,
                                                                         in_flight=220))
    assert choose(policies.get("cost_aware"), busy) == "b/1"


def test_zero_capacity_backend_counts_as_overloaded() -> None:
    v = view(snap("a/1", rtt_s=0.0, max_num_seqs=0, replicas=0), snap("b/1", rtt_s=0.5))
    for name in ("nearest_region", "cost_aware", "least_in_flight"):
        assert choose(policies.get(name), v) == "b/1", name
