"""Tests for publicai_lab.workload: arrival processes, length samplers, trace readers, generate().

Scenarios are stood in by ``types.SimpleNamespace`` objects with the attribute names of
.notes/CONTRACTS.md, so these tests do not depend on the scenario loader; the last section also
loads every scenarios/*.yaml through ``publicai_lab.scenario.load_scenario`` when it exists.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest

from publicai_lab.errors import ScenarioError
from publicai_lab.types import RequestSpec
from publicai_lab import workload as wlmod
from publicai_lab.workload import (
    diurnal_arrivals,
    gamma_arrivals,
    generate,
    poisson_arrivals,
    read_azure_trace,
    read_csv_trace,
    read_trace,
    sample_empirical,
    sample_fixed,
    sample_geometric,
    sample_lengths,
    sample_lognormal,
    sample_uniform,
    trace_arrivals,
)

#: a working-day shape in local time (hour 0 … 23)
CURVE = (0.35, 0.25, 0.2, 0.18, 0.18, 0.22, 0.35, 0.6, 0.9, 1.15, 1.3, 1.4,
         1.4, 1.45, 1.5, 1.5, 1.45, 1.35, 1.2, 1.05, 0.9, 0.75, 0.6, 0.45)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "traces" / "sample_conv.csv"
AZURE_CONV = REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def take(chunks, n):
    """Concatenate chunks from an arrival iterator until ``n`` values."""
    out, got = [], 0
    for c in chunks:
        out.append(c)
        got += len(c)
        if got >= n:
            break
    return np.concatenate(out)[:n]


# ---------------------------------------------------------------- arrivals

def test_poisson_mean_gap_and_exponential_shape():
    rate = 4.0
    t = take(poisson_arrivals(rate, np.random.default_rng(1)), 200_000)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert np.all(gaps >= 0)
    assert abs(gaps.mean() - 1 / rate) / (1 / rate) < 0.02
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # exponential: CV 1


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_cv_and_mean(cv):
    rate = 10.0
    t = take(gamma_arrivals(rate, cv, np.random.default_rng(2)), 200_000)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert abs(gaps.mean() * rate - 1) < 0.02
    assert abs(gaps.std() / gaps.mean() - cv) / cv < 0.03


def test_arrivals_reject_bad_parameters():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        next(poisson_arrivals(0.0, rng))
    with pytest.raises(ValueError):
        next(gamma_arrivals(1.0, 0.0, rng))
    with pytest.raises(ValueError):
        next(diurnal_arrivals(1.0, [1.0] * 23, [1.0], [0.0], rng))


def _hourly_counts(times_s, days):
    hours = (times_s // 3600).astype(int) % 24
    return np.bincount(hours, minlength=24) / days


def test_diurnal_hourly_counts_follow_curve():
    curve = np.array(CURVE)
    rate, days = 2.0, 2
    times, regions = [], []
    for t, r in diurnal_arrivals(rate, curve, [1.0], [0.0], np.random.default_rng(3)):
        times.append(t)
        regions.append(r)
        if t[-1] > days * 86400:
            break
    t = np.concatenate(times)
    t = t[t < days * 86400]
    assert np.all(np.diff(t) >= 0)
    assert np.all(np.concatenate(regions) == 0)
    counts = _hourly_counts(t, days)
    # the linearly interpolated curve averages (c[h] + c[h+1]) / 2 over hour h
    expected = rate * 3600 * (curve + np.roll(curve, -1)) / 2 / curve.mean()
    assert np.corrcoef(counts, expected)[0, 1] > 0.95
    assert abs(t.size / (days * 86400) - rate) / rate < 0.02  # day-average rate is rate_per_s


def test_diurnal_regions_peak_by_local_time():
    hours = np.arange(24)
    curve = np.exp(-0.5 * ((hours - 14) / 2.0) ** 2) + 0.05  # sharp peak at 14:00 local
    days = 2
    times, regions = [], []
    for t, r in diurnal_arrivals(3.0, curve, [0.5, 0.5], [8.0, 1.0], np.random.default_rng(4)):
        times.append(t)
        regions.append(r)
        if t[-1] > days * 86400:
            break
    t, r = np.concatenate(times), np.concatenate(regions)
    r, t = r[t < days * 86400], t[t < days * 86400]
    east, west = _hourly_counts(t[r == 0], days), _hourly_counts(t[r == 1], days)

    def peak_utc_hour(times_s):  # circular mean of the time of day: robust to hour-bin ties
        angle = np.angle(np.exp(2j * np.pi * times_s / 86400).mean())
        return (angle / (2 * np.pi) * 24) % 24

    # 14:00 local is 06:00 UTC at UTC+8 and 13:00 UTC at UTC+1: 7 hours earlier
    assert peak_utc_hour(t[r == 0]) == pytest.approx(6.0, abs=0.1)
    assert peak_utc_hour(t[r == 1]) == pytest.approx(13.0, abs=0.1)
    lags = [np.corrcoef(np.roll(east, k), west)[0, 1] for k in range(24)]
    assert int(np.argmax(lags)) == 7
    assert abs((r == 0).mean() - 0.5) < 0.01


def test_trace_arrivals_scale_and_loop():
    base = np.array([10.0, 11.0, 13.0])
    once = np.concatenate(list(trace_arrivals(base, time_scale=0.5)))
    assert once.tolist() == [0.0, 0.5, 1.5]
    looped = take(trace_arrivals(base, time_scale=2.0, loop=True, chunk=2), 7)
    # period = span (6) + mean gap (3)
    assert looped.tolist() == [0.0, 2.0, 6.0, 9.0, 11.0, 15.0, 18.0]


# ---------------------------------------------------------------- lengths

def test_lognormal_median_and_clamp():
    x = sample_lognormal(500, 1.0, 200_000, np.random.default_rng(5))
    assert x.dtype == np.int64
    assert abs(np.median(x) - 500) / 500 < 0.03
    y = sample_lognormal(500, 2.0, 50_000, np.random.default_rng(6), min_tokens=100,
                         max_tokens=2000)
    assert y.min() == 100 and y.max() == 2000


def test_geometric_mean_and_support():
    x = sample_geometric(40, 200_000, np.random.default_rng(7))
    assert x.min() >= 1 and x.dtype == np.int64
    assert abs(x.mean() - 40) / 40 < 0.02
    assert np.all(sample_geometric(1, 10, np.random.default_rng(0)) == 1)


def test_uniform_fixed_empirical():
    rng = np.random.default_rng(8)
    u = sample_uniform(3, 7, 50_000, rng)
    assert set(np.unique(u).tolist()) == {3, 4, 5, 6, 7}
    assert sample_fixed(0, 4).tolist() == [1, 1, 1, 1]  # never below 1 token
    assert sample_fixed(500, 3, max_tokens=128).tolist() == [128] * 3
    e = sample_empirical([10, 20, 30], [1, 0, 3], 100_000, rng)
    assert set(np.unique(e).tolist()) == {10, 30}
    assert abs((e == 30).mean() - 0.75) < 0.01
    assert set(np.unique(sample_empirical([5, 6], None, 1000, rng)).tolist()) == {5, 6}


def test_sample_lengths_dispatch_and_clamps():
    rng = np.random.default_rng(9)
    cases = [
        NS(kind="fixed", value=64, min=None, max=None),
        NS(kind="uniform", low=1, high=10_000, min=50, max=5000),
        NS(kind="lognormal", median=2000, sigma=1.5, min=16, max=4096),
        NS(kind="geometric", mean=300, min=2, max=1000),
        NS(kind="empirical", values=[0, 5, 99_999], weights=None, min=None, max=1024),
    ]
    for dist in cases:
        x = sample_lengths(dist, 20_000, rng)
        assert x.dtype == np.int64 and x.shape == (20_000,)
        assert x.min() >= max(1, dist.min or 1)
        if dist.max is not None:
            assert x.max() <= dist.max
    assert sample_lengths({"kind": "fixed", "value": 7}, 2, rng).tolist() == [7, 7]
    with pytest.raises(ValueError, match="unknown length"):
        sample_lengths(NS(kind="zipf"), 3, rng)
    with pytest.raises(ValueError, match="trace"):
        sample_lengths(NS(kind="trace"), 3, rng)


# ---------------------------------------------------------------- traces

def test_sample_trace_is_synthetic_and_readable():
    first = SAMPLE.read_text().splitlines()[0]
    assert first.startswith("#") and "SYNTHETIC" in first
    df = read_trace(SAMPLE)  # auto-detects the generic CSV form
    assert list(df.columns) == ["arrival_s", "prompt_tokens", "output_tokens"]
    assert len(df) == 500 and df["arrival_s"].iloc[0] == 0.0
    assert df["arrival_s"].is_monotonic_increasing
    assert (df[["prompt_tokens", "output_tokens"]] >= 1).all().all()
    assert df.equals(read_csv_trace(SAMPLE))


def test_csv_trace_sorts_rebases_and_fixes_zero_tokens(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n5.0,10,0\n3.0,0,7\n4.0,2,3\n")
    df = read_csv_trace(p)
    assert df["arrival_s"].tolist() == [0.0, 1.0, 2.0]
    assert df["prompt_tokens"].tolist() == [1, 2, 10]
    assert df["output_tokens"].tolist() == [7, 3, 1]
    assert df.dtypes.tolist() == [np.float64, np.int64, np.int64]


def test_azure_reader_small_file_and_errors(tmp_path):
    p = tmp_path / "azure.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,396,0\n"
                 "2023-11-16 18:16:46.6805900,10,3\n")
    df = read_azure_trace(p)
    assert df["arrival_s"].tolist() == pytest.approx([0.0, 4.314579, 60.0])
    assert df["output_tokens"].tolist() == [44, 1, 3]
    assert df.equals(read_trace(p))  # auto-detects Azure from the header

    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,Tokens\n2023-11-16 18:15:46.6805900,374,44\n")
    with pytest.raises(ScenarioError) as err:
        read_azure_trace(bad)
    msg = str(err.value)
    assert "bad.csv" in msg and "GeneratedTokens" in msg and "\n" not in msg
    with pytest.raises(ScenarioError, match="not found"):
        read_trace(tmp_path / "missing.csv", "azure")
    with pytest.raises(ScenarioError, match="unknown trace format"):
        read_trace(p, "parquet")


def test_burstgpt_and_mooncake_readers(tmp_path):
    b = tmp_path / "burst.csv"
    b.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,100,20,120,Conversation log\n7.5,GPT-4,50,0,50,API log\n")
    df = read_trace(b)
    assert df.values.tolist() == [[0.0, 100, 20], [2.5, 50, 1]]
    m = tmp_path / "moon.jsonl"
    m.write_text('{"timestamp": 1000, "input_length": 300, "output_length": 4, "hash_ids": [1]}\n'
                 '{"timestamp": 3500, "input_length": 20, "output_length": 9, "hash_ids": [2]}\n')
    assert read_trace(m).values.tolist() == [[0.0, 300, 4], [2.5, 20, 9]]


@pytest.mark.skipif(not AZURE_CONV.exists(), reason="../shared traces absent")
def test_azure_conv_trace():
    df = read_azure_trace(AZURE_CONV)
    with open(AZURE_CONV, encoding="utf-8") as fh:
        data_lines = sum(1 for line in fh if line.strip()) - 1
    assert len(df) == data_lines and len(df) > 19_000
    assert df["arrival_s"].iloc[0] == 0.0
    assert np.all(np.diff(df["arrival_s"].to_numpy()) >= 0)
    assert 3000 < df["arrival_s"].iloc[-1] <= 3600
    assert (df[["prompt_tokens", "output_tokens"]] >= 1).all().all()


# ---------------------------------------------------------------- generate()

def stand_in(kind="poisson", requests=None, horizon_s=None, **arrivals):
    """A scenario-shaped object with the attribute names of the contract."""
    calls: list[str] = []

    def resolve_model(name):
        calls.append(name)
        return {"apertus": "swiss-ai/Apertus-8B", "apertus-70b": "swiss-ai/Apertus-70B"}[name]

    wl = NS(
        arrivals=NS(kind=kind, rate_per_s=arrivals.pop("rate_per_s", 20.0), **arrivals),
        prompt_tokens=NS(kind="lognormal", median=800, sigma=1.0, min=1, max=16_000),
        output_tokens=NS(kind="geometric", mean=150, min=1, max=2048),
        client_regions={"eu": NS(share=0.5, utc_offset_h=1, residency=["CH", "DE"]),
                        "us": NS(share=0.3, utc_offset_h=-5, residency=[]),
                        "asia": NS(share=0.2, utc_offset_h=8, residency=["SG"])},
        models={"apertus": 0.7, "apertus-70b": 0.3},
        tiers={"free": NS(share=0.8, rpm=20, users=1000), "pro": NS(share=0.2, rpm=None, users=5)},
        channels={"direct": 0.6, "huggingface": 0.4},
    )
    return NS(name="stand-in", seed=1, requests=requests, horizon_s=horizon_s, workload=wl,
              models={}, source=None, resolve_model=resolve_model, resolve_calls=calls)


def test_generate_order_ids_and_fields():
    scen = stand_in(requests=20_000)
    reqs = list(generate(scen, np.random.default_rng(10)))
    assert len(reqs) == 20_000
    assert all(isinstance(r, RequestSpec) for r in reqs[:10])
    assert [r.request_id for r in reqs] == list(range(20_000))
    arrivals = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(arrivals) >= 0) and arrivals[0] > 0
    assert scen.resolve_calls == ["apertus", "apertus-70b"]  # once per key, not per request
    residency = {"eu": ("CH", "DE"), "us": (), "asia": ("SG",)}
    users = {"free": 1000, "pro": 5}
    for r in reqs[:2000]:
        assert r.model in ("swiss-ai/Apertus-8B", "swiss-ai/Apertus-70B")
        assert r.residency == residency[r.client_region]
        tier, k = r.user.rsplit("-", 1)
        assert tier == r.tier and 0 <= int(k) < users[tier]
        assert r.channel in ("direct", "huggingface")
        assert 1 <= r.prompt_tokens <= 16_000 and 1 <= r.output_tokens <= 2048
        assert isinstance(r.prompt_tokens, int) and isinstance(r.arrival_s, float)
    assert {r.user for r in reqs if r.tier == "pro"} == {f"pro-{k}" for k in range(5)}


def test_generate_stops_at_limits():
    rng = np.random.default_rng
    assert len(list(generate(stand_in(requests=12_345), rng(0)))) == 12_345
    assert list(generate(stand_in(requests=0), rng(0))) == []
    by_horizon = list(generate(stand_in(horizon_s=100.0, rate_per_s=50.0), rng(0)))
    assert by_horizon[-1].arrival_s <= 100.0 and abs(len(by_horizon) - 5000) < 400
    # explicit arguments override the scenario; whichever limit comes first wins
    assert len(list(generate(stand_in(requests=10_000), rng(0), max_requests=7))) == 7
    both = list(generate(stand_in(requests=10_000), rng(0), horizon_s=10.0))
    assert 0 < len(both) < 400 and both[-1].arrival_s <= 10.0
    # None lifts the scenario's limit on that side (the simulator passes both explicitly)
    capped = stand_in(requests=500, horizon_s=1.0)
    assert len(list(generate(capped, rng(0), max_requests=500, horizon_s=None))) == 500
    assert len(list(generate(capped, rng(0), max_requests=None))) < 100
    assert len(list(generate(capped, rng(0), horizon_s=math.inf))) == 500
    with pytest.raises(ScenarioError, match="requests"):
        generate(stand_in(), rng(0))  # neither limit: fails at the call, not at next()
    with pytest.raises(ScenarioError, match="requests"):
        generate(stand_in(requests=5), rng(0), max_requests=None, horizon_s=math.inf)


def test_generate_is_deterministic_and_prefix_stable():
    a = list(generate(stand_in(requests=30_000), np.random.default_rng(42)))
    b = list(generate(stand_in(requests=30_000), np.random.default_rng(42)))
    c = list(generate(stand_in(requests=30_000), np.random.default_rng(43)))
    assert a == b
    assert a != c
    short = list(generate(stand_in(requests=10_001), np.random.default_rng(42)))
    assert short == a[:10_001]
    # the generator's streams are fixed at the call: using rng afterwards changes nothing
    rng = np.random.default_rng(42)
    it = generate(stand_in(requests=30_000), rng)
    rng.random(1000)
    assert list(it) == a


def test_generate_concerns_have_independent_streams():
    """Changing the tier mix must not move arrival times or lengths (common random numbers)."""
    s1, s2 = stand_in(requests=5000), stand_in(requests=5000)
    s2.workload.tiers = {"free": NS(share=1.0, rpm=None, users=3)}
    a = list(generate(s1, np.random.default_rng(5)))
    b = list(generate(s2, np.random.default_rng(5)))
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.model) for r in a] == \
           [(r.arrival_s, r.prompt_tokens, r.output_tokens, r.model) for r in b]


def test_generate_shares_within_one_point():
    reqs = list(generate(stand_in(requests=100_000), np.random.default_rng(11)))
    frame = pd.DataFrame({"model": [r.model for r in reqs],
                          "region": [r.client_region for r in reqs],
                          "tier": [r.tier for r in reqs],
                          "channel": [r.channel for r in reqs]})
    expected = {
        "model": {"swiss-ai/Apertus-8B": 0.7, "swiss-ai/Apertus-70B": 0.3},
        "region": {"eu": 0.5, "us": 0.3, "asia": 0.2},
        "tier": {"free": 0.8, "pro": 0.2},
        "channel": {"direct": 0.6, "huggingface": 0.4},
    }
    for col, shares in expected.items():
        got = frame[col].value_counts(normalize=True)
        assert set(got.index) == set(shares)
        for key, share in shares.items():
            assert abs(got[key] - share) < 0.01, (col, key, got[key])


def test_generate_gamma_and_diurnal():
    gam = list(generate(stand_in("gamma", requests=50_000, cv=3.0), np.random.default_rng(12)))
    gaps = np.diff([r.arrival_s for r in gam])
    assert abs(gaps.std() / gaps.mean() - 3.0) < 0.3
    scen = stand_in("diurnal", horizon_s=86_400.0, rate_per_s=1.0,
                    curve=list(CURVE))
    day = list(generate(scen, np.random.default_rng(13)))
    assert abs(len(day) - 86_400) < 1500
    hours = np.array([r.arrival_s for r in day]) // 3600
    asia = np.bincount(hours[[r.client_region == "asia" for r in day]].astype(int), minlength=24)
    us = np.bincount(hours[[r.client_region == "us" for r in day]].astype(int), minlength=24)
    lags = [np.corrcoef(np.roll(asia, k), us)[0, 1] for k in range(24)]
    assert int(np.argmax(lags)) == 13  # UTC+8 runs 13 hours ahead of UTC-5
    # a region's share holds over the whole day, even though it varies hour by hour
    assert abs(np.mean([r.client_region == "eu" for r in day]) - 0.5) < 0.01


def test_generate_trace_replay_aligns_lengths():
    scen = stand_in("trace", path=str(SAMPLE), time_scale=2.0, loop=False)
    scen.workload.prompt_tokens = NS(kind="trace")
    scen.workload.output_tokens = NS(kind="trace", max=500)
    reqs = list(generate(scen, np.random.default_rng(14)))  # finite trace: no limit needed
    trace = read_csv_trace(SAMPLE)
    assert len(reqs) == len(trace)
    assert [r.arrival_s for r in reqs] == pytest.approx((trace["arrival_s"] * 2.0).tolist())
    assert [r.prompt_tokens for r in reqs] == trace["prompt_tokens"].tolist()
    assert [r.output_tokens for r in reqs] == trace["output_tokens"].clip(upper=500).tolist()
    # looped: continues past the end, still ordered, lengths repeat with the rows
    scen.workload.arrivals.loop = True
    looped = list(generate(scen, np.random.default_rng(14), max_requests=1200))
    assert len(looped) == 1200
    looped_t = np.array([r.arrival_s for r in looped])
    assert np.all(np.diff(looped_t) >= 0)
    assert looped_t[500] - looped_t[499] > 0  # the join neither bunches nor stalls
    assert [r.prompt_tokens for r in looped[500:1000]] == trace["prompt_tokens"].tolist()
    # relative path resolves against the repository root from any working directory
    scen.workload.arrivals.path = "data/traces/sample_conv.csv"
    assert len(list(generate(scen, np.random.default_rng(0), max_requests=3))) == 3


def test_generate_trace_lengths_with_synthetic_arrivals():
    scen = stand_in(requests=2000)
    scen.workload.prompt_tokens = NS(kind="trace", path=str(SAMPLE))
    values = set(read_csv_trace(SAMPLE)["prompt_tokens"].tolist())
    reqs = list(generate(scen, np.random.default_rng(15)))
    assert {r.prompt_tokens for r in reqs} <= values
    scen.workload.prompt_tokens = NS(kind="trace")
    with pytest.raises(ScenarioError, match="prompt_tokens"):
        generate(scen, np.random.default_rng(15))


def test_generate_defaults_and_bad_input():
    scen = stand_in(requests=100)
    scen.workload.client_regions = {}
    scen.workload.tiers = {}
    scen.workload.channels = {}
    reqs = list(generate(scen, np.random.default_rng(16)))
    assert {(r.client_region, r.residency, r.tier, r.channel) for r in reqs} == \
           {("default", (), "free", "direct")}
    scen.workload.arrivals.kind = "bursty"
    with pytest.raises(ScenarioError, match="workload.arrivals.kind"):
        generate(scen, np.random.default_rng(16))
    scen = stand_in(requests=10)
    scen.workload.models = {"apertus": 0.0}
    with pytest.raises(ScenarioError, match="workload.models"):
        generate(scen, np.random.default_rng(16))


def test_generate_is_lazy_and_memory_flat():
    scen = stand_in(requests=10**9)
    first = list(itertools.islice(generate(scen, np.random.default_rng(17)), 5))
    assert [r.request_id for r in first] == [0, 1, 2, 3, 4]
    tracemalloc.start()
    try:
        count = 0
        for _ in generate(stand_in(requests=60_000), np.random.default_rng(18)):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 60_000
    # one chunk in flight is ~2 MB; holding 60k specs would take ~15 MB
    assert peak < 6 * 2**20


def test_public_api_exports():
    for name in ("generate", "read_trace", "read_azure_trace", "read_csv_trace",
                 "sample_lognormal", "sample_geometric", "sample_uniform", "sample_fixed",
                 "sample_empirical", "sample_lengths", "poisson_arrivals", "gamma_arrivals",
                 "diurnal_arrivals", "trace_arrivals"):
        assert name in wlmod.__all__ and hasattr(wlmod, name)
    assert sorted(wlmod.__all__) == sorted(set(wlmod.__all__))


# ---------------------------------------------------------------- real scenario files

SCENARIO_FILES = sorted((REPO / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=[p.name for p in SCENARIO_FILES])
def test_generate_from_scenario_files(path):
    scenario_mod = pytest.importorskip("publicai_lab.scenario")
    scen = scenario_mod.load_scenario(path)
    limit = 2000 if scen.requests is None else min(scen.requests, 2000)
    reqs = list(generate(scen, np.random.default_rng(scen.seed), max_requests=limit))
    assert 0 < len(reqs) <= limit
    assert [r.request_id for r in reqs] == list(range(len(reqs)))
    assert np.all(np.diff([r.arrival_s for r in reqs]) >= 0)
    if scen.horizon_s is not None:
        assert reqs[-1].arrival_s <= scen.horizon_s
    models = set(scen.models)
    regions = set(scen.workload.client_regions) or {"default"}
    for r in reqs:
        assert r.model in models and r.client_region in regions
        assert r.prompt_tokens >= 1 and r.output_tokens >= 1
    again = list(generate(scen, np.random.default_rng(scen.seed), max_requests=limit))
    assert again == reqs


def _toy_mapping():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((REPO / "scenarios" / "toy.yaml").read_text())


@pytest.mark.skipif(not (REPO / "scenarios" / "toy.yaml").exists(), reason="no toy scenario")
def test_loaded_scenario_trace_replay_and_aliases():
    scenario_mod = pytest.importorskip("publicai_lab.scenario")
    data = _toy_mapping()
    data["requests"] = 10_000  # more than the trace holds: the trace's end stops the stream
    data["workload"]["arrivals"] = {"kind": "trace", "path": "data/traces/sample_conv.csv",
                                    "format": "csv", "time_scale": 0.5}
    data["workload"]["prompt_tokens"] = {"kind": "trace"}
    data["workload"]["output_tokens"] = {"kind": "trace", "max": 256}
    data["workload"]["models"] = {"tiny-llama": 1.0}  # an alias
    scen = scenario_mod.load_scenario(data, base_dir=REPO)
    reqs = list(generate(scen, np.random.default_rng(0)))  # finite trace: no limits needed
    trace = read_csv_trace(SAMPLE)
    assert len(reqs) == len(trace)
    assert [r.arrival_s for r in reqs] == pytest.approx((trace["arrival_s"] * 0.5).tolist())
    assert [r.prompt_tokens for r in reqs] == trace["prompt_tokens"].tolist()
    assert max(r.output_tokens for r in reqs) <= 256
    assert {r.model for r in reqs} == {"publicai-lab/tiny-llama"}


SWISS_SG = REPO / "scenarios" / "swiss-singapore.yaml"


@pytest.mark.skipif(not SWISS_SG.exists(), reason="no swiss-singapore scenario")
def test_loaded_diurnal_scenario_regions_follow_local_time():
    scenario_mod = pytest.importorskip("publicai_lab.scenario")
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(SWISS_SG.read_text())
    assert data["workload"]["arrivals"]["kind"] == "diurnal"
    data["workload"]["arrivals"]["rate_per_s"] = 1.5  # a day in ~130k requests keeps this quick
    scen = scenario_mod.load_scenario(data, base_dir=REPO / "scenarios")
    reqs = list(generate(scen, np.random.default_rng(1), max_requests=None, horizon_s=86_400.0))
    t = np.array([r.arrival_s for r in reqs])
    regions = np.array([r.client_region for r in reqs])
    names = list(scen.workload.client_regions)
    offsets = {n: scen.workload.client_regions[n].utc_offset_h for n in names}
    start_h = scen.workload.arrivals.start_hour_utc
    curve = np.asarray(scen.workload.arrivals.curve)
    a, b = names[0], names[1]
    count_a = _hourly_counts(t[regions == a], 1)
    count_b = _hourly_counts(t[regions == b], 1)
    lag = int(np.argmax([np.corrcoef(np.roll(count_a, k), count_b)[0, 1] for k in range(24)]))
    assert lag == int(round(offsets[a] - offsets[b])) % 24
    # each region's simulated hours follow the curve at its local time
    for name, counts in ((a, count_a), (b, count_b)):
        local = (start_h + np.arange(24) + offsets[name]) % 24
        ref = np.interp(local + 0.5, np.arange(25), np.append(curve, curve[0]))
        assert np.corrcoef(counts, ref)[0, 1] > 0.95
    for name in names:
        res = tuple(scen.workload.client_regions[name].residency)
        assert all(r.residency == res for r in reqs[:500] if r.client_region == name)
