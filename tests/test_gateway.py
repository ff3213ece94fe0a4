"""The live gateway against scriptable fake backends (no vLLM): routing, streaming, errors, failover.

Every fake backend is a small raw-ASGI app served by uvicorn in a background thread on a free
127.0.0.1 port; the gateway runs the same way (``Gateway.serve``). The fakes record what reached
them, so the bad-input tests can assert that nothing did. One test also drives the real CLI and
the shared benchmark's ``fake_backend.py`` as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from publicai_lab import policies
from publicai_lab.errors import GatewayError
from publicai_lab.live.auth import KeyStore, RateLimiter, load_api_keys
from publicai_lab.live.gateway import BackendSpec, Gateway, add_cli
from publicai_lab.live.prom import Counter, Histogram, render
from publicai_lab.live.upstream import Origin
from publicai_lab.scenario import load_scenario
from publicai_lab.types import RouteDecision

ROOT = Path(__file__).resolve().parent.parent
SHARED_FAKE = ROOT.parent / "shared" / "bench" / "gateway" / "fake_backend.py"

HUB_ID = "swiss-ai/Apertus-8B-Instruct-2509"
PROVIDER_ID = "swiss-ai/apertus-8b-instruct"
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


# --------------------------------------------------------------------------------------------
# helpers: servers in threads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:port in a daemon thread; restartable on the same port."""

    def __init__(self, app: Any, port: int) -> None:
        self.app, self.port = app, port
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        cfg = uvicorn.Config(self.app, lifespan="off", log_level="error", access_log=False, interface="asgi3",
                             timeout_keep_alive=5)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        t_end = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < t_end, "fake backend did not start"
            time.sleep(0.005)
        self._sock = sock

    def stop(self) -> None:
        if self.server is None:
            return
        self.server.should_exit = True
        self.server.force_exit = True
        self.thread.join(10)
        self._sock.close()
        self.server = None


class FakeBackend:
    """A scriptable vLLM-like backend. Knobs are plain attributes, changed by tests at any time."""

    def __init__(self, served: str = "served-model", *, chunks: int = 4) -> None:
        self.served = served
        self.chunks = chunks
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.posts: list[dict] = []          # every POST: {"path", "body", "headers"}
        self.health_status = 200
        self.fail_status: int | None = None  # answer POSTs with this status
        self.delay_s = 0.0                   # before answering (or before the first chunk)
        self.chunk_delay_s = 0.0
        self.gate: threading.Event | None = None  # a stream pauses after its first chunk until set
        self.stream_finished = threading.Event()
        self.disconnected = threading.Event()  # a client went away while a stream was open
        self.disconnected_at: float | None = None
        self.metrics_text: str | None = None
        self.in_progress = 0
        self.max_in_progress = 0
        self._srv = ServerThread(self.app, self.port)

    # lifecycle
    def start(self) -> "FakeBackend":
        self._srv.start()
        return self

    def stop(self) -> None:
        self._srv.stop()

    @property
    def chat_posts(self) -> list[dict]:
        return [p for p in self.posts if p["path"].endswith("completions")]

    async def app(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]

        async def reply(status: int, body: bytes, ctype: bytes = b"application/json") -> None:
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
            await send({"type": "http.response.body", "body": body})

        if method == "GET" and path == "/health":
            await reply(self.health_status, b"")
            return
        if method == "GET" and path == "/v1/models":
            await reply(200, json.dumps({"object": "list", "data": [{"id": self.served, "object": "model"}]}).encode())
            return
        if method == "GET" and path == "/metrics":
            if self.metrics_text is None:
                await reply(404, b"not found", b"text/plain")
            else:
                await reply(200, self.metrics_text.encode(), b"text/plain")
            return
        if method != "POST":
            await reply(404, b"{}")
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        body = json.loads(raw)
        self.posts.append({"path": path, "body": body, "headers": dict((k.decode(), v.decode())
                                                                        for k, v in scope["headers"])})
        if self.fail_status is not None:
            await reply(self.fail_status, b'{"error": {"message": "fake failure"}}')
            return
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if body.get("stream"):
                await self._stream(body, receive, send)
            else:
                kind = "chat.completion" if "chat" in path else "text_completion"
                out = {"id": f"cmpl-{self.port}-{len(self.posts)}", "object": kind, "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "text": "hi",
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
                await reply(200, json.dumps(out).encode())
        finally:
            self.in_progress -= 1

    async def _stream(self, body: dict, receive: Any, send: Any) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        try:
            for i in range(self.chunks):
                if gone.is_set():
                    self.disconnected_at = time.monotonic()
                    self.disconnected.set()
                    return
                ev = {"object": "chat.completion.chunk", "model": body["model"],
                      "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(ev).encode() + b"\n\n",
                            "more_body": True})
                if i == 0 and self.gate is not None:
                    while not self.gate.is_set() and not gone.is_set():
                        await asyncio.sleep(0.005)
                elif self.chunk_delay_s:
                    for _ in range(int(self.chunk_delay_s / 0.005) + 1):
                        if gone.is_set():
                            break
                        await asyncio.sleep(0.005)
            if gone.is_set():
                self.disconnected_at = time.monotonic()
                self.disconnected.set()
                return
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            self.stream_finished.set()
        finally:
            watcher.cancel()


