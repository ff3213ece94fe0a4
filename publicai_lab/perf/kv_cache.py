"""KV-cache capacity of one vLLM engine: what is left of GPU memory after the weights.

    tokens = (memory · gpu_memory_utilization · TP − weights) / KV bytes per token

vLLM also reserves activation memory at start-up (profiled); we ignore it, so this is an upper
bound. ``kv_cache_tokens`` in the engine config overrides the computation (tests, CPU servers).
"""

from __future__ import annotations

from publicai_lab.errors import ScenarioError

__all__ = ["kv_capacity_tokens", "GIB"]

GIB = 1024 ** 3


def kv_capacity_tokens(*, memory_gib: float, gpu_memory_utilization: float, tensor_parallel: int,
                       weights_bytes: float, kv_bytes_per_token: float, where: str = "cluster") -> int:
    usable = memory_gib * GIB * gpu_memory_utilization * tensor_parallel - weights_bytes
    if usable <= 0:
        raise ScenarioError.at(None, where, f"{memory_gib} GiB × {tensor_parallel} GPUs",
                               f"the model's {weights_bytes / GIB:.1f} GiB of weights do not fit; "
                               "raise tensor_parallel or gpu_memory_utilization")
    return int(usable // kv_bytes_per_token)
