"""Do the simulator and the live gateway rank routing policies the same way?

The simulator exists to choose policies. Its absolute latencies may be off by a few per cent,
but if it put ``round_robin`` ahead of ``least_in_flight`` while the real gateway did the
opposite, every conclusion drawn from it would be wrong. This module measures exactly that: the
order of policies by p90 end-to-end latency, once in the simulator and once live, on the very
same requests (same workload seed).

Live here means *our real gateway* (:class:`~publicai_lab.live.gateway.Gateway`, the real policy
objects, real HTTP and SSE) in front of **emulated** vLLM backends
(:class:`~publicai_lab.live.emulator.EmulatedBackend`), one per cluster, each running the
cluster's perf model in real time. Why emulated: on a 2-core machine several real vLLM servers
cannot each get a quiet core, so their step times drift with whatever else runs, and that noise
is larger than the gaps between policies. What the emulators leave out — whether one real
server's timing matches its perf model — is checked separately (calibration, ``tests/live``).

::

    scenario = ranking_scenario()
    table = rank_policies(scenario, DEFAULT_POLICIES, requests=300)   # latency_ewma, least_in_flight, round_robin
    rankings_agree(table)        # True when sim_rank == live_rank for every policy

Everything binds to 127.0.0.1 on ephemeral ports and is stopped on the way out, also on errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

__all__ = [
    "DEFAULT_POLICIES",
    "RANKING_MODEL",
    "capacity_req_per_s",
    "live_p90_e2e_s",
    "rank_policies",
    "ranking_scenario",
    "rankings_agree",
    "sim_p90_e2e_s",
]

RANKING_MODEL = "publicai-lab/tiny-llama"
#: the default set: adjacent policies differ by over 30 % in sim p90 E2E on
#: :func:`ranking_scenario` (learns speeds < counts load < blind to both)
DEFAULT_POLICIES = ("latency_ewma", "least_in_flight", "round_robin")

# toy.yaml's tiny-llama step-time model per unit of "slowness"; a cluster of slowness f has
# every coefficient multiplied by f, so it is f times slower at any batch
_BASE_C0_S = 0.002
_BASE_C_PREFILL_S = 1.6e-5
_BASE_C_DECODE_S = 8.8e-5
_PROMPT_TOKENS = (32, 256)
_OUTPUT_TOKENS = (16, 96)
_P90 = 0.9


def ranking_scenario(*, slowness: Sequence[float] = (1.0, 2.0, 4.0), load_fraction: float = 0.6,
                     max_num_seqs: int = 16, seed: int = 11, requests: int = 300,
                     base_c0_s: float = _BASE_C0_S) -> Any:
    """Three single-replica clusters of tiny-llama with clearly different speeds, local clients.

    ``slowness``: one factor per cluster (partners ``fast``, ``medium``, ``slow`` for three); each
    multiplies all of toy.yaml's step-time coefficients (scaled to ``base_c0_s``). The Poisson
    arrival rate is ``load_fraction`` of the federation's total capacity
    (:func:`capacity_req_per_s`): high enough that sending a third of the traffic to the slowest
    cluster, as load-blind policies do, overloads it — which is what makes policies differ.
    """
    names = ("fast", "medium", "slow") if len(slowness) == 3 else tuple(f"b{i}" for i in range(len(slowness)))
    scale = base_c0_s / _BASE_C0_S
    partners = []
    for name, f in zip(names, slowness):
        partners.append({
            "name": name, "country": "CH", "sponsor": "the test machine",
            "clusters": [{
                "name": "emu", "region": "local", "hardware": "dev-cpu", "gpus": 1, "replicas": 1,
                "model": "tiny-llama",
                "engine": {"max_num_seqs": int(max_num_seqs), "max_num_batched_tokens": 2048,
                           "kv_cache_tokens": 65536},
                "perf_model": {"c0_s": _BASE_C0_S * scale * f, "c_prefill_s": _BASE_C_PREFILL_S * scale * f,
                               "c_decode_s": _BASE_C_DECODE_S * scale * f},
            }],
        })
    doc: dict[str, Any] = {
        "name": "policy-ranking",
        "description": "Three tiny-llama clusters of different speeds (emulated live), for ranking policies.",
        "seed": int(seed),
        "requests": int(requests),
        "hardware": {"dev-cpu": {"kind": "cpu", "bf16_tflops": 0.5, "hbm_tb_s": 0.02, "memory_gib": 24}},
        "models": {RANKING_MODEL: {"spec": "tiny-llama", "aliases": ["tiny-llama"]}},
        "partners": partners,
        "network": {"rtt_ms": {"default": {"local": 0.2}}, "default_rtt_ms": 0.2,
                    "hf_router_rtt_ms": 0.0, "gateway_overhead_ms": 0.1},
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": 1.0},          # set below from capacity
            "prompt_tokens": {"kind": "uniform", "low": _PROMPT_TOKENS[0], "high": _PROMPT_TOKENS[1]},
            "output_tokens": {"kind": "uniform", "low": _OUTPUT_TOKENS[0], "high": _OUTPUT_TOKENS[1]},
            "models": {RANKING_MODEL: 1.0},
        },
        # scrapes feed no policy used here; a short health interval brings a backend back fast
        "gateway": {"policy": DEFAULT_POLICIES[0], "scrape_interval_s": 1.0, "health_check_interval_s": 1.0,
                    "timeout_s": 60.0},
        "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "e2e_s": 5.0},
    }
    from publicai_lab.scenario import load_scenario

    scenario = load_scenario(doc)
    rate = round(load_fraction * capacity_req_per_s(scenario), 1)
    return scenario.with_overrides(rate_per_s=rate)


def capacity_req_per_s(scenario: Any) -> float:
    """Requests per second the federation sustains with every replica's batch full, roughly.

    Per replica: a request costs its share of ``mean_output`` full-batch decode steps plus its
    prefill tokens. Mean lengths assume uniform length distributions (as in
    :func:`ranking_scenario`); good enough to place the offered load, not a queueing model.
    """
    from publicai_lab.perf import engine_params_for

    w = scenario.workload
    prompt_mean = (w.prompt_tokens.low + w.prompt_tokens.high) / 2.0
    out_mean = (w.output_tokens.low + w.output_tokens.high) / 2.0
    total = 0.0
    for partner, cluster in scenario.clusters():
        p = engine_params_for(scenario, partner, cluster)
        batch = p.max_num_seqs
        per_request_s = out_mean * p.perf.step_s(0, batch, 0) / batch + p.perf.c_prefill_s * prompt_mean
        total += cluster.replicas / per_request_s
    return total


def _p90(frame: pd.DataFrame) -> float:
    ok = frame.loc[frame["status"] == "ok", "e2e_s"]
    return float(ok.quantile(_P90)) if len(ok) else math.nan


def sim_p90_e2e_s(scenario: Any, policy: str, *, requests: int, seed: int | None = None) -> float:
    """p90 E2E (s) of the requests that finished ok, in the simulator."""
    from publicai_lab.sim.run import simulate

    return _p90(simulate(scenario, policy=policy, requests=requests, seed=seed, progress=False).requests)


def live_p90_e2e_s(scenario: Any, policy: str, *, requests: int, seed: int | None = None) -> tuple[float, int]:
    """(p90 E2E in s of the ok requests, number not ok) through our gateway and emulated backends.

    One fresh :class:`EmulatedBackend` per cluster (its engine config and perf model), all on one
    event loop in a background thread; a fresh :class:`Gateway` with ``policy`` in front (fresh
    policy state, e.g. round-robin counters); :func:`run_live` replays the scenario's workload
    for ``seed`` through the gateway URL. Fresh servers per run, so no run inherits a queue.
    """
    from publicai_lab.live.emulator import EmulatedBackend, serve_many
    from publicai_lab.live.gateway import BackendSpec, Gateway
    from publicai_lab.live.loadgen import run_live

    ids = [scenario.backend_id(p, c) for p, c in scenario.clusters()]
    backends = [EmulatedBackend.from_scenario(scenario, bid, port=0, host="127.0.0.1") for bid in ids]
    with serve_many(backends) as urls:
        gw = Gateway(scenario, backends=[BackendSpec(bid, url) for bid, url in zip(ids, urls)],
                     policy=policy, api_keys=False, seed=seed)
        with gw.serve(host="127.0.0.1") as url:
            # prompt-length fit from one backend's /tokenize (the gateway does not expose it)
            result = run_live(scenario, url, requests=requests, seed=seed, policy=policy,
                              progress=False, calibrate=urls[0])
    frame = result.requests
    return _p90(frame), int((frame["status"] != "ok").sum())


def _ranks(values: pd.Series) -> pd.Series:
    """1 = lowest p90; equal values share the better rank (ties would make agreement vacuous)."""
    return values.rank(method="min").astype("Int64")


def rank_policies(scenario: Any, policies: Sequence[str], *, requests: int, repeats: int = 1,
                  seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Rank ``policies`` by p90 E2E in the simulator and live; one row per policy.

    ``seeds``: the workload seed of each repeat (default: the scenario's seed, ``repeats``
    times — repeating the *same* requests measures the live run-to-run noise). The simulator is
    deterministic, so it runs once per distinct seed; both sides report the median over repeats.

    Columns: ``policy``, ``sim_p90_e2e_s``, ``live_p90_e2e_s`` (median), ``live_spread``
    ((max − min) / median of the live p90s), ``live_p90_runs_s`` (each repeat's), ``live_not_ok``
    (requests that did not finish ok, all repeats), ``sim_rank``, ``live_rank`` (1 = best).
    """
    if not policies:
        raise ValueError("policies: give at least one policy name")
    run_seeds = [int(s) for s in seeds] if seeds is not None else [int(scenario.seed)] * int(repeats)
    if not run_seeds:
        raise ValueError("repeats must be >= 1 (or give seeds)")
    sim_cache: dict[tuple[str, int], float] = {}
    rows = []
    for policy in policies:
        sim_runs, live_runs, not_ok = [], [], 0
        for seed in run_seeds:
            key = (policy, seed)
            if key not in sim_cache:
                sim_cache[key] = sim_p90_e2e_s(scenario, policy, requests=requests, seed=seed)
            sim_runs.append(sim_cache[key])
            p90, bad = live_p90_e2e_s(scenario, policy, requests=requests, seed=seed)
            live_runs.append(p90)
            not_ok += bad
        live = pd.Series(live_runs, dtype="float64")
        median = float(live.median())
        rows.append({
            "policy": policy,
            "sim_p90_e2e_s": float(pd.Series(sim_runs, dtype="float64").median()),
            "live_p90_e2e_s": median,
            "live_spread": float((live.max() - live.min()) / median) if median > 0 else math.nan,
            "live_p90_runs_s": tuple(live_runs),
            "live_not_ok": not_ok,
        })
    table = pd.DataFrame(rows)
    table["sim_rank"] = _ranks(table["sim_p90_e2e_s"])
    table["live_rank"] = _ranks(table["live_p90_e2e_s"])
    return table


def rankings_agree(table: pd.DataFrame) -> bool:
    """True when every policy has the same rank in the simulator as live (and none is missing)."""
    if table[["sim_rank", "live_rank"]].isna().to_numpy().any():
        return False
    return bool((table["sim_rank"] == table["live_rank"]).all())