def vllm_metrics(running: int, waiting: int, kv: float) -> str:
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}\n')


@pytest.fixture
def fakes(request: Any) -> Any:
    """A factory of started fake backends, all stopped at the end of the test."""
    made: list[FakeBackend] = []

    def make(served: str = "served-model", **kw: Any) -> FakeBackend:
        fb = FakeBackend(served, **kw).start()
        made.append(fb)
        return fb

    yield make
    for fb in made:  # stop them together: each takes a uvicorn tick to notice
        if fb._srv.server is not None:
            fb._srv.server.should_exit = fb._srv.server.force_exit = True
    for fb in made:
        fb.stop()


def scenario_for(ch: FakeBackend | str | None, de: FakeBackend | str | None, *, gateway: dict | None = None,
                 workload: dict | None = None, other: FakeBackend | None = None) -> Any:
    """Two partners (CH, DE) serving Apertus-8B; optionally a third cluster serving another model."""
    def url(b: Any) -> str | None:
        return b.url + "/v1" if isinstance(b, FakeBackend) else b

    partners = [
        {"name": "cscs", "country": "CH", "sponsor": "Swiss National Supercomputing Centre",
         "clusters": [{"name": "alps", "region": "eu", "hardware": "H100-SXM", "gpus": 1, "model": HUB_ID,
                       "base_url": url(ch)}]},
        {"name": "jsc", "country": "DE", "sponsor": "Jülich", "clusters": [
            {"name": "jupiter", "region": "eu", "hardware": "H100-SXM", "gpus": 1, "model": PROVIDER_ID,
             "base_url": url(de)}]},
    ]
    if other is not None:
        partners.append({"name": "aws", "country": "US", "clusters": [
            {"name": "small", "region": "us", "hardware": "H100-SXM", "gpus": 1, "model": "tiny-llama",
             "base_url": url(other)}]})
    wl = {"arrivals": {"kind": "poisson", "rate_per_s": 1.0},
          "prompt_tokens": {"kind": "fixed", "value": 16}, "output_tokens": {"kind": "fixed", "value": 16},
          "models": {HUB_ID: 1.0},
          "client_regions": {"default": {"share": 1.0}, "ch": {"share": 1.0, "residency": ["CH"]},
                             "eu": {"share": 1.0, "residency": ["CH", "DE"]}},
          "tiers": {"free": {"share": 1.0, "rpm": 3}, "pro": {"share": 1.0, "rpm": None}}}
    wl.update(workload or {})
    return load_scenario({
        "name": "gw-test", "requests": 10,
        "models": {HUB_ID: {"spec": "apertus-8b", "aliases": [PROVIDER_ID]},
                   "publicai-lab/tiny-llama": {"spec": "tiny-llama", "aliases": ["tiny-llama"]}},
        "partners": partners,
        "workload": wl,
        "gateway": {"policy": "round_robin", "health_check_interval_s": 0.5, "scrape_interval_s": 0.2,
                    **(gateway or {})},
    })


def post(url: str, body: Any, *, path: str = "/v1/chat/completions", headers: dict | None = None,
         raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"content-type": "application/json", **(headers or {})},
                      timeout=10)


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err


