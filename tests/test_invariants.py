"""The written invariants, checked on every shipped scenario.

Conservation: every arrival ends in exactly one record (ok, rejected, failed, timeout, incomplete).
Causality: arrival ≤ start of service ≤ first token ≤ completion, for every request.
Monotone clock: the simulated clock never goes back (SimPy's step is instrumented).
Determinism: same scenario + seed → identical frame; another seed → a different one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy

from publicai_lab import load_scenario, simulate, validate_frame
from publicai_lab.workload import generate
from conftest import SCENARIOS_DIR

SCENARIOS = sorted(SCENARIOS_DIR.glob("*.yaml"))
# keep the suite quick: cap request counts (the invariants do not depend on size)
CAP = 3000


def small(path: Path):
    s = load_scenario(path)
    n = min(s.requests or CAP, CAP)
    return s, n


@pytest.fixture(params=SCENARIOS, ids=lambda p: p.stem)
def scenario_and_n(request):
    return small(request.param)


def test_shipped_scenarios_exist():
    assert {p.stem for p in SCENARIOS} >= {"publicai-2025", "toy", "swiss-singapore"}


def test_conservation_and_causality(scenario_and_n):
    s, n = scenario_and_n
    res = simulate(s, requests=n, progress=False)
    df = validate_frame(res.requests)
    # conservation: one record per generated request, ids exactly the workload's
    expected_ids = [spec.request_id for spec in generate(s, np.random.default_rng(
        np.random.SeedSequence(s.seed).spawn(2)[0]), max_requests=n)]
    assert sorted(df["request_id"].tolist()) == expected_ids
    counts = df["status"].value_counts()
    assert counts.sum() == n
    assert res.events["arrivals"] == n
    # drained run: nothing left in flight
    assert counts.get("incomplete", 0) == 0
    ok = df[df["status"] == "ok"]
    assert len(ok) > 0.5 * n, counts.to_dict()
    assert (ok["queue_wait_s"] >= 0).all()
    assert (ok["queue_wait_s"] <= ok["ttft_s"] + 1e-9).all()
    assert (ok["ttft_s"] <= ok["e2e_s"] + 1e-9).all()
    assert (ok["arrival_s"] + ok["e2e_s"] <= res.duration_s + 1e-6).all()
    assert ok["backend_id"].notna().all() and (ok["attempts"] >= 1).all()
    rej = df[df["status"] == "rejected"]
    assert rej["error_type"].notna().all()
    # no backend is left holding requests
    assert (res.backends["busy_s"] <= res.backends["available_s"] + 1e-6).all()


def test_horizon_marks_in_flight_incomplete(scenario_and_n):
    s, n = scenario_and_n
    full = simulate(s, requests=n, progress=False).requests
    cut_s = float(full["arrival_s"].quantile(0.5))
    res = simulate(s, horizon_s=cut_s, progress=False)
    df = validate_frame(res.requests)
    assert (df["arrival_s"] <= cut_s).all()
    assert res.duration_s == pytest.approx(cut_s)
    finished = df[df["status"] == "ok"]
    assert (finished["arrival_s"] + finished["e2e_s"] <= cut_s + 1e-6).all()
    assert "incomplete" in set(df["status"])


def test_clock_is_monotone(scenario_and_n, monkeypatch):
    s, n = scenario_and_n
    seen: list[float] = []
    original = simpy.Environment.step

    def step(env):
        original(env)
        seen.append(env.now)

    monkeypatch.setattr(simpy.Environment, "step", step)
    simulate(s, requests=min(n, 1000), progress=False)
    assert len(seen) > 1000
    assert all(b >= a for a, b in zip(seen, seen[1:]))


def test_determinism(scenario_and_n):
    s, n = scenario_and_n
    n = min(n, 1500)
    a = simulate(s, requests=n, progress=False)
    b = simulate(s, requests=n, progress=False)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.replicas, b.replicas)
    c = simulate(s, requests=n, seed=s.seed + 1, progress=False)
    assert not a.requests.equals(c.requests)
