"""Issue 4's fidelity check at one load level, against a REAL vLLM server behind our gateway.

One server, said plainly: of the session's two servers, server 1 keeps CPU 1 for its engine core
and worker, its API server moves to CPU 0, server 0 is stopped (its core is now the client's),
and this test process (gateway + load generator) is pinned to CPU 0 — the set-up that makes a
CPU vLLM server repeat (docs/fidelity.md). The server is calibrated (FULL sweep) on the spot, its
saturation measured, and toy.yaml's workload replayed at 25 % of it three times live and once in
the simulator. Every metric's error must be within its tolerance (E2E p50/p90 10 %, TTFT p50 15 %)
*plus* the live spread: on this shared VM the repeats of a real CPU server differ by 8–38 %
(docs/fidelity.md), so the live median itself is only known to about that, and a test held to the
bare tolerance failed on a 0.5-point miss beside a 10.6 % spread. What this catches is a model
that is off by more than tolerance and noise together — as the simulator was (2–3× too fast)
before the API server moved off the engine's core. The strict verdict (bare tolerance where the
repeats agree within 10 %) is what ``benchmarks/fidelity.py`` reports, over four load levels. This file runs last in the live suite (alphabetical), so the stopped server costs no
restart unless another test follows.
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
            result = fidelity_table(scenario, url, levels=(0.25,), requests=300, repeats=3, log=print)
    finally:
        os.sched_setaffinity(0, affinity)
        server.move_api_server(engine_cpu)     # back to the whole server on its own core
        server.api_cpus = None
    print(result.to_markdown())
    t = result.table.set_index("metric")
    assert cal.r2 > 0.8, cal
    assert 20 < result.saturation_rps < 300, result.saturation_rps   # the tiny model on one core
    bound = t["tolerance"] + t["live_spread"]
    assert (t["rel_error"].abs() <= bound).all(), result.to_markdown()