def wait_until(cond: Any, timeout_s: float, step_s: float = 0.02) -> float:
    """Seconds until ``cond()`` held (fails the test after ``timeout_s``)."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, "condition not met in time"
        time.sleep(step_s)
    return time.monotonic() - t0


def backend_state(url: str, bid: str) -> dict:
    return httpx.get(url + "/health", timeout=5).json()["backends"][bid]


# --------------------------------------------------------------------------------------------
# happy paths


def test_chat_and_completions_both_modes_with_headers(fakes: Any) -> None:
    ch, de = fakes(), fakes()
    gw = Gateway(scenario_for(ch, de))
    with gw.serve() as url:
        seen = set()
        for i in range(4):
            r = post(url, {"model": HUB_ID, **CHAT})
            assert r.status_code == 200, r.text
            assert r.json()["object"] == "chat.completion"
            bid = r.headers["x-selected-backend"]
            seen.add(bid)
            assert r.headers["x-compute-location"] == {"cscs/alps": "CH", "jsc/jupiter": "DE"}[bid]
            assert r.headers["x-compute-sponsor"] == bid.split("/")[0]
        assert seen == {"cscs/alps", "jsc/jupiter"}  # round robin over both

        r = post(url, {"model": HUB_ID, "prompt": "once upon", "max_tokens": 4}, path="/v1/completions")
        assert r.status_code == 200 and r.json()["object"] == "text_completion"
        assert [p["path"] for p in ch.posts + de.posts].count("/v1/completions") == 1

        for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "x"})):
            with httpx.stream("POST", url + path, json={"model": HUB_ID, "stream": True, **body}, timeout=10) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                assert r.headers["x-selected-backend"] in seen
                text = r.read().decode()
            assert text.count("data: ") == 5 and text.endswith("data: [DONE]\n\n")
    # the upstream request carried the served model name, whatever the client called it
    assert {p["body"]["model"] for p in ch.posts + de.posts} == {"served-model"}


def test_sse_passthrough_is_incremental(fakes: Any) -> None:
    """The first chunk reaches the client while the backend is still holding the rest."""
    fb = fakes()
    fb.gate = threading.Event()
    gw = Gateway(backends=[BackendSpec("only", fb.url)], policy="least_in_flight")
    with gw.serve() as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={"model": "served-model", "stream": True, **CHAT},
                          timeout=10) as r:
            it = r.iter_raw()
            first = next(it)
            assert b"t0" in first
            assert not fb.stream_finished.is_set()  # upstream not finished, yet the client has a chunk
            fb.gate.set()
            rest = b"".join(it)
        assert b"[DONE]" in rest and fb.stream_finished.is_set()


def test_model_aliases_resolve_case_insensitively(fakes: Any) -> None:
    ch, de = fakes("/models/apertus-8b"), fakes("/models/apertus-8b")
    gw = Gateway(scenario_for(ch, de))
    with gw.serve() as url:
        for name in (HUB_ID, PROVIDER_ID, PROVIDER_ID.upper(), "Swiss-AI/apertus-8B-Instruct-2509",
                     "/models/apertus-8b"):
            r = post(url, {"model": name, **CHAT})
            assert r.status_code == 200, (name, r.text)
        ids = {m["id"]: m["root"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert ids[HUB_ID] == HUB_ID and ids[PROVIDER_ID] == HUB_ID and ids["/models/apertus-8b"] == HUB_ID
        assert "tiny-llama" not in ids  # no backend serves it
    # vLLM got the name it serves under
    assert {p["body"]["model"] for p in ch.posts + de.posts} == {"/models/apertus-8b"}
    assert gw.resolve_model("SWISS-AI/APERTUS-8B-INSTRUCT") == HUB_ID


def test_backends_mode_discovers_models(fakes: Any) -> None:
    a, b = fakes("model-a"), fakes("model-b")
    gw = Gateway(backends=[BackendSpec("a", a.url + "/v1"), BackendSpec("b", b.url)], policy="power_of_two")
    with gw.serve() as url:
        assert {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]} == {"model-a", "model-b"}
        assert post(url, {"model": "MODEL-B", **CHAT}).headers["x-selected-backend"] == "b"
        assert post(url, {"model": "model-a", **CHAT}).headers["x-selected-backend"] == "a"
    assert [s.model for s in gw.backends] == ["model-a", "model-b"]


def test_scenario_with_explicit_backend_urls(fakes: Any) -> None:
    """Backends named like scenario clusters take the cluster's partner, country and model."""
    a, extra = fakes(), fakes("other")
    gw = Gateway(scenario_for(None, None), backends=[BackendSpec("jsc/jupiter", a.url),
                                                      BackendSpec("extra", extra.url)])
    with gw.serve() as url:
        r = post(url, {"model": PROVIDER_ID, **CHAT})
        assert r.headers["x-selected-backend"] == "jsc/jupiter" and r.headers["x-compute-location"] == "DE"
        assert post(url, {"model": "other", **CHAT}).headers["x-selected-backend"] == "extra"
    spec = {s.backend_id: s for s in gw.backends}["jsc/jupiter"]
    assert (spec.partner, spec.model, spec.served_model_name) == ("jsc", HUB_ID, "served-model")


