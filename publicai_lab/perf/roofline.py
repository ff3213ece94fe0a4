"""A roofline prior for the step-time model, used when no fitted coefficients exist.

Decode is memory-bound: every step streams the weights (and each sequence's KV cache) from HBM.
Prefill is compute-bound: about 2·params FLOPs per token, plus attention that grows with the square
of the prompt. Efficiencies below were chosen so that the prior reproduces the published fit for
Llama-3.1-8B on one H100 with vLLM 0.8.4 (5.75 ms + 17.25 µs/prefill token + 6.0 µs/decode
sequence): weights 16 GB / (3.35 TB/s · 0.85) = 5.6 ms; 2·8e9 / (989 TFLOP/s · 0.93) = 17.4 µs.
It is a prior, not a measurement: calibrate against the real server when you can.
"""

from __future__ import annotations

from typing import Protocol

from publicai_lab.perf.step_time import StepTimeModel

__all__ = ["roofline_prior", "MEMORY_EFFICIENCY", "PREFILL_COMPUTE_EFFICIENCY"]

MEMORY_EFFICIENCY = 0.85            # achieved / peak HBM bandwidth when streaming weights
PREFILL_COMPUTE_EFFICIENCY = 0.93   # achieved / peak bf16 FLOP/s on large prefill GEMMs
DECODE_SEQ_FACTOR = 0.375           # per-sequence decode compute relative to a prefill token
FIXED_OVERHEAD_S = 0.15e-3          # scheduler + launch overhead per step
TP_ALLREDUCE_S_PER_LAYER = 20e-6    # two all-reduces per layer when tensor-parallel > 1


class _Geometry(Protocol):
    params_b: float
    layers: int
    attention_heads: int
    head_dim: int
    kv_bytes_per_token: float
    weights_bytes: float


class _Hardware(Protocol):
    bf16_tflops: float
    hbm_tb_s: float


def roofline_prior(geometry: _Geometry, hardware: _Hardware, tensor_parallel: int = 1) -> StepTimeModel:
    """Coefficients from model geometry and hardware peak figures, split over ``tensor_parallel`` GPUs."""
    tp = max(1, int(tensor_parallel))
    flops_s = hardware.bf16_tflops * 1e12 * tp
    bandwidth_bytes_s = hardware.hbm_tb_s * 1e12 * tp * MEMORY_EFFICIENCY
    per_token_flops = 2.0 * geometry.params_b * 1e9
    c_prefill = per_token_flops / (flops_s * PREFILL_COMPUTE_EFFICIENCY)
    # causal attention: ~2·layers·heads·head_dim FLOPs per (query, key) pair, half the square
    c_prefill_sq = 2.0 * geometry.layers * geometry.attention_heads * geometry.head_dim / (
        flops_s * PREFILL_COMPUTE_EFFICIENCY)
    c0 = geometry.weights_bytes / bandwidth_bytes_s + FIXED_OVERHEAD_S
    if tp > 1:
        c0 += geometry.layers * TP_ALLREDUCE_S_PER_LAYER
    return StepTimeModel(
        c0_s=c0,
        c_prefill_s=c_prefill,
        c_prefill_sq_s=c_prefill_sq,
        c_decode_s=c_prefill * DECODE_SEQ_FACTOR,
        c_ctx_s=geometry.kv_bytes_per_token / bandwidth_bytes_s,
        source=f"roofline(tp={tp})",
    )
