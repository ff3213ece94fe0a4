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