def test_residency_from_client_region(fakes: Any) -> None:
    ch, de = fakes(), fakes()
    gw = Gateway(scenario_for(ch, de), policy="random")
    with gw.serve() as url:
        for _ in range(10):
            r = post(url, {"model": HUB_ID, **CHAT}, headers={"X-Client-Region": "ch"})
            assert r.headers["x-compute-location"] == "CH"
        for _ in range(5):
            r = post(url, {"model": HUB_ID, **CHAT}, headers={"X-Residency": "de"})
            assert r.headers["x-compute-location"] == "DE"
        err = assert_openai_error(post(url, {"model": HUB_ID, **CHAT}, headers={"X-Client-Region": "mars"}), 400)
        assert "mars" in err["message"]
        # only CH is allowed and CH goes down: an error (502 until the gateway knows, then 503), never DE
        n_de = len(de.chat_posts)
        ch.stop()
        r = post(url, {"model": HUB_ID, **CHAT}, headers={"X-Client-Region": "ch"})
        assert r.status_code in (502, 503)
        assert_openai_error(post(url, {"model": HUB_ID, **CHAT}, headers={"X-Client-Region": "ch"}), 503)
        assert len(de.chat_posts) == n_de


def test_custom_policy_class_routes_traffic(fakes: Any) -> None:
    """The notebook path: a policy class defined here, not in the package, routes live traffic and
    sees live router state (in-flight counts, scraped engine gauges)."""

    class PreferLast:
        name = "prefer_last"

        def __init__(self) -> None:
            self.views: list = []

        def route(self, req: Any, view: Any, rng: np.random.Generator) -> RouteDecision:
            self.views.append(view)
            ids = sorted(view.ids)
            return RouteDecision(ids[-1], tuple(ids[:-1]), "last id")

    a, b = fakes(), fakes()
    b.metrics_text = vllm_metrics(running=3, waiting=2, kv=0.25)
    policy = PreferLast()
    gw = Gateway(backends=[BackendSpec("x/a", a.url, model="m", served_model_name="served-model", country="CH"),
                           BackendSpec("x/b", b.url, model="m", served_model_name="served-model", country="FR")],
                 policy=policy, scrape_interval_s=0.1)
    with gw.serve() as url:
        for _ in range(5):
            assert post(url, {"model": "m", **CHAT}).headers["x-selected-backend"] == "x/b"
    assert len(b.chat_posts) == 5 and not a.chat_posts
    snap = policy.views[-1].get("x/b")
    assert (snap.running, snap.waiting, snap.kv_use) == (3, 2, 0.25)
    assert snap.country == "FR" and snap.healthy and snap.scraped_at_s > 0
    assert policy.views[-1].get("x/a").scraped_at_s == 0.0  # no /metrics there: never scraped


def test_bad_policy_answer_is_caught(fakes: Any) -> None:
    class Broken:
        name = "broken"

        def route(self, req: Any, view: Any, rng: Any) -> RouteDecision:
            return RouteDecision("no-such-backend")

    fb = fakes()
    gw = Gateway(backends=[BackendSpec("a", fb.url)], policy=Broken())
    with gw.serve() as url:
        r = post(url, {"model": "served-model", **CHAT})
        assert_openai_error(r, 500)
        assert not fb.chat_posts


def test_in_flight_counted_at_dispatch(fakes: Any) -> None:
    """Concurrent requests see each other's in-flight increments (no await between route and count)."""
    seen: list[tuple[int, ...]] = []

    class Recorder(policies.LeastInFlightPolicy):
        def route(self, req: Any, view: Any, rng: Any) -> RouteDecision:
            seen.append(tuple(s.in_flight for s in view.backends))
            return super().route(req, view, rng)

    a, b = fakes(), fakes()
    a.delay_s = b.delay_s = 0.3
    gw = Gateway(backends=[BackendSpec("a", a.url), BackendSpec("b", b.url)], policy=Recorder())
    with gw.serve() as url:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=10) as c:
                return await asyncio.gather(*(c.post(url + "/v1/chat/completions",
                                                     json={"model": "served-model", **CHAT}) for _ in range(8)))

        rs = asyncio.run(burst())
        assert all(r.status_code == 200 for r in rs)
        assert sorted(sum(s) for s in seen) == list(range(8))  # each saw all earlier ones in flight
        assert len(a.chat_posts) == len(b.chat_posts) == 4      # least_in_flight split them evenly
        assert gw._by_id["a"].in_flight == gw._by_id["b"].in_flight == 0


# --------------------------------------------------------------------------------------------
# bad input: 4xx with an OpenAI error body, nothing reaches a backend


