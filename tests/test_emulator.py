"""The emulated vLLM backend: OpenAI/vLLM wire format, real-time timing from the replica model,
batching, /metrics, fault knobs. No real vLLM; each test starts its own backend in a thread.

Timing assertions are loose on purpose: the machine has 2 shared cores.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from conftest import SCENARIOS_DIR
from publicai_lab.live.emulator import EmulatedBackend, Faults, estimate_tokens, serve_many
from publicai_lab.perf import EngineParams, StepTimeModel


def params(c0_s: float = 0.02, *, max_num_seqs: int = 8, kv_tokens: int = 16_000,
           max_context: int = 4096, **coeffs: float) -> EngineParams:
    return EngineParams(perf=StepTimeModel(c0_s=c0_s, **coeffs), max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=2048, block_size=16, kv_blocks=kv_tokens // 16,
                        enable_chunked_prefill=True, max_context_tokens=max_context)


def chat(max_tokens: int = 10, stream: bool = False, content: str = "hello there friend", **kw):
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": stream, **kw}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def stream_times(client: httpx.Client, body: dict, path: str = "/v1/chat/completions"):
    """(seconds since send, parsed event or '[DONE]') for every SSE event."""
    out = []
    t0 = time.perf_counter()
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                out.append((time.perf_counter() - t0, data if data == "[DONE]" else json.loads(data)))
    return out


def content_times(events) -> list[float]:
    return [t for t, e in events if e != "[DONE]" and e["choices"]
            and (e["choices"][0].get("delta", {}).get("content") or e["choices"][0].get("text"))]


# ---------------------------------------------------------------------- wire format
def test_models_health_and_non_streaming_answers():
    b = EmulatedBackend("m", engine=params(0.001), served_model_names=["m-alias"])
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        models = c.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["m", "m-alias"]
        assert models["data"][0]["max_model_len"] == 4096
        assert c.get("/health").status_code == 200
        r = c.post("/v1/chat/completions", json=chat(7)).json()
        assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
        assert r["choices"][0]["finish_reason"] == "length"
        assert r["choices"][0]["message"]["role"] == "assistant"
        assert len(r["choices"][0]["message"]["content"].split()) == 7
        assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10,
                              "prompt_tokens_details": None}
        r = c.post("/v1/completions", json={"model": "m-alias", "prompt": "one two three four",
                                            "max_tokens": 5}).json()
        assert r["object"] == "text_completion" and r["model"] == "m-alias"
        assert r["usage"]["prompt_tokens"] == 4 and r["usage"]["completion_tokens"] == 5
        r = c.post("/v1/completions", json={"model": "m", "prompt": list(range(33)), "max_tokens": 2}).json()
        assert r["usage"]["prompt_tokens"] == 33       # token ids are counted exactly
        tok = c.post("/tokenize", json={"model": "m", "messages": [{"role": "user", "content": "a b c"}]})
        assert tok.json()["count"] == 3


def test_streaming_chunks_follow_vllm_format():
    b = EmulatedBackend("m", engine=params(0.001))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        events = stream_times(c, chat(5, stream=True))
        payloads = [e for _, e in events]
        assert payloads[-1] == "[DONE]"
        first, *tokens, usage, _ = payloads
        assert first["object"] == "chat.completion.chunk"
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert len(tokens) == 5
        assert all(t["choices"][0]["finish_reason"] is None for t in tokens[:-1])
        assert tokens[-1]["choices"][0]["finish_reason"] == "length"
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
        assert len({p["id"] for p in payloads[:-1]}) == 1
        # completions stream, no usage requested: no usage chunk
        body = {"model": "m", "prompt": "hi", "max_tokens": 3, "stream": True}
        payloads = [e for _, e in stream_times(c, body, "/v1/completions")]
        assert [p["choices"][0]["text"] != "" for p in payloads[:-1]] == [True] * 3
        assert payloads[-2]["choices"][0]["finish_reason"] == "length" and payloads[-1] == "[DONE]"


def test_bad_requests_get_openai_errors():
    b = EmulatedBackend("m", engine=params(0.001, max_context=100))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()
        r = c.post("/v1/chat/completions", json={**chat(5), "model": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == 404
        r = c.post("/v1/chat/completions", json=chat(99))
        assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": "x"})
        assert r.status_code == 400


def test_openai_sdk_talks_to_the_emulator():
    openai = pytest.importorskip("openai")
    b = EmulatedBackend("m", engine=params(0.001))
    with b.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
        text, usage = "", None
        for chunk in client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=6, stream=True,
                                                    stream_options={"include_usage": True}):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert len(text.split()) == 6 and usage.completion_tokens == 6
        r = client.completions.create(model="m", prompt="a b", max_tokens=3)
        assert r.usage.prompt_tokens == 2 and len(r.choices[0].text.split()) == 3
        assert [m.id for m in client.models.list()] == ["m"]


# ---------------------------------------------------------------------- timing from the perf model
def test_stream_timing_follows_the_perf_model():
    # c0 = 20 ms per step: first token after one prefill step, then one token per 20 ms step
    b = EmulatedBackend("m", engine=params(0.02))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        c.get("/health")                                     # warm the connection
        times = content_times(stream_times(c, chat(10, stream=True)))
        assert len(times) == 10
        assert 0.015 <= times[0] <= 0.06
        assert 0.19 <= times[-1] <= 0.26                      # 10 steps x 20 ms
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        assert 0.014 <= gaps[len(gaps) // 2] <= 0.026


def test_concurrent_streams_share_engine_steps():
    b = EmulatedBackend("m", engine=params(0.02))
    with b.serve() as url:
        clients = [httpx.Client(base_url=url, timeout=10) for _ in range(2)]
        for cl in clients:
            cl.get("/health")
        spans: list[list[float]] = []

        def one(k: int) -> None:
            spans.append(content_times(stream_times(clients[k], chat(20, stream=True))))

        threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for cl in clients:
            cl.close()
        # batched: each stream gets its first token within a step or two and all 20 after ~21
        # steps (0.42 s); served one after the other, the second would wait 0.4 s for its first
        assert [len(s) for s in spans] == [20, 20]
        assert max(s[0] for s in spans) < 0.2
        assert max(s[-1] for s in spans) < 0.58


def test_metrics_gauges_move_while_requests_run():
    b = EmulatedBackend("m", engine=params(0.02, max_num_seqs=2))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        def gauges() -> dict[str, float]:
            out = {}
            for line in c.get("/metrics").text.splitlines():
                if line.startswith("vllm:") and "_bucket" not in line:
                    name, value = line.rsplit(" ", 1)
                    out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
            return out

        assert gauges()["vllm:num_requests_running"] == 0
        clients = [httpx.Client(base_url=url, timeout=10) for _ in range(3)]
        threads = [threading.Thread(target=lambda k=k: clients[k].post("/v1/chat/completions", json=chat(25)))
                   for k in range(3)]
        for t in threads:
            t.start()
        # the third arrival waits for good; a second one waits only until the step in progress ends
        deadline = time.monotonic() + 2.0
        g = gauges()
        while (g["vllm:num_requests_running"], g["vllm:num_requests_waiting"]) != (2, 1) \
                and time.monotonic() < deadline:
            time.sleep(0.005)
            g = gauges()
        assert g["vllm:num_requests_running"] == 2           # max_num_seqs = 2 ...
        assert g["vllm:num_requests_waiting"] == 1           # ... so the third waits
        assert 0 < g["vllm:kv_cache_usage_perc"] < 1
        for t in threads:
            t.join()
        for cl in clients:
            cl.close()
        g = gauges()
        assert g["vllm:num_requests_running"] == 0 and g["vllm:kv_cache_usage_perc"] == 0
        assert g["vllm:generation_tokens_total"] == 75 and g["vllm:request_success_total"] == 3
        assert g["vllm:prompt_tokens_total"] == 9
        assert g["vllm:time_to_first_token_seconds_count"] == 3
        assert g["vllm:e2e_request_latency_seconds_count"] == 3
        assert g["vllm:e2e_request_latency_seconds_sum"] > 3 * 0.45


def test_client_disconnect_aborts_the_sequence():
    b = EmulatedBackend("m", engine=params(0.02))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        with c.stream("POST", "/v1/chat/completions", json=chat(200, stream=True)) as r:
            lines = r.iter_lines()
            got = 0
            for line in lines:
                got += line.startswith("data: ")
                if got >= 3:
                    break
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            if 'vllm:num_requests_running{engine="0",model_name="m"} 0.0' in text:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the aborted stream is still running")


# ---------------------------------------------------------------------- faults
def test_error_rate_and_per_request_stall():
    b = EmulatedBackend("m", engine=params(0.001), faults=Faults(error_rate=1.0))
    with b.serve() as url:
        r = httpx.post(url + "/v1/chat/completions", json=chat(3), timeout=10)
        assert r.status_code == 500 and r.json()["error"]["code"] == 500
    b = EmulatedBackend("m", engine=params(0.001), faults=Faults(stall_rate=1.0, stall_s=0.3))
    with b.serve() as url:
        t = time.perf_counter()
        assert httpx.post(url + "/v1/chat/completions", json=chat(3), timeout=10).status_code == 200
        assert time.perf_counter() - t >= 0.3


def test_engine_stall_delays_running_streams():
    b = EmulatedBackend("m", engine=params(0.02))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        times = []
        t0 = time.perf_counter()
        with c.stream("POST", "/v1/chat/completions", json=chat(10, stream=True)) as r:
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    times.append(time.perf_counter() - t0)
                    if len(times) == 3:
                        b.call(b.stall, 0.3)                     # freeze the engine mid-stream
        assert len(times) == 10
        gaps = [y - x for x, y in zip(times, times[1:])]
        assert max(gaps) >= 0.25                               # the freeze shows as one long gap
        assert 0.45 <= times[-1] <= 0.75                      # 0.2 s of steps + 0.3 s frozen


def test_engine_stall_at_a_time_after_start():
    b = EmulatedBackend("m", engine=params(0.02), faults=Faults(stall_at_s=0.0, engine_stall_s=0.5))
    with b.serve():
        assert b.call(lambda: b.engine.stalled)
        time.sleep(0.6)
        assert not b.call(lambda: b.engine.stalled)


def test_slow_start_then_ready():
    b = EmulatedBackend("m", engine=params(0.001), faults=Faults(slow_start_s=0.4))
    with b.serve() as url:
        assert httpx.get(url + "/health").status_code == 503
        assert httpx.post(url + "/v1/chat/completions", json=chat(2)).status_code == 503
        time.sleep(0.45)
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json=chat(2)).status_code == 200


def test_crash_after_n_requests_then_restart():
    b = EmulatedBackend("m", engine=params(0.001), faults=Faults(crash_after=2))
    with b.serve() as url:
        for _ in range(2):
            assert httpx.post(url + "/v1/chat/completions", json=chat(2), timeout=5).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.post(url + "/v1/chat/completions", json=chat(2), timeout=5)
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)              # port closed
        assert b.crashes == 1
        assert b.restart() == url                             # same port, fresh engine
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.post(url + "/v1/chat/completions", json=chat(2), timeout=5).status_code == 200


def test_crash_drops_streams_in_flight_and_auto_restarts():
    b = EmulatedBackend("m", engine=params(0.02), faults=Faults(restart_after_s=0.3))
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        threading.Timer(0.1, b.crash).start()
        with pytest.raises(httpx.TransportError):
            stream_times(c, chat(50, stream=True))
        time.sleep(0.4)
        assert httpx.get(url + "/health", timeout=2).status_code == 200
        text = httpx.get(url + "/metrics").text                # a restarted engine starts from zero
        assert 'vllm:request_success_total{engine="0",model_name="m",finished_reason="length"} 0.0' in text


# ---------------------------------------------------------------------- scale and configuration
def test_zero_latency_and_many_backends_in_one_process():
    backends = [EmulatedBackend(f"m{k}", zero_latency=True) for k in range(3)]
    with serve_many(backends) as urls, httpx.Client(timeout=10) as c:
        assert len(set(urls)) == 3
        for k, url in enumerate(urls):
            body = {**chat(16, stream=True), "model": f"m{k}"}
            t = time.perf_counter()
            events = []
            with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                events = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
            assert time.perf_counter() - t < 0.2
            assert len(events) == 1 + 16 + 1 + 1                  # role, tokens, usage, [DONE]


def test_backend_from_scenario_cluster():
    b = EmulatedBackend.from_scenario(SCENARIOS_DIR / "toy.yaml", "local/cpu")
    assert b.replicas == 2 and b.names == ("publicai-lab/tiny-llama", "tiny-llama")
    assert b.params.perf.c0_s == 0.0025 and b.params.max_num_seqs == 32
    with b.serve() as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/chat/completions", json={**chat(4), "model": "tiny-llama"})
        assert r.status_code == 200
        text = c.get("/metrics").text
        assert 'engine="1",model_name="publicai-lab/tiny-llama"' in text


def test_prompt_token_estimate():
    assert estimate_tokens("") == 0
    assert estimate_tokens("the cat sat") == 3
    assert estimate_tokens("x" * 60) == 10                    # unbroken text: one per six characters


def test_token_progress_hooks_agree_with_the_replica():
    """tokens_out / next_step_s read the replica's decode runs the way the replica itself counts."""
    import simpy

    from publicai_lab.live.emulator_engine import next_step_s, tokens_out
    from publicai_lab.sim.replica import Replica

    env = simpy.Environment()
    done = []
    rep = Replica(env, params(0.01, c_ctx_s=1e-5), name="r", on_finish=lambda s, t: done.append(t),
                  on_reject=lambda s, t: None)
    seq = rep.add("a", 10, 10)
    seen = []
    for k in range(1, 200):
        env.run(until=k * 0.001 + 1e-12)
        if done:
            break
        seen.append((env.now, tokens_out(rep, seq, env.now)))
    # first token after the prefill step, then one per ~10 ms decode step; the 10th token is the
    # finish event itself (the engine reports the whole count once the sequence is done)
    assert [n for t, n in seen if t < 0.01 - 1e-9] == [0] * 9
    counts = [n for _, n in seen]
    assert counts == sorted(counts) and set(counts) == set(range(10))
    assert done[0] == pytest.approx(0.01 + sum(0.01 + 1e-5 * (10 + i) for i in range(1, 10)), rel=1e-6)
    # step ends reported ahead of time match when the count moves
    env2 = simpy.Environment()
    rep2 = Replica(env2, params(0.01, c_ctx_s=1e-5), name="r", on_finish=lambda s, t: None,
                   on_reject=lambda s, t: None)
    seq2 = rep2.add("b", 10, 10)
    env2.run(until=0.0105)
    nxt = next_step_s(rep2, env2.now)
    before = tokens_out(rep2, seq2, env2.now)
    env2.run(until=nxt - 1e-6)
    assert tokens_out(rep2, seq2, env2.now) == before
    env2.run(until=nxt + 1e-9)
    assert tokens_out(rep2, seq2, env2.now) == before + 1


def test_kv_cache_limit_queues_and_preempts():
    # 64 KV tokens (4 blocks): two sequences growing to 20 + 40 tokens cannot both stay resident
    import asyncio

    b = EmulatedBackend("m", engine=params(0.01, kv_tokens=64))
    with b.serve() as url:
        body = chat(40, content=" ".join(["w"] * 20))

        async def both() -> float:
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                await c.get("/health")
                t0 = time.perf_counter()
                rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(2)))
                assert [r.status_code for r in rs] == [200, 200]
                return time.perf_counter() - t0

        elapsed = asyncio.run(both())
        text = httpx.get(url + "/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("vllm:num_preemptions_total"))
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert elapsed > 0.55             # more than one 40-step run of 10 ms: the cache serialised them
