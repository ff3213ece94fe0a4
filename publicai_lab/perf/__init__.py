"""The vLLM replica performance model: step time and KV-cache capacity.

``engine_params_for(scenario, partner, cluster)`` is what the simulator calls: it resolves the
cluster's perf model (a fit file from ``data/perf_models/``, inline coefficients, or the roofline
prior) and the KV capacity in blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from publicai_lab.perf.kv_cache import GIB, kv_capacity_tokens
from publicai_lab.perf.roofline import roofline_prior
from publicai_lab.perf.step_time import StepTimeModel, load_perf_model_file

__all__ = ["StepTimeModel", "roofline_prior", "kv_capacity_tokens", "load_perf_model",
           "EngineParams", "engine_params_for", "perf_models_dir", "perf_model_file", "GIB"]


def perf_models_dir() -> Path:
    from publicai_lab._data import DATA_DIR
    return Path(DATA_DIR) / "perf_models"


def perf_model_file(name_or_path: str | Path) -> Path:
    """The JSON file of a fit given by name (``data/perf_models/NAME.json``) or by path."""
    p = Path(name_or_path)
    return p if p.suffix == ".json" else perf_models_dir() / f"{name_or_path}.json"


def load_perf_model(name_or_path: str | Path) -> StepTimeModel:
    """A fit by name (``data/perf_models/NAME.json``) or by path."""
    return load_perf_model_file(perf_model_file(name_or_path))


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Everything a simulated replica needs, resolved from the scenario."""

    perf: StepTimeModel
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    kv_blocks: int
    enable_chunked_prefill: bool
    max_context_tokens: int


def engine_params_for(scenario: Any, partner: Any, cluster: Any) -> EngineParams:
    model = scenario.models[scenario.resolve_model(cluster.model)]
    geometry = model.geometry
    hardware = scenario.hardware[cluster.hardware]
    pm = cluster.perf_model
    if pm is None:
        perf = roofline_prior(geometry, hardware, cluster.tensor_parallel)
    elif isinstance(pm, str):
        perf = load_perf_model(pm)
    else:
        perf = StepTimeModel(c0_s=pm.c0_s, c_prefill_s=pm.c_prefill_s, c_prefill_sq_s=pm.c_prefill_sq_s,
                             c_decode_s=pm.c_decode_s, c_ctx_s=pm.c_ctx_s,
                             request_overhead_s=pm.request_overhead_s,
                             frontend_busy_s=pm.frontend_busy_s,
                             request_overhead_per_stream_s=pm.request_overhead_per_stream_s, source="inline")
    eng = cluster.engine
    if eng.kv_cache_tokens is not None:
        tokens = int(eng.kv_cache_tokens)
    else:
        tokens = kv_capacity_tokens(
            memory_gib=hardware.memory_gib, gpu_memory_utilization=eng.gpu_memory_utilization,
            tensor_parallel=cluster.tensor_parallel, weights_bytes=geometry.weights_bytes,
            kv_bytes_per_token=geometry.kv_bytes_per_token,
            where=f"partners[{partner.name}].clusters[{cluster.name}]")
    return EngineParams(
        perf=perf,
        max_num_seqs=eng.max_num_seqs,
        max_num_batched_tokens=eng.max_num_batched_tokens,
        block_size=eng.block_size,
        kv_blocks=max(1, tokens // eng.block_size),
        enable_chunked_prefill=eng.enable_chunked_prefill,
        max_context_tokens=geometry.max_context_tokens,
    )