BAD_BODIES = [
    (b"{not json", 400, None),
    (b"", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
    (json.dumps({"model": HUB_ID}).encode(), 400, "messages"),
    (json.dumps({"model": HUB_ID, "messages": "hello"}).encode(), 400, "messages"),
    (json.dumps({"model": HUB_ID, "messages": []}).encode(), 400, "messages"),
    (json.dumps({"model": HUB_ID, "messages": ["hello"]}).encode(), 400, "messages[0]"),
    (json.dumps({"model": HUB_ID, "messages": [{"content": "x"}]}).encode(), 400, "messages[0].role"),
    (json.dumps({"model": HUB_ID, "messages": [{"role": "user", "content": 5}]}).encode(), 400,
     "messages[0].content"),
    (json.dumps({"model": 7, **CHAT}).encode(), 400, "model"),
    (json.dumps({"model": HUB_ID, **CHAT, "stream": "yes"}).encode(), 400, "stream"),
    (json.dumps({"model": HUB_ID, **CHAT, "stream": 1}).encode(), 400, "stream"),
    (json.dumps({"model": HUB_ID, **CHAT, "max_tokens": "8"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": HUB_ID, **CHAT, "max_tokens": 8.5}).encode(), 400, "max_tokens"),
    (json.dumps({"model": HUB_ID, **CHAT, "max_tokens": True}).encode(), 400, "max_tokens"),
    (json.dumps({"model": HUB_ID, **CHAT, "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"model": HUB_ID, **CHAT, "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"model": HUB_ID, **CHAT, "n": 0}).encode(), 400, "n"),
    (json.dumps({"model": HUB_ID, **CHAT, "stop": [1]}).encode(), 400, "stop"),
    (json.dumps({"model": HUB_ID, **CHAT, "stream_options": "x"}).encode(), 400, "stream_options"),
    (json.dumps({"model": "no-such-model", **CHAT}).encode(), 404, "model"),
]


def test_bad_input_never_reaches_a_backend(fakes: Any) -> None:
    ch, de = fakes(), fakes()
    gw = Gateway(scenario_for(ch, de))
    with gw.serve() as url:
        for raw, status, param in BAD_BODIES:
            r = post(url, None, raw=raw)
            err = assert_openai_error(r, status)
            assert err["param"] == param, (raw, err)
            if status == 404:
                assert err["code"] == "model_not_found"
        # completions: prompt missing / wrong type
        assert assert_openai_error(post(url, {"model": HUB_ID}, path="/v1/completions"), 400)["param"] == "prompt"
        assert assert_openai_error(post(url, {"model": HUB_ID, "prompt": 3}, path="/v1/completions"),
                                   400)["param"] == "prompt"
        # too large: by Content-Length, and streamed without one
        big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * (10 * 1024 * 1024) + b'"}]}'
        err = assert_openai_error(post(url, None, raw=big), 413)
        assert err["code"] == "request_too_large"

        def chunks() -> Any:
            for i in range(0, len(big), 1 << 20):
                yield big[i:i + (1 << 20)]

        r = httpx.post(url + "/v1/chat/completions", content=chunks(), timeout=20)
        assert_openai_error(r, 413)
        # wrong method / path: JSON errors, not HTML
        assert_openai_error(httpx.get(url + "/v1/chat/completions"), 405)
        assert_openai_error(httpx.post(url + "/v1/nothing", json={}), 404)
        # the gateway is still fine
        assert post(url, {"model": HUB_ID, **CHAT}).status_code == 200
    assert len(ch.chat_posts) + len(de.chat_posts) == 1


def test_auth_tiers_and_rate_limits(fakes: Any, caplog: Any, tmp_path: Path) -> None:
    secret_free, secret_pro, wrong = "sk-free-SECRET-1234", "sk-pro-SECRET-5678", "sk-wrong-SECRET-0000"
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"{secret_free}: free\n{secret_pro}: {{tier: pro, name: carol}}\n")
    ch, de = fakes(), fakes()
    caplog.set_level(logging.DEBUG)
    gw = Gateway(scenario_for(ch, de), api_keys=str(keys_file))
    with gw.serve(log_level="debug") as url:
        body = {"model": HUB_ID, **CHAT}
        err = assert_openai_error(post(url, body), 401)
        assert err["code"] == "missing_api_key"
        err = assert_openai_error(post(url, body, headers={"Authorization": f"Bearer {wrong}"}), 401)
        assert err["code"] == "invalid_api_key" and wrong not in json.dumps(err)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"x-api-key": secret_pro}).status_code == 200
        # free: 3 rpm in this scenario
        for _ in range(3):
            assert post(url, body, headers={"Authorization": f"Bearer {secret_free}"}).status_code == 200
        r = post(url, body, headers={"Authorization": f"Bearer {secret_free}"})
        err = assert_openai_error(r, 429)
        assert err["code"] == "rate_limit_exceeded"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # pro: unlimited here
        for _ in range(6):
            assert post(url, body, headers={"Authorization": f"Bearer {secret_pro}"}).status_code == 200
        metrics = httpx.get(url + "/metrics").text
        health = httpx.get(url + "/health").text
    assert len(ch.chat_posts) + len(de.chat_posts) == 9
    # the gateway never forwards the client's key upstream
    assert not any("SECRET" in json.dumps(p["headers"]) for p in ch.posts + de.posts)
    for secret in (secret_free, secret_pro, wrong):
        assert secret not in caplog.text and secret not in metrics and secret not in health
        assert secret not in repr(gw._keys)
    assert 'publicai_gateway_rate_limited_total{tier="free"} 1' in metrics


def test_api_key_sources(tmp_path: Path) -> None:
    (tmp_path / "k.json").write_text(json.dumps({"sk-a": "pro", "sk-b": {"tier": "free", "name": "bob"}}))
    store = load_api_keys(tmp_path / "k.json")
    assert store.lookup(b"sk-a").tier == "pro" and store.lookup(b"sk-b").identity == "bob"
    assert store.lookup(b"sk-a").identity.startswith("key-") and "sk-a" not in store.lookup(b"sk-a").identity
    assert store.lookup(b"sk-c") is None
    env = load_api_keys(None, environ={"PUBLICAI_API_KEYS": "sk-x:enterprise, sk-y"})
    assert env.lookup(b"sk-x").tier == "enterprise" and env.lookup(b"sk-y").tier == "free"
    assert load_api_keys(None, environ={}) is None
    with pytest.raises(GatewayError, match="unknown tier") as exc:
        KeyStore({"sk-secret-zz": "gold"}, tiers={"free": 100})
    assert "sk-secret-zz" not in str(exc.value)
    (tmp_path / "bad.yaml").write_text("sk-secret-qq: [unclosed\n")
    with pytest.raises(GatewayError) as exc:
        load_api_keys(tmp_path / "bad.yaml")
    assert "sk-secret-qq" not in str(exc.value)


def test_rate_limiter_windows() -> None:
    rl = RateLimiter()
    assert [rl.check("u", 2, 1.0) for _ in range(3)] == [0, 0, 59]
    assert rl.check("v", 2, 1.5) == 0 and rl.check("u", None, 2.0) == 0
    assert rl.check("u", 2, 60.2) == 0  # a new window


# --------------------------------------------------------------------------------------------
# failures: retries, cooldown, health checks, timeouts, client disconnect


def test_retry_to_fallback_when_a_backend_is_down(fakes: Any) -> None:
    alive, dead = fakes(), fakes()
    gw = Gateway(backends=[BackendSpec("dead", dead.url, model="m", served_model_name="served-model"),
                           BackendSpec("alive", alive.url, model="m", served_model_name="served-model")],
                 policy="round_robin", health_check_interval_s=30)
    with gw.serve() as url:
        assert backend_state(url, "dead")["in_rotation"] is True
        dead.stop()  # dies after the gateway saw it healthy: only requests can find out
        for stream in (False, True, False, False):
            r = post(url, {"model": "m", "stream": stream, **CHAT})
            assert r.status_code == 200 and r.headers["x-selected-backend"] == "alive"
        assert backend_state(url, "dead")["in_rotation"] is False
        metrics = httpx.get(url + "/metrics").text
    assert 'publicai_gateway_retries_total{backend="dead",reason="connect"}' in metrics
    assert len(alive.chat_posts) == 4


def test_errors_cool_a_backend_down(fakes: Any) -> None:
    bad, good = fakes(), fakes()
    bad.fail_status = 503
    gw = Gateway(backends=[BackendSpec("bad", bad.url, model="m"), BackendSpec("good", good.url, model="m")],
                 policy="round_robin", allowed_fails=1, cooldown_s=30)
    with gw.serve() as url:
        for _ in range(6):
            r = post(url, {"model": "m", **CHAT})
            assert r.status_code == 200 and r.headers["x-selected-backend"] == "good"
        # more than allowed_fails (1) failures within a minute: cooled down, no more traffic
        assert len(bad.chat_posts) == 2
        st = backend_state(url, "bad")
        assert st["up"] is True and st["in_rotation"] is False and 25 < st["cooldown_remaining_s"] <= 30
        assert 'publicai_gateway_cooldowns_total{backend="bad"} 1' in httpx.get(url + "/metrics").text


def test_all_attempts_fail_passes_last_error_through(fakes: Any) -> None:
    a, b = fakes(), fakes()
    a.fail_status = b.fail_status = 500
    gw = Gateway(backends=[BackendSpec("a", a.url, model="m"), BackendSpec("b", b.url, model="m")],
                 num_retries=1, allowed_fails=100)
    with gw.serve() as url:
        r = post(url, {"model": "m", **CHAT})
        assert r.status_code == 500 and r.headers["x-gateway-attempts"] == "2"
    assert len(a.chat_posts) == len(b.chat_posts) == 1


def test_health_checks_remove_and_restore(fakes: Any) -> None:
    a, b = fakes(), fakes()
    gw = Gateway(backends=[BackendSpec("a", a.url, model="m"), BackendSpec("b", b.url, model="m")],
                 health_check_interval_s=0.5)
    with gw.serve() as url:
        a.stop()  # no traffic at all: only the active checks can notice
        t_out = wait_until(lambda: backend_state(url, "a")["in_rotation"] is False, 2.0)
        assert t_out < 2.0
        for _ in range(4):
            assert post(url, {"model": "m", **CHAT}).headers["x-selected-backend"] == "b"
        a.start()
        t_back = wait_until(lambda: backend_state(url, "a")["in_rotation"], 2.0)
        assert t_back <= 0.5 + 0.5  # one health interval (+ slack for the check itself on a busy CI box)
        b.health_status = 503      # up but unhealthy
        wait_until(lambda: backend_state(url, "b")["in_rotation"] is False, 2.0)
        assert post(url, {"model": "m", **CHAT}).headers["x-selected-backend"] == "a"


def test_request_timeout_gives_504(fakes: Any) -> None:
    slow = fakes()
    slow.delay_s = 2.0
    gw = Gateway(backends=[BackendSpec("slow", slow.url, model="m")], timeout_s=0.3)
    with gw.serve() as url:
        t0 = time.monotonic()
        r = post(url, {"model": "m", **CHAT})
        assert_openai_error(r, 504)
        assert time.monotonic() - t0 < 1.5
        assert gw._by_id["slow"].in_flight == 0


def test_admission_limit_holds_requests(fakes: Any) -> None:
    """gateway.max_in_flight_per_replica: over the limit, requests wait for a slot (FIFO)."""
    a = fakes()
    a.delay_s = 0.2
    gw = Gateway(backends=[BackendSpec("a", a.url, model="m")], max_in_flight_per_replica=1)
    with gw.serve() as url:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=10) as c:
                return await asyncio.gather(*(c.post(url + "/v1/chat/completions", json={"model": "m", **CHAT})
                                              for _ in range(4)))

        t0 = time.monotonic()
        rs = asyncio.run(burst())
        assert all(r.status_code == 200 for r in rs)
        assert time.monotonic() - t0 >= 0.75
    assert a.max_in_progress == 1 and len(a.chat_posts) == 4


