"""Small scenario dicts for tests: one partner, one cluster, an inline perf model, no network."""

from __future__ import annotations

import copy
from typing import Any


def single_cluster(*, replicas: int = 1, max_num_seqs: int = 1, c0_s: float = 0.01,
                   rate_per_s: float = 50.0, prompt: dict | None = None, output: dict | None = None,
                   requests: int = 1000, seed: int = 1, policy: str = "least_in_flight",
                   gateway: dict | None = None, **extra: Any) -> dict:
    d: dict[str, Any] = {
        "name": "test-single",
        "seed": seed,
        "requests": requests,
        "models": {"tiny": {"spec": "tiny-llama"}},
        "partners": [{
            "name": "p", "country": "CH",
            "clusters": [{
                "name": "c", "region": "eu", "hardware": "H100-SXM", "gpus": replicas,
                "replicas": replicas, "tensor_parallel": 1, "model": "tiny",
                "engine": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": 8192,
                           "kv_cache_tokens": 1_000_000},
                "perf_model": {"c0_s": c0_s},
            }],
        }],
        "network": {"rtt_ms": {}, "default_rtt_ms": 0.0, "gateway_overhead_ms": 0.0, "hf_router_rtt_ms": 0.0},
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": rate_per_s},
            "prompt_tokens": prompt or {"kind": "fixed", "value": 16},
            "output_tokens": output or {"kind": "fixed", "value": 100},
            "models": {"tiny": 1.0},
        },
        "gateway": {"policy": {"name": policy}, "timeout_s": 1e9, **(gateway or {})},
    }
    d.update(copy.deepcopy(extra))
    return d


def two_partners(*, requests: int = 400, rate_per_s: float = 20.0, policy: str = "round_robin",
                 seed: int = 3, gateway: dict | None = None, faults: list | None = None,
                 workload: dict | None = None, c0_s: float = 0.01, rtt_ms: float = 0.0,
                 **extra: Any) -> dict:
    """Two partners (CH and SG), one single-replica cluster each, the same model, fixed lengths."""
    def cluster(name: str, region: str) -> dict:
        return {"name": name, "region": region, "hardware": "H100-SXM", "gpus": 1, "replicas": 1,
                "tensor_parallel": 1, "model": "tiny",
                "engine": {"max_num_seqs": 8, "max_num_batched_tokens": 4096, "kv_cache_tokens": 200_000},
                "perf_model": {"c0_s": c0_s}}
    wl = {
        "arrivals": {"kind": "poisson", "rate_per_s": rate_per_s},
        "prompt_tokens": {"kind": "fixed", "value": 16},
        "output_tokens": {"kind": "fixed", "value": 20},
        "models": {"tiny": 1.0},
        "client_regions": {"eu": {"share": 1.0}},
    }
    wl.update(workload or {})
    d: dict[str, Any] = {
        "name": "test-two", "seed": seed, "requests": requests,
        "models": {"tiny": {"spec": "tiny-llama"}},
        "partners": [
            {"name": "ch", "country": "CH", "clusters": [cluster("a", "eu")]},
            {"name": "sg", "country": "SG", "clusters": [cluster("b", "ap")]},
        ],
        "network": {"rtt_ms": {}, "default_rtt_ms": rtt_ms, "gateway_overhead_ms": 0.0, "hf_router_rtt_ms": 0.0},
        "workload": wl,
        "gateway": {"policy": {"name": policy}, "timeout_s": 1e6, "health_check_interval_s": 1.0,
                    "scrape_interval_s": 1.0, **(gateway or {})},
        "faults": faults or [],
    }
    d.update(copy.deepcopy(extra))
    return d
