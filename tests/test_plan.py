"""plan(): monotone in the load, and its answer checked back in the simulator on fresh seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from publicai_lab.analysis.plan import Plan, add_cli, evaluate_config, plan
from publicai_lab.analysis.sweep import apply_overrides

RATES = (35.0, 50.0, 70.0)
SLO = {"ttft_s": 100.0, "tpot_s": 100.0, "e2e_s": 1.0}
FRESH_SEEDS = (11, 12, 13)


def two_speeds() -> dict:
    """A paid fast cluster (~19 req/s per replica) and a donated slow one (~9.5 req/s per replica):
    fixed lengths, 4 sequences per replica, so capacity is a step function of replicas."""
    def cluster(name: str, c0_s: float, donated: bool) -> dict:
        return {"name": name, "region": "eu", "hardware": "H100-SXM", "gpus": 2, "replicas": 2,
                "tensor_parallel": 1, "model": "tiny", "cost_per_gpu_hour_usd": 2.0, "donated": donated,
                "engine": {"max_num_seqs": 4, "max_num_batched_tokens": 4096, "kv_cache_tokens": 200_000},
                "perf_model": {"c0_s": c0_s}}
    return {
        "name": "plan-test", "seed": 1, "requests": 600,
        "models": {"tiny": {"spec": "tiny-llama"}},
        "partners": [{"name": "fast", "country": "CH", "clusters": [cluster("a", 0.01, False)]},
                     {"name": "slow", "country": "SG", "clusters": [cluster("b", 0.02, True)]}],
        "network": {"rtt_ms": {}, "default_rtt_ms": 0.0, "gateway_overhead_ms": 0.0, "hf_router_rtt_ms": 0.0},
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 20.0},
                     "prompt_tokens": {"kind": "fixed", "value": 16},
                     "output_tokens": {"kind": "fixed", "value": 20}, "models": {"tiny": 1.0}},
        "gateway": {"policy": {"name": "least_in_flight"}, "timeout_s": 1e9},
        "slo": SLO,
    }


@pytest.fixture(scope="module")
def plans() -> dict[float, Plan]:
    return {rate: plan(two_speeds(), rate, requests=600, seeds=(1, 2)) for rate in RATES}


def _attainment(data: dict, requests: int = 1000) -> float:
    runs = [evaluate_config(data, s, requests, SLO) for s in FRESH_SEEDS]
    return sum(r["met"] for r in runs) / sum(r["served"] for r in runs)


def test_plan_is_monotone_in_load(plans: dict[float, Plan]) -> None:
    totals = [plans[r].total_replicas for r in RATES]
    assert all(p.feasible for p in plans.values())
    assert totals == sorted(totals) and totals[0] < totals[-1], totals
    gpus = [plans[r].cost["gpus"] for r in RATES]
    assert gpus == sorted(gpus)


@pytest.mark.parametrize("rate", RATES)
def test_plan_holds_on_fresh_seeds_and_one_fewer_does_not(plans: dict[float, Plan], rate: float) -> None:
    p = plans[rate]
    assert _attainment(p.scenario_data) >= 0.99
    removable = [bid for bid in p.scalable if p.replicas[bid] > 1]
    assert removable, "the answer should use more than the minimum somewhere"
    assert set(p.minus_one) == set(removable)
    ids = list(p.replicas)
    for bid in removable:
        path = f"partners[{ids.index(bid)}].clusters[0].replicas"
        fewer = apply_overrides(p.scenario_data, {path: p.replicas[bid] - 1})
        assert _attainment(fewer) < 0.99, bid


def test_plan_cost_report_and_cli(plans: dict[float, Plan], tmp_path: Path) -> None:
    p = plans[50.0]
    c = p.cost
    paid_gpus = p.replicas["fast/a"]
    assert c["paid_usd_per_hour"] == pytest.approx(2.0 * paid_gpus)
    assert c["donated_gpu_hours_per_day"] == pytest.approx(24.0 * p.replicas["slow/b"])
    assert c["usd_per_mtok"] == pytest.approx(c["paid_usd_per_hour"] / (50.0 * 36 * 3600) * 1e6)
    md = p.to_markdown()
    assert "| fast/a |" in md and "attainment_vs_replicas.png" in md
    page = p.write(tmp_path / "plan")
    html = page.read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert (tmp_path / "plan" / "plan.md").exists() and (tmp_path / "plan" / "attainment_vs_replicas.png").exists()

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    scen = tmp_path / "s.yaml"
    import yaml
    scen.write_text(yaml.safe_dump(two_speeds()))
    args = parser.parse_args(["plan", "--scenario", str(scen), "--target-rate", "35", "--slo-e2e-s", "1.0",
                              "--requests", "300", "--seeds", "1", "--clusters", "fast/a",
                              "--out", str(tmp_path / "cli")])
    assert args.func(args) == 0
    assert (tmp_path / "cli" / "plan.html").exists() and (tmp_path / "cli" / "plan.json").exists()