def test_model_fallbacks_from_the_scenario(fakes: Any) -> None:
    other = fakes("tiny-served")
    dead = f"http://127.0.0.1:{free_port()}"
    sc = scenario_for(dead, dead, other=other, gateway={"model_fallbacks": {PROVIDER_ID: ["tiny-llama"]}})
    gw = Gateway(sc, health_check_interval_s=30)
    with gw.serve() as url:
        r = post(url, {"model": PROVIDER_ID, **CHAT})
        assert r.status_code == 200 and r.headers["x-selected-backend"] == "aws/small"
    assert other.chat_posts[0]["body"]["model"] == "tiny-served"


def test_client_disconnect_closes_upstream(fakes: Any) -> None:
    fb = fakes(chunks=200)
    fb.chunk_delay_s = 0.05
    gw = Gateway(backends=[BackendSpec("a", fb.url, model="m")])
    with gw.serve() as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={"model": "m", "stream": True, **CHAT},
                          timeout=10) as r:
            it = r.iter_raw()  # keep a reference: a collected iterator closes the connection
            next(it)
            time.sleep(0.1)
            assert gw._by_id["a"].in_flight == 1 and not fb.disconnected.is_set()
            t_close = time.monotonic()
        assert fb.disconnected.wait(1.0), "the backend did not see the client go away"
        assert fb.disconnected_at - t_close < 1.0
        wait_until(lambda: gw._by_id["a"].in_flight == 0, 1.0)
        assert not fb.stream_finished.is_set()
        assert 'status="499"' in httpx.get(url + "/metrics").text
        assert post(url, {"model": "m", **CHAT}).status_code == 200


