"""The gateway in front of emulated vLLM backends (vLLM's metric names, real-time token timing).

Checks what needs a vLLM-like backend rather than a bare fake: the scraped engine gauges reach
the policy's snapshots, and a client that leaves mid-stream makes the backend's
``vllm:num_requests_running`` fall back to 0 within a second (the issue's acceptance criterion,
here without a real vLLM).
"""

from __future__ import annotations

import time

import httpx
import pytest

emulator = pytest.importorskip("publicai_lab.live.emulator")

from publicai_lab.live.gateway import BackendSpec, Gateway  # noqa: E402
from publicai_lab.live.metrics import engine_gauges  # noqa: E402

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def running(url: str) -> int:
    return engine_gauges(httpx.get(url + "/metrics", timeout=5).text).running


def test_gauges_reach_policy_and_disconnect_frees_the_engine() -> None:
    backends = [emulator.EmulatedBackend("emu-model", backend_id=f"e{i}") for i in range(2)]
    with emulator.serve_many(backends) as urls:
        gw = Gateway(backends=[BackendSpec(f"e{i}", u) for i, u in enumerate(urls)], policy="least_kv",
                     scrape_interval_s=0.1)
        by_id = dict(zip(("e0", "e1"), urls))
        with gw.serve() as url:
            r = httpx.post(url + "/v1/chat/completions", json={"model": "emu-model", "max_tokens": 5, **CHAT}, timeout=30)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            body = {"model": "emu-model", "stream": True, "max_tokens": 5000, "ignore_eos": True, **CHAT}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
                it = r.iter_raw()  # keep a reference: a collected iterator closes the connection
                assert next(it).startswith(b"data: ")
                bid = r.headers["x-selected-backend"]
                t_end = time.monotonic() + 3
                while gw._by_id[bid].running != 1:  # the scrape saw the running request
                    assert time.monotonic() < t_end, "engine gauge never scraped"
                    time.sleep(0.02)
                assert running(by_id[bid]) == 1
                snap = gw._by_id[bid].snapshot(gw.now_s(), "default", None)
                assert snap.running == 1 and snap.in_flight == 1 and snap.kv_use > 0
                t_close = time.monotonic()
            while running(by_id[bid]) != 0:
                assert time.monotonic() - t_close < 1.0, "the backend kept generating for a gone client"
                time.sleep(0.02)
            assert gw._by_id[bid].in_flight == 0
