"""Queueing sanity: the simulator reproduces textbook queues where they apply.

- one replica, ``max_num_seqs: 1``, deterministic service, Poisson arrivals → M/D/1 (Pollaczek–
  Khinchine): Wq = ρ·D / (2(1 − ρ));
- c replicas of one slot each, a gateway that holds requests until a slot is free (one shared FIFO)
  and exponential service (geometric token counts, mean 200) → M/M/c, Wq from Erlang C.
Service time is ``output_tokens × c0_s`` exactly: one prefill step and output−1 decode steps of
constant duration. Tolerance 3 % on the mean wait, over enough requests for the estimate to settle.
"""

from __future__ import annotations

import math

import pytest

from publicai_lab import load_scenario, simulate
from scenario_factory import single_cluster

pytestmark = pytest.mark.slow


def erlang_c_wait_s(lam: float, mean_service_s: float, c: int) -> float:
    a = lam * mean_service_s
    rho = a / c
    terms = sum(a ** k / math.factorial(k) for k in range(c))
    top = a ** c / math.factorial(c) / (1 - rho)
    p_wait = top / (terms + top)
    return p_wait * mean_service_s / (c * (1 - rho))


def test_md1_mean_wait_matches_pollaczek_khinchine():
    service_s = 100 * 0.01
    rho = 0.6
    lam = rho / service_s
    scn = load_scenario(single_cluster(replicas=1, max_num_seqs=1, c0_s=0.01, rate_per_s=lam,
                                       output={"kind": "fixed", "value": 100}, requests=120_000, seed=7))
    res = simulate(scn, progress=False)
    df = res.requests
    assert (df["status"] == "ok").all()
    expected = rho * service_s / (2 * (1 - rho))
    got = df["queue_wait_s"].mean()
    assert got == pytest.approx(expected, rel=0.03), (got, expected)
    # and service really is deterministic
    svc = df["e2e_s"] - df["queue_wait_s"]
    assert svc.max() - svc.min() < 1e-6


def test_mmc_mean_wait_matches_erlang_c():
    c = 4
    mean_service_s = 200 * 0.005
    rho = 0.6
    lam = rho * c / mean_service_s
    scn = load_scenario(single_cluster(
        replicas=c, max_num_seqs=1, c0_s=0.005, rate_per_s=lam,
        output={"kind": "geometric", "mean": 200, "max": 2000}, requests=400_000, seed=11,
        gateway={"max_in_flight_per_replica": 1}))
    res = simulate(scn, progress=False)
    df = res.requests
    assert (df["status"] == "ok").all()
    expected = erlang_c_wait_s(lam, mean_service_s, c)
    got = df["queue_wait_s"].mean()
    assert got == pytest.approx(expected, rel=0.03), (got, expected)