# --------------------------------------------------------------------------------------------
# metrics, models, health


def test_metrics_page(fakes: Any) -> None:
    a = fakes()
    a.metrics_text = vllm_metrics(running=5, waiting=1, kv=0.5)
    gw = Gateway(backends=[BackendSpec("p/a", a.url, model="m")], scrape_interval_s=0.1)
    with gw.serve() as url:
        for stream in (False, True):
            assert post(url, {"model": "m", "stream": stream, **CHAT}).status_code == 200
        post(url, {"model": "nope", **CHAT})
        time.sleep(0.25)
        text = httpx.get(url + "/metrics").text
    lines = text.splitlines()
    assert 'publicai_gateway_requests_total{backend="p/a",model="m",status="200"} 2' in lines
    assert 'publicai_gateway_requests_total{backend="none",model="",status="404"} 1' in lines
    assert 'publicai_gateway_request_duration_seconds_count{backend="p/a"} 2' in lines
    assert any(line.startswith('publicai_gateway_request_duration_seconds_bucket{backend="p/a",le="+Inf"} 2')
               for line in lines)
    assert 'publicai_gateway_time_to_first_byte_seconds_count{backend="p/a"} 1' in lines
    assert 'publicai_gateway_in_flight{backend="p/a"} 0' in lines
    assert 'publicai_gateway_backend_up{backend="p/a"} 1' in lines
    assert 'publicai_gateway_backend_running{backend="p/a"} 5' in lines
    assert 'publicai_gateway_backend_kv_cache_usage{backend="p/a"} 0.5' in lines
    age = [float(line.split()[-1]) for line in lines if line.startswith("publicai_gateway_backend_scrape_age_seconds")]
    assert age and 0 <= age[0] < 1.0
    assert "# TYPE publicai_gateway_retries_total counter" in lines


