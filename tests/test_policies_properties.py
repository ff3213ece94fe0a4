"""Property tests for every registered routing policy (Hypothesis, derandomized for CI).

For random federations (1..12 backends with random models, health, countries, weights, loads,
gauges) and random requests (with and without residency), every policy reached through
``decide`` must choose an eligible, healthy, resident backend with valid fallbacks, and must be
reproducible from the seed. ``weighted_shuffle`` must realise its weights.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from publicai_lab import policies
from publicai_lab.records import RequestRecord
from publicai_lab.types import BackendSnapshot, ClusterView, RequestSpec, RouteDecision

COUNTRIES = ("CH", "DE", "US", "SE")
MODELS = ("m1", "m2")
CI = settings(derandomize=True, deadline=None, max_examples=60, database=None,
              suppress_health_check=[HealthCheck.too_slow])

maybe_nan = st.one_of(st.just(math.nan), st.floats(0.0, 30.0))


@st.composite
def snapshots(draw: st.DrawFn, index: int) -> BackendSnapshot:
    return BackendSnapshot(
        backend_id=f"p{index}/c{draw(st.integers(0, 2))}",
        partner=f"p{index}",
        country=draw(st.sampled_from(COUNTRIES)),
        region=draw(st.sampled_from(("eu", "us"))),
        model=draw(st.sampled_from(MODELS)),
        healthy=draw(st.booleans()),
        weight=draw(st.sampled_from((0.0, 0.0, 0.5, 1.0, 3.0, 20.0))),
        in_flight=draw(st.integers(0, 600)),
        running=draw(st.integers(0, 256)),
        waiting=draw(st.integers(0, 50)),
        kv_use=draw(st.one_of(st.just(math.nan), st.sampled_from((0.0, 0.5)), st.floats(0.0, 1.0))),
        rtt_s=draw(st.one_of(st.sampled_from((0.005, 0.03)), st.floats(0.0, 0.3))),
        cost_per_mtok_usd=draw(st.sampled_from((0.0, 0.0, 0.4, 2.5))),
        latency_ewma_s=draw(maybe_nan),
        replicas=draw(st.integers(1, 4)),
        max_num_seqs=draw(st.sampled_from((16, 256, 1024))),
        donated=draw(st.booleans()),
    )


@st.composite
def views(draw: st.DrawFn) -> ClusterView:
    n = draw(st.integers(1, 12))
    return ClusterView(draw(st.floats(0.0, 1e4)), tuple(draw(snapshots(i)) for i in range(n)))


@st.composite
def requests(draw: st.DrawFn) -> RequestSpec:
    residency = draw(st.one_of(st.just(()), st.lists(st.sampled_from(COUNTRIES), min_size=1,
                                                     max_size=3, unique=True).map(tuple)))
    return RequestSpec(draw(st.integers(0, 10**6)), 0.0, draw(st.sampled_from(MODELS + ("m3",))),
                       draw(st.integers(1, 4000)), draw(st.integers(1, 1000)), residency=residency)


def allowed(req: RequestSpec, v: ClusterView) -> list[str]:
    """Eligibility spelled out independently of the code under test."""
    return [s.backend_id for s in v.backends
            if s.model == req.model and s.healthy and (not req.residency or s.country in req.residency)]


def feedback(policy: policies.RoutingPolicy, d: RouteDecision, i: int) -> None:
    rec = RequestRecord("run", "sim", i, 0.0, "eu", "free", "m1", 10, 10, policy.name, d.backend_id,
                        None, None, 1, ("ok", "ok", "timeout", "failed")[i % 4], None, 0.0, 0.1,
                        0.5 + (i * 7919 % 13) / 5, math.nan)
    getattr(policy, "observe", lambda *a: None)(d, rec)


def run_sequence(name: str, seed: int, stream: list[tuple[RequestSpec, ClusterView]]) -> list[RouteDecision | None]:
    """Route a stream with a fresh instance and one rng, feeding outcomes back as a simulator would."""
    policy = policies.get(name)
    g = np.random.default_rng(seed)
    out: list[RouteDecision | None] = []
    for i, (req, v) in enumerate(stream):
        d = policies.decide(policy, req, v, g)
        out.append(d)
        if d is not None:
            feedback(policy, d, i)
    return out


stream_strategy = st.lists(st.tuples(requests(), views()), min_size=1, max_size=4)


@CI
@given(stream=stream_strategy, seed=st.integers(0, 2**32 - 1))
def test_every_policy_chooses_eligible_with_valid_fallbacks(
        stream: list[tuple[RequestSpec, ClusterView]], seed: int) -> None:
    for name in policies.available():
        for (req, v), d in zip(stream, run_sequence(name, seed, stream)):
            ok = allowed(req, v)
            if not ok:
                assert d is None, name
                continue
            assert d is not None, name
            assert d.backend_id in ok, (name, d)
            snap = v.get(d.backend_id)
            assert snap is not None and snap.healthy and snap.model == req.model
            assert not req.residency or snap.country in req.residency
            assert d.backend_id not in d.fallbacks, (name, d)
            assert len(set(d.fallbacks)) == len(d.fallbacks), (name, d)
            # built-ins list every other eligible backend as a fallback
            assert sorted(d.fallbacks) == sorted(b for b in ok if b != d.backend_id), (name, d)
            assert isinstance(d.reason, str) and d.reason


@CI
@given(stream=stream_strategy, seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_decisions(stream: list[tuple[RequestSpec, ClusterView]], seed: int) -> None:
    for name in policies.available():
        a = run_sequence(name, seed, stream)
        b = run_sequence(name, seed, stream)
        assert [(d.backend_id, d.fallbacks, d.reason) if d else None for d in a] == \
               [(d.backend_id, d.fallbacks, d.reason) if d else None for d in b], name


@CI
@given(req=requests(), v=views())
def test_eligible_matches_the_spelled_out_rule(req: RequestSpec, v: ClusterView) -> None:
    ev = policies.eligible(req, v)
    assert list(ev.ids) == allowed(req, v)
    assert ev.now_s == v.now_s
    if len(ev.backends) == len(v.backends):
        assert ev is v


def shares(weights: list[float], draws: int, seed: int = 7) -> Counter[str]:
    v = ClusterView(0.0, tuple(BackendSnapshot(f"b{i}", f"p{i}", "CH", "eu", "m", weight=w)
                               for i, w in enumerate(weights)))
    policy = policies.get("weighted_shuffle")
    g = np.random.default_rng(seed)
    r = RequestSpec(0, 0.0, "m", 1, 1)
    return Counter(policy.route(r, v, g).backend_id for _ in range(draws))


def test_weighted_shuffle_converges_to_20_20_1() -> None:
    draws = 50_000
    c = shares([20.0, 20.0, 1.0], draws)
    for bid, w in (("b0", 20), ("b1", 20), ("b2", 1)):
        assert abs(c[bid] / draws - w / 41) < 0.01, (bid, c)


@settings(derandomize=True, deadline=None, max_examples=25, database=None)
@given(weights=st.lists(st.one_of(st.just(0.0), st.floats(0.5, 10.0)), min_size=2, max_size=6)
       .filter(lambda ws: sum(w > 0 for w in ws) >= 2))
def test_weighted_shuffle_matches_weights_chi_square(weights: list[float]) -> None:
    draws = 10_000
    c = shares(weights, draws)
    positive = [i for i, w in enumerate(weights) if w > 0]
    assert all(c[f"b{i}"] == 0 for i, w in enumerate(weights) if w == 0)
    total = sum(weights[i] for i in positive)
    observed = [c[f"b{i}"] for i in positive]
    expected = [draws * weights[i] / total for i in positive]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    assert stat < stats.chi2.ppf(1 - 1e-6, df=len(positive) - 1), (weights, observed, expected)


@pytest.mark.parametrize("weights", [[0.0, 0.0, 0.0], [0.0]])
def test_weighted_shuffle_all_zero_is_uniform(weights: list[float]) -> None:
    c = shares(weights, 3000)
    assert set(c) == {f"b{i}" for i in range(len(weights))}
    assert max(c.values()) - min(c.values()) < 300
