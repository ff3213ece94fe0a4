"""The gateway and federation model behave as specified: faults, retries, cooldown, residency,
rate limits, channels, model fallbacks, timeouts, staleness, and user-defined policies."""

from __future__ import annotations


import copy

import numpy as np
import pandas as pd
import pytest

from publicai_lab import PolicyError, load_scenario, simulate, validate_frame
from publicai_lab.policies import BasePolicy
from publicai_lab.types import RouteDecision
from conftest import SCENARIOS_DIR as ROOT_SCENARIOS
from scenario_factory import single_cluster, two_partners


def run(d: dict, **kw):
    res = simulate(load_scenario(d), progress=False, **kw)
    validate_frame(res.requests)
    return res


def test_outage_retries_in_flight_requests_elsewhere():
    d = two_partners(requests=600, rate_per_s=30, c0_s=0.02,
                     faults=[{"kind": "outage", "cluster": "ch/a", "at_s": 5.0, "duration_s": 5.0}])
    df = run(d).requests
    # requests already streaming when ch/a died cannot be retried invisibly: they fail; the rest
    # (queued or in prefill) are retried on sg/b
    failed = df[df["status"] != "ok"]
    assert set(failed["status"]) <= {"failed"} and set(failed["error_type"]) <= {"backend_down"}
    assert (failed["backend_id"] == "ch/a").all() and len(failed) <= 8   # at most one batch
    assert ((failed["arrival_s"] > 4.0) & (failed["arrival_s"] < 5.0)).all()
    retried = df[df["attempts"] > 1]
    assert len(retried) > 0
    assert (retried["backend_id"] == "sg/b").all()
    # while ch/a is down and known to be down, nothing new lands there
    during = df[(df["arrival_s"] > 6.5) & (df["arrival_s"] < 9.5)]
    assert len(during) > 50 and (during["backend_id"] == "sg/b").all()
    # after it comes back (health check at 1 s intervals, cooldown 60 s by default!) -> still out
    late = df[df["arrival_s"] > 12.0]
    assert set(late["backend_id"]) == {"sg/b"}, "cooldown of 60 s keeps it out after the outage"


def test_backend_returns_after_cooldown_and_health_check():
    d = two_partners(requests=800, rate_per_s=30, c0_s=0.02, gateway={"cooldown_s": 2.0},
                     faults=[{"kind": "outage", "cluster": "ch/a", "at_s": 5.0, "duration_s": 5.0}])
    df = run(d).requests
    late = df[df["arrival_s"] > 12.0]
    assert set(late["backend_id"]) == {"ch/a", "sg/b"}


def test_outage_without_retry_fails_in_flight_requests():
    d = two_partners(requests=400, rate_per_s=30, c0_s=0.02, gateway={"retry_on_outage": False},
                     faults=[{"kind": "outage", "cluster": "ch/a", "at_s": 5.0, "duration_s": 5.0}])
    df = run(d).requests
    failed = df[df["status"] == "failed"]
    assert len(failed) > 0
    assert set(failed["error_type"]) == {"backend_down"}
    assert (failed["backend_id"] == "ch/a").all()


def test_residency_is_never_broken_even_when_the_resident_cluster_is_down():
    d = two_partners(requests=400, rate_per_s=20,
                     workload={"client_regions": {"eu": {"share": 0.5, "residency": ["CH"]},
                                                  "ap": {"share": 0.5}}},
                     faults=[{"kind": "outage", "cluster": "ch/a", "at_s": 5.0, "duration_s": 5.0}])
    df = run(d).requests
    swiss = df[df["client_region"] == "eu"]
    assert (swiss.loc[swiss["status"] == "ok", "country"] == "CH").all()
    assert (swiss["status"] == "failed").sum() > 0       # nowhere legal to go during the outage
    others = df[df["client_region"] == "ap"]
    assert set(others.loc[others["status"] == "ok", "country"]) == {"CH", "SG"}