def test_prom_rendering() -> None:
    c = Counter("x_total", "help", ("a",))
    c.inc(('q"\\\n',))
    h = Histogram("h_seconds", "help", (), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe((), v)
    text = render([c, h])
    assert 'x_total{a="q\\"\\\\\\n"} 1' in text
    assert 'h_seconds_bucket{le="0.1"} 1' in text and 'h_seconds_bucket{le="+Inf"} 3' in text
    assert "h_seconds_count 3" in text


def test_origin_parsing() -> None:
    o = Origin("http://127.0.0.1:8000/v1/")
    assert (o.host, o.port, o.prefix, o.url) == ("127.0.0.1", 8000, "", "http://127.0.0.1:8000")
    o = Origin("https://example.org/api/v1")
    assert (o.port, o.prefix, o.host_header, o.ssl) == (443, "/api", "example.org", True)
    with pytest.raises(GatewayError):
        Origin("ftp://x")


def test_construction_errors() -> None:
    with pytest.raises(GatewayError, match="no backends"):
        Gateway()
    with pytest.raises(GatewayError, match="duplicate"):
        Gateway(backends=[BackendSpec("a", "http://127.0.0.1:1"), BackendSpec("a", "http://127.0.0.1:2")])
    with pytest.raises(Exception, match="unknown routing policy"):
        Gateway(backends=[BackendSpec("a", "http://127.0.0.1:1")], policy="nope")
    with pytest.raises(GatewayError, match="no backends"):
        Gateway(scenario_for(None, None))


@pytest.mark.parametrize("kind", ["httpx", "aiohttp"])
def test_alternative_upstream_clients(fakes: Any, kind: str) -> None:
    pytest.importorskip(kind)
    a = fakes(chunks=3)
    gw = Gateway(backends=[BackendSpec("a", a.url, model="m")], upstream=kind)
    with gw.serve() as url:
        assert post(url, {"model": "m", **CHAT}).json()["object"] == "chat.completion"
        text = post(url, {"model": "m", "stream": True, **CHAT}).text
        assert text.count("data: ") == 4


# --------------------------------------------------------------------------------------------
# command line, with the shared benchmark's fake backend


def test_cli_registration() -> None:
    import argparse

    p = argparse.ArgumentParser()
    add_cli(p.add_subparsers(dest="command"))
    a = p.parse_args(["gateway", "--backend", "http://h:1", "--backend", "x=http://h:2", "--policy", "power_of_two",
                      "--port", "4101", "--api-keys", "k.yaml", "--workers", "1"])
    assert a.backend == ["http://h:1", "x=http://h:2"] and a.policy == "power_of_two" and a.port == 4101
    assert callable(a.func)


@pytest.mark.skipif(not SHARED_FAKE.exists(), reason="shared benchmark fake backend not present")
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_subprocess_with_shared_fake_backend(tmp_path: Path, workers: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    bport, gport = free_port(), free_port()
    procs = []
    log = open(tmp_path / "gw.log", "wb")
    try:
        procs.append(subprocess.Popen([sys.executable, str(SHARED_FAKE), "--port", str(bport), "--chunks", "5"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        wait_until(lambda: _ok(f"http://127.0.0.1:{bport}/health"), 15)
        procs.append(subprocess.Popen([sys.executable, "-m", "publicai_lab.live.gateway", "--backend",
                                       f"fake=http://127.0.0.1:{bport}/v1", "--port", str(gport), "--policy",
                                       "least_kv", "--workers", str(workers)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env))
        url = f"http://127.0.0.1:{gport}"
        wait_until(lambda: _ok(url + "/health"), 15)
        r = post(url, {"model": "fake-model", **CHAT})
        assert r.status_code == 200 and r.headers["x-selected-backend"] == "fake"
        text = post(url, {"model": "fake-model", "stream": True, **CHAT}).text
        assert text.count('"content"') == 5 and text.endswith("data: [DONE]\n\n")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()
    assert procs[1].returncode in (0, -15), (tmp_path / "gw.log").read_text()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
