"""Issue 4's fidelity check at one load level, against a REAL vLLM server behind our gateway.

One server, said plainly: of the session's two servers, server 1 keeps CPU 1 for its engine core
and worker, its API server moves to CPU 0, server 0 is stopped (its core is now the client's),
and this test process (gateway + load generator) is pinned to CPU 0 — the set-up that makes a
CPU vLLM server repeat (docs/fidelity.md). The server is calibrated (FULL sweep) on the spot, its
saturation measured, and toy.yaml's workload replayed at 25 % of it three times live and once in
the simulator.

What this can hold the simulator to here is a gross-error guard: every error within 40 % plus the
live spread. The strict criterion (E2E p50/p90 within 10 %, TTFT p50 within 15 %, where the live
repeats agree within 10 %) does not hold reliably on this shared 2-core VM and is reported, not
asserted: the engine's speed drifts between the calibration and the replay a minute later, so at
this level the error has ranged from +13 % to −25 % on E2E p50 (−32 … +9 % on p90, −25 … +36 % on
TTFT) over seven runs, once −25 % beside a 3 % live spread (docs/fidelity.md, and
``benchmarks/fidelity.py`` for the strict verdicts). The guard fails on a model as wrong as the
simulator was before the API server moved off the engine's core (2–3× too fast: −50 … −67 %).

The engine's own speed during the repeats (vLLM's inter-token latency in ``/metrics``) is read too,
and the simulation rerun at that speed must be within 15 % plus the live spread on E2E p50 and p90
and TTFT p50: that holds the model (batching, queueing, the frontend) to a real bound with the
machine's drift taken out.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from publicai_lab import load_scenario
from publicai_lab.live.calibrate import FULL, calibrate
from publicai_lab.live.fidelity import fidelity_table, one_server_scenario
from publicai_lab.live.gateway import BackendSpec, Gateway

from .conftest import SERVED_MODEL_NAME

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
#: the guard: larger than any error seen at this level on this machine (E2E 25–32 %, TTFT 36 %
#: beside a 41 % spread), smaller than the error of the model before the set-up change (50–67 %)
GROSS_ERROR = 0.40
#: the bound at the engine's measured speed (the drift taken out): the model's own error
CONDITIONED_ERROR = 0.15


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs one core for the engine, one for the client")
def test_calibrated_simulator_matches_a_real_server_at_a_quarter_of_saturation(vllm_servers):
    client_cpu, engine_cpu = sorted(os.sched_getaffinity(0))[:2]
    server, other = vllm_servers[1], vllm_servers[0]
    assert server.cpus == str(engine_cpu)
    affinity = os.sched_getaffinity(0)
    other.stop()
    server.move_api_server(client_cpu)
    os.sched_setaffinity(0, {client_cpu})
    try:
        cal = calibrate(server.base_url, SERVED_MODEL_NAME, **FULL)
        print(cal)
        scenario = one_server_scenario(load_scenario(ROOT / "scenarios" / "toy.yaml"), cal.model)
        backend_id = scenario.backend_id(*scenario.clusters()[0])
        gateway = Gateway(scenario, backends=[BackendSpec(backend_id, server.base_url, model=SERVED_MODEL_NAME)])
        with gateway.serve() as url:
            result = fidelity_table(scenario, url, levels=(0.25,), requests=300, repeats=3, log=print,
                                    engine_url=server.base_url)
    finally:
        os.sched_setaffinity(0, affinity)
        server.move_api_server(engine_cpu)     # back to the whole server on its own core
        server.api_cpus = None
    print(result.to_markdown())
    t = result.table.set_index("metric")
    assert cal.r2 > 0.8, cal
    assert 20 < result.saturation_rps < 300, result.saturation_rps   # the tiny model on one core
    bound = GROSS_ERROR + t["live_spread"]
    assert (t["rel_error"].abs() <= bound).all(), result.to_markdown()
    # the engine's own inter-token latency was read from vLLM's /metrics around every repeat, and at
    # that measured speed the model's E2E (batching, queueing) must be close: conditioned E2E errors
    # were -7.5 ... +6.6 % in seven runs at this level (docs/fidelity.md §4). TTFT too, now that the
    # frontend's latency grows with the streams it serves (request_overhead_per_stream_s, measured by
    # the calibration beside 0-15 running streams): at the measured speed -8.9 ... +12.4 % at this level
    # in runs P-T, where the model without that term gave -33 ... +0.3 % (docs/fidelity.md §6)
    assert [lvl["others"] for lvl in cal.meta["stream_probe_levels"]] == [0, 1, 3, 7, 15], cal.meta
    assert len(result.levels[0.25].engine_itls_s) == 3, result.to_markdown()
    assert abs(t.loc["e2e_p50_s", "engine_drift"]) < 1.0, result.to_markdown()
    judged = t.loc[["e2e_p50_s", "e2e_p90_s", "ttft_p50_s"]]
    assert (judged["conditioned_error"].abs() <= CONDITIONED_ERROR + judged["live_spread"]).all(), \
        result.to_markdown()