def test_tier_rate_limit_rejects_beyond_requests_per_minute():
    d = two_partners(requests=300, rate_per_s=5,
                     workload={"tiers": {"free": {"share": 1.0, "rpm": 10, "users": 1}}})
    df = run(d).requests
    rej = df[df["status"] == "rejected"]
    assert set(rej["error_type"]) == {"rate_limited"}
    # one key, 10 per fixed minute window: ok count = 10 per window that saw arrivals
    windows = (df["arrival_s"] // 60).astype(int)
    expected_ok = sum(min(10, n) for n in windows.value_counts().to_numpy())
    assert (df["status"] == "ok").sum() == expected_ok


def test_huggingface_channel_adds_the_router_hop():
    base = dict(requests=200, rate_per_s=2, policy="round_robin")
    direct = run(two_partners(**base, workload={"channels": {"direct": 1.0}})).requests
    d = two_partners(**base, workload={"channels": {"huggingface": 1.0}})
    d["network"]["hf_router_rtt_ms"] = 40.0
    via_hf = run(d).requests
    diff = (via_hf["ttft_s"] - direct["ttft_s"]).to_numpy()
    assert np.allclose(diff, 0.040, atol=1e-9)


def test_rtt_is_paid_both_ways():
    a = run(two_partners(requests=100, rate_per_s=1, rtt_ms=0.0)).requests
    b = run(two_partners(requests=100, rate_per_s=1, rtt_ms=100.0)).requests
    assert np.allclose(b["e2e_s"] - a["e2e_s"], 0.100, atol=1e-9)


class AlwaysSG(BasePolicy):
    """A policy written in a notebook cell: send everything to Singapore, remember what it saw."""

    name = "always-sg"

    def __init__(self) -> None:
        self.ages: list[float] = []
        self.observed = 0

    def route(self, req, view, rng):
        for s in view.backends:
            self.ages.append(view.scrape_age_s(s))
        sg = [s.backend_id for s in view.backends if s.country == "SG"]
        rest = tuple(s.backend_id for s in view.backends if s.backend_id not in sg[:1])
        return RouteDecision(sg[0] if sg else view.backends[0].backend_id, rest if sg else (), "sg first")

    def observe(self, decision, record):
        self.observed += 1


def test_a_policy_object_from_a_notebook_cell_routes_and_observes():
    pol = AlwaysSG()
    res = run(two_partners(requests=300), policy=pol)
    df = res.requests
    assert (df["backend_id"] == "sg/b").all()
    assert (df["policy"] == "always-sg").all()
    assert pol.observed == 300
    # engine gauges are scraped every 1 s: never older than that
    assert 0 <= min(pol.ages) and max(pol.ages) < 1.0 + 1e-9


class Cheater(BasePolicy):
    name = "cheater"

    def route(self, req, view, rng):
        return RouteDecision("nowhere/at-all")


def test_a_policy_choosing_an_ineligible_backend_is_an_error():
    with pytest.raises(PolicyError, match="nowhere/at-all"):
        simulate(load_scenario(two_partners(requests=10)), policy=Cheater(), progress=False)


def test_model_fallback_serves_from_the_fallback_model():
    d = two_partners(requests=200, rate_per_s=10)
    d["models"]["big"] = {"spec": "tiny-llama"}
    d["partners"][0]["clusters"][0]["model"] = "big"
    d["workload"]["models"] = {"big": 1.0}
    d["gateway"]["model_fallbacks"] = {"big": ["tiny"]}
    d["faults"] = [{"kind": "outage", "cluster": "ch/a", "at_s": 0.0}]
    df = run(d).requests
    assert (df["status"] == "ok").all()
    late = df[df["arrival_s"] > 2.0]
    assert (late["model"] == "tiny").all() and (late["backend_id"] == "sg/b").all()


def test_slowdown_stretches_service_time_by_the_factor():
    base = single_cluster(requests=50, rate_per_s=0.2, c0_s=0.01, max_num_seqs=4)
    fast = run(base).requests
    slow_d = single_cluster(requests=50, rate_per_s=0.2, c0_s=0.01, max_num_seqs=4,
                            faults=[{"kind": "slowdown", "cluster": "p/c", "at_s": 0.0, "factor": 2.0}])
    slow = run(slow_d).requests
    alone = fast["queue_wait_s"] == 0
    ratio = (slow["e2e_s"] / fast["e2e_s"])[alone & (slow["queue_wait_s"] == 0)]
    assert len(ratio) > 10 and np.allclose(ratio, 2.0)


def test_withdrawn_capacity_stops_serving_and_requests_move():
    d = two_partners(requests=600, rate_per_s=30, c0_s=0.02,
                     faults=[{"kind": "withdraw", "cluster": "ch/a", "at_s": 5.0}])
    res = run(d)
    df = res.requests
    assert set(df.loc[df["status"] != "ok", "error_type"]) <= {"capacity_withdrawn"}
    assert (df.loc[df["arrival_s"] > 6.0, "backend_id"] == "sg/b").all()
    avail = res.backends.set_index("backend_id")["available_s"]
    assert avail["ch/a"] == pytest.approx(5.0)


def test_client_timeout_aborts_and_frees_the_engine():
    d = single_cluster(requests=60, rate_per_s=0.4, c0_s=0.01, max_num_seqs=1,
                       output={"kind": "fixed", "value": 300}, gateway={"timeout_s": 5.0})
    df = run(d).requests
    assert set(df["status"]) == {"ok", "timeout"}
    assert (df.loc[df["status"] == "timeout", "error_type"] == "timeout").all()
    # every ok request finished within the timeout, and the engine kept working after aborts
    assert (df.loc[df["status"] == "ok", "e2e_s"] <= 5.0).all()
    assert df.loc[df["status"] == "ok", "arrival_s"].max() > df.loc[df["status"] == "timeout", "arrival_s"].min()


def test_context_too_long_is_rejected_before_routing():
    d = single_cluster(requests=20, prompt={"kind": "fixed", "value": 4000})
    df = run(d).requests
    assert (df["status"] == "rejected").all()
    assert set(df["error_type"]) == {"context_length_exceeded"}
    assert df["backend_id"].isna().all()


def test_kv_pressure_causes_preemptions_but_no_loss():
    d = single_cluster(requests=300, rate_per_s=20, c0_s=0.005, max_num_seqs=64,
                       prompt={"kind": "fixed", "value": 200}, output={"kind": "fixed", "value": 200})
    d["partners"][0]["clusters"][0]["engine"]["kv_cache_tokens"] = 4000
    res = run(d)
    assert (res.requests["status"] == "ok").all()
    assert res.events["preemptions"] > 0
    assert res.replicas["kv_use"].max() > 0.8


def test_availability_windows_take_a_cluster_in_and_out_of_rotation():
    d = two_partners(requests=600, rate_per_s=20, gateway={"cooldown_s": 1.0})
    d["partners"][0]["clusters"][0]["availability"] = [{"start_s": 10.0, "end_s": 20.0}]
    res = run(d)
    df = res.requests
    on_ch = df[df["backend_id"] == "ch/a"]
    assert len(on_ch) > 50
    # routed to ch/a only while it is up (the health check runs every second)
    assert on_ch["arrival_s"].min() >= 10.0 and on_ch["arrival_s"].max() < 20.0
    assert res.backends.set_index("backend_id").loc["ch/a", "available_s"] == pytest.approx(10.0)


def test_trace_arrivals_replay_the_file_in_the_simulator(tmp_path):
    from conftest import ROOT
    d = single_cluster(requests=500, max_num_seqs=64)
    d["workload"]["arrivals"] = {"kind": "trace", "path": str(ROOT / "data" / "traces" / "sample_conv.csv")}
    d["workload"]["prompt_tokens"] = {"kind": "trace"}
    d["workload"]["output_tokens"] = {"kind": "trace"}
    d["models"]["tiny"] = {"spec": "llama-3.1-8b"}   # the trace has prompts beyond tiny-llama's 2k context
    df = run(d).requests
    trace = pd.read_csv(ROOT / "data" / "traces" / "sample_conv.csv", comment="#")
    assert len(df) == len(trace) == 500
    assert np.allclose(df["arrival_s"].to_numpy(), trace["arrival_s"].to_numpy() - trace["arrival_s"].iloc[0])
    assert (df["prompt_tokens"].to_numpy() == trace["prompt_tokens"].to_numpy()).all()
    assert (df["status"] == "ok").all()


def test_azure_conversation_trace_replays_through_the_simulator():
    from conftest import SHARED_DIR
    path = SHARED_DIR / "traces" / "AzureLLMInferenceTrace_conv.csv"
    if not path.exists():
        pytest.skip("../shared/traces is absent")
    d = load_scenario(ROOT_SCENARIOS / "publicai-2025.yaml").model_dump(mode="json")
    d["requests"] = 20_000
    d["workload"]["arrivals"] = {"kind": "trace", "path": str(path), "format": "azure"}
    d["workload"]["prompt_tokens"] = {"kind": "trace", "max": 60_000}
    d["workload"]["output_tokens"] = {"kind": "trace"}
    res = run(d)
    df = res.requests
    assert len(df) == 19_366            # the whole trace: it ends before the request cap
    assert (df["status"].isin(["ok", "rejected"])).all()
    assert (df["status"] == "ok").mean() > 0.95
    from publicai_lab.workload import read_azure_trace
    trace = read_azure_trace(path)
    assert np.allclose(df["arrival_s"].to_numpy(), trace["arrival_s"].to_numpy())


def test_request_overhead_delays_every_request_on_the_way_in_only():
    """The frontend's per-request time (perf model ``request_overhead_s``) comes before the engine
    sees the request: with arrivals far apart (regular, 2 s; service 1 s) it adds exactly itself
    to TTFT and E2E, and it does not occupy the engine (TPOT unchanged)."""
    base = single_cluster(requests=200, rate_per_s=0.5, max_num_seqs=4)
    base["workload"]["arrivals"] = {"kind": "gamma", "rate_per_s": 0.5, "cv": 0.05}
    a = run(base).requests
    slow = copy.deepcopy(base)
    slow["partners"][0]["clusters"][0]["perf_model"]["request_overhead_s"] = 0.015
    b = run(slow).requests
    assert np.allclose(b["ttft_s"] - a["ttft_s"], 0.015, atol=1e-9)
    assert np.allclose(b["e2e_s"] - a["e2e_s"], 0.015, atol=1e-9)
    assert np.allclose(b["tpot_s"], a["tpot_s"], atol=1e-12)


def test_the_frontend_queues_requests_that_come_faster_than_it_serves_them():
    """Requests arriving every 10 ms at a frontend that takes 15 ms each wait for it (FIFO):
    the k-th request is through after (k + 1) * 15 ms, so its TTFT grows by 5 ms a request."""
    from publicai_lab.sim.frontend import Frontend

    fe = Frontend(servers=1, overhead_s=0.015, busy_s=0.015)
    done = [now + fe.delay_s(now, now) for now in (0.0, 0.010, 0.020, 0.030)]
    assert done == pytest.approx([0.015, 0.030, 0.045, 0.060])
    two = Frontend(servers=2, overhead_s=0.015, busy_s=0.015)          # two replicas, two API servers
    assert [t + two.delay_s(t, t) for t in (0.0, 0.0, 0.0)] == pytest.approx([0.015, 0.015, 0.030])
    part = Frontend(servers=1, overhead_s=0.015, busy_s=0.005)          # busy 5 ms, then 10 ms that overlap
    assert [t + part.delay_s(t, t) for t in (0.0, 0.0, 0.0)] == pytest.approx([0.015, 0.020, 0.025])
    # 100 req/s Poisson into a frontend of 8 ms: M/D/1 at rho 0.8 waits 0.8 * 8 / (2 * 0.2) = 16 ms
    d = single_cluster(requests=20_000, rate_per_s=100.0, max_num_seqs=256, output={"kind": "fixed", "value": 2},
                       c0_s=0.001)
    free = run(d).requests
    d["partners"][0]["clusters"][0]["perf_model"].update(request_overhead_s=0.008, frontend_busy_s=0.008)
    busy = run(d).requests
    added_s = busy["ttft_s"].mean() - free["ttft_s"].mean()
    assert added_s == pytest.approx(0.008 + 0.016, rel=0.10)


def test_each_request_in_flight_adds_the_per_stream_latency():
    """``request_overhead_per_stream_s``: the frontend's latency grows with the requests already in
    flight at its server (it streams their tokens on the same core), spread over its servers."""
    from publicai_lab.sim.frontend import Frontend

    fe = Frontend(servers=1, overhead_s=0.008, per_stream_s=0.002)
    assert [fe.delay_s(0.0, 0.0, n) for n in (0, 1, 5)] == pytest.approx([0.008, 0.010, 0.018])
    two = Frontend(servers=2, overhead_s=0.008, per_stream_s=0.002)
    assert two.delay_s(0.0, 0.0, 4) == pytest.approx(0.012)             # two others a server
    # in the simulator: Poisson arrivals see TTFT grow with the requests in flight when they come
    d = single_cluster(requests=2_000, rate_per_s=40.0, max_num_seqs=64, c0_s=0.002)
    base = run(d).requests
    d["partners"][0]["clusters"][0]["perf_model"].update(request_overhead_per_stream_s=0.001)
    slowed = run(d).requests
    # Little: about rate × E2E requests in flight at an arrival, each adding 1 ms
    in_flight = 40.0 * base["e2e_s"].mean()
    added_s = slowed["ttft_s"].mean() - base["ttft_s"].mean()
    assert added_s == pytest.approx(0.001 * in_flight, rel=0.25)


def test_a_slowdown_during_a_request_applies_from_the_next_step():
    # one request alone: a prefill step and 99 decode steps of 10 ms, 1.0 s in all; a x3 slowdown
    # 0.505 s after it arrives leaves the step then running at 10 ms (it ends at 0.51 s) and the
    # 49 steps after it at 30 ms. (The engine once kept the old speed to the end of a decode run.)
    base = single_cluster(requests=1, rate_per_s=1.0, c0_s=0.01)
    alone = run(base).requests.iloc[0]
    assert alone["e2e_s"] == pytest.approx(1.0)
    slowed = run(single_cluster(requests=1, rate_per_s=1.0, c0_s=0.01, faults=[
        {"kind": "slowdown", "cluster": "p/c", "at_s": float(alone["arrival_s"]) + 0.505, "factor": 3.0}])).requests
    assert slowed.iloc[0]["e2e_s"] == pytest.approx(0.51 + 49 * 0.03)


def _with_jitter(d: dict, **jitter) -> dict:
    d = copy.deepcopy(d)
    d["partners"][0]["clusters"][0]["speed_jitter"] = jitter
    return d


def test_speed_jitter_moves_step_times_deterministically_and_zero_changes_nothing():
    base = single_cluster(requests=200, rate_per_s=2.0, c0_s=0.01, max_num_seqs=8)
    plain = run(base).requests
    pd.testing.assert_frame_equal(run(_with_jitter(base, sd=0.0)).requests, plain)
    jittered = run(_with_jitter(base, sd=0.3, correlation_s=3.0)).requests
    pd.testing.assert_frame_equal(run(_with_jitter(base, sd=0.3, correlation_s=3.0)).requests, jittered)
    other_path = run(_with_jitter(base, sd=0.3, correlation_s=3.0, path=1)).requests
    for frame in (jittered, other_path):      # the same workload, request for request
        for col in ("arrival_s", "prompt_tokens", "output_tokens"):
            assert frame[col].tolist() == plain[col].tolist()
    # a request lasts about 1 s: its stretch is the mean of exp(x) over its life, x of sd 0.3
    log_stretch = np.log(jittered["e2e_s"] / plain["e2e_s"])
    assert 0.1 < log_stretch.std() < 0.35 and abs(log_stretch.median()) < 0.1
    assert not np.allclose(other_path["e2e_s"], jittered["e2e_s"])


def test_ou_values_are_stationary_with_the_given_sd_and_correlation_time():
    from itertools import islice

    from publicai_lab.sim.jitter import ou_values

    xs = np.fromiter(islice(ou_values(np.random.default_rng(3), sd=0.1, interval_s=1.0, correlation_s=4.0), 40_000),
                     float)
    assert xs.std() == pytest.approx(0.1, rel=0.05)
    assert np.corrcoef(xs[:-1], xs[1:])[0, 1] == pytest.approx(np.exp(-0.25), abs=0.02)
    assert np.corrcoef(xs[:-8], xs[8:])[0, 1] == pytest.approx(np.exp(-2.0), abs=0.03)
