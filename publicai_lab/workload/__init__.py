"""Workloads: when requests arrive, how long they are, and who sends them.

Reading guide: :mod:`.generate` (scenario → lazy stream of ``RequestSpec``) is the entry point;
:mod:`.arrivals` and :mod:`.lengths` are the vectorised building blocks it draws from;
:mod:`.traces` reads recorded traces (Azure 2023, generic CSV, BurstGPT, Mooncake) into one
``arrival_s, prompt_tokens, output_tokens`` frame. All randomness comes from an injected
``numpy.random.Generator``.
"""

from publicai_lab.workload.arrivals import (
    DEFAULT_CHUNK,
    diurnal_arrivals,
    diurnal_rates_per_s,
    gamma_arrivals,
    poisson_arrivals,
    trace_arrivals,
    trace_arrivals_indexed,
)
from publicai_lab.workload.generate import (
    ARRIVAL_KINDS,
    FROM_SCENARIO,
    generate,
)
from publicai_lab.workload.lengths import (
    LENGTH_KINDS,
    clamp_tokens,
    sample_empirical,
    sample_fixed,
    sample_geometric,
    sample_lengths,
    sample_lognormal,
    sample_uniform,
)
from publicai_lab.workload.traces import (
    TRACE_COLUMNS,
    TRACE_FORMATS,
    read_azure_trace,
    read_burstgpt_trace,
    read_csv_trace,
    read_mooncake_trace,
    read_trace,
)

__all__ = [
    "generate",
    "FROM_SCENARIO",
    "ARRIVAL_KINDS",
    "DEFAULT_CHUNK",
    "poisson_arrivals",
    "gamma_arrivals",
    "diurnal_arrivals",
    "diurnal_rates_per_s",
    "trace_arrivals",
    "trace_arrivals_indexed",
    "LENGTH_KINDS",
    "clamp_tokens",
    "sample_fixed",
    "sample_uniform",
    "sample_lognormal",
    "sample_geometric",
    "sample_empirical",
    "sample_lengths",
    "TRACE_COLUMNS",
    "TRACE_FORMATS",
    "read_trace",
    "read_azure_trace",
    "read_csv_trace",
    "read_burstgpt_trace",
    "read_mooncake_trace",
]
