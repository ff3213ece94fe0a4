"""The simulator and the live gateway rank routing policies the same way (p90 E2E).

Live = our gateway in front of one emulated vLLM backend per cluster (three speeds, 1 : 2 : 4),
replaying the simulator's own requests. The policies are chosen so that adjacent ones differ by
far more than the live run-to-run noise (at most 9 % between repeats, measured with
benchmarks/policy_ranking.py, against sim p90 gaps of a third and more), so a disagreement means
the two worlds really diverge, not bad luck. About 20 s on one core.
"""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("publicai_lab.live.emulator")
pytest.importorskip("uvicorn")
pytest.importorskip("aiohttp")

from publicai_lab.live.ranking import (
    DEFAULT_POLICIES,
    capacity_req_per_s,
    rank_policies,
    ranking_scenario,
    rankings_agree,
)

REQUESTS = 300
#: adjacent policies must differ at least this much in sim p90, or the ranking proves nothing
MIN_GAP = 0.15


@pytest.fixture(scope="module")
def table():
    return rank_policies(ranking_scenario(), DEFAULT_POLICIES, requests=REQUESTS, repeats=1)


def test_scenario_load_is_a_fraction_of_capacity() -> None:
    s = ranking_scenario(load_fraction=0.6)
    assert len(s.clusters()) == 3
    speeds = [c.perf_model.c0_s for _, c in s.clusters()]
    assert speeds == sorted(speeds) and speeds[-1] >= 3.9 * speeds[0]
    assert s.workload.arrivals.rate_per_s == pytest.approx(0.6 * capacity_req_per_s(s), abs=0.1)


def test_policies_really_differ_in_the_simulator(table) -> None:
    p90 = table.sort_values("sim_p90_e2e_s")["sim_p90_e2e_s"].tolist()
    for better, worse in itertools.pairwise(p90):
        assert better < (1.0 - MIN_GAP) * worse, table.to_string()


def test_live_ranking_equals_sim_ranking(table) -> None:
    assert (table["live_not_ok"] == 0).all(), table.to_string()
    assert sorted(table["sim_rank"].tolist()) == list(range(1, len(table) + 1)), table.to_string()
    assert table["live_rank"].tolist() == table["sim_rank"].tolist(), table.to_string()
    assert rankings_agree(table)
    # a gross sanity bound, not a fidelity test: live latencies are the sim's, give or take
    ratio = table["live_p90_e2e_s"] / table["sim_p90_e2e_s"]
    assert ratio.between(0.5, 2.0).all(), table.to_string()


def test_rankings_agree_detects_a_swap(table) -> None:
    swapped = table.copy()
    swapped["live_rank"] = swapped["live_rank"].iloc[::-1].to_numpy()
    assert not rankings_agree(swapped)
