"""Emulated vLLM backends: vLLM's OpenAI endpoints with the simulator's timing, in real time.

``EmulatedBackend`` answers like ``vllm.entrypoints.openai.api_server`` — ``POST
/v1/chat/completions`` and ``/v1/completions`` (SSE chunks in vLLM's format, the
``stream_options.include_usage`` usage chunk, or one JSON body with ``usage``), ``GET /v1/models``,
``/health``, ``/ping``, ``/version``, ``POST /tokenize`` and ``GET /metrics`` with vLLM's metric
names — but without a model: tokens come out when the simulator's replica model says they would
(:mod:`publicai_lab.live.emulator_engine`). So a gateway, a policy or a load generator can be run
against tens of "servers" on one small machine, and their timing is the sim's, not noise.

What it takes from a request: ``max_tokens`` (or ``max_completion_tokens``) output tokens are always
produced (``ignore_eos`` semantics: the answer is never shorter), prompt tokens are *estimated*
from the text (:func:`estimate_tokens`: one per whitespace-separated word, at least one per six
characters) or counted exactly for token-id prompts. Content is filler words.

Fault knobs (:class:`Faults`): error rate, per-request stall, whole-engine stall at a time, slow
start, crash after N requests (listener closed, connections dropped, in-flight work lost; or the
process exits), automatic restart. ``zero_latency=True`` skips the engine and answers at once
(for gateway overhead benchmarks).

Serving: ``with backend.serve() as url:`` (a background thread with its own loop), ``with
serve_many([...]) as urls:`` (many on one loop, one thread), or ``await backend.astart()`` inside
your own loop. CLI: ``publicai-lab emulate``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Iterator, Sequence

import numpy as np

from publicai_lab.errors import PublicAILabError
from publicai_lab.live.emulator_engine import RealtimeEngine
from publicai_lab.perf import EngineParams, StepTimeModel
from publicai_lab.sim.frontend import Frontend

__all__ = ["EmulatedBackend", "Faults", "serve_many", "estimate_tokens", "default_engine_params",
           "engine_from_scenario", "add_cli"]

try:  # orjson is what vLLM itself uses; plain json is the fallback
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    _loads = json.loads

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
#: filler output, one token each (short ASCII words: no JSON escaping needed)
_WORDS = tuple(" " + w for w in (
    "the of and to in is it that for on was with as at by be this from or are an not but have "
    "one all we can has more will if out so up about into than them some time only new also way "
    "very then these two may like our well use each work even such most after first made any"
).split())
_MAX_BODY_BYTES = 10 * 1024 * 1024
VLLM_VERSION = "0.32.0-emulated"


def estimate_tokens(text: str) -> int:
    """Prompt tokens of ``text`` without a tokenizer: one per whitespace-separated word, but at
    least one per six characters (so unbroken strings such as code or base64 are not undercounted).

    English under a Llama-style BPE is about 1.3 tokens per word; this estimate is the emulator's
    *definition*, chosen so the load generator can build a prompt of exactly N emulated tokens
    (N short words) — against real vLLM it calibrates with ``/tokenize`` instead.
    """
    if not text:
        return 0
    return max(len(text.split()), -(-len(text) // 6))


def default_engine_params() -> EngineParams:
    """A small CPU-like engine (toy.yaml's tiny model): 2.5 ms/step + 0.11 ms per decoding sequence."""
    return EngineParams(perf=StepTimeModel(c0_s=0.0025, c_prefill_s=2e-5, c_decode_s=0.00011,
                                           source="emulator-default"),
                        max_num_seqs=256, max_num_batched_tokens=8192, block_size=16,
                        kv_blocks=65536 // 16, enable_chunked_prefill=True, max_context_tokens=32768)


def engine_from_scenario(scenario: Any, backend_id: str) -> tuple[EngineParams, Any, Any]:
    """(EngineParams, partner, cluster) for a scenario's ``partner/cluster``."""
    from publicai_lab.perf import engine_params_for
    from publicai_lab.scenario import load_scenario

    if not hasattr(scenario, "partners"):
        scenario = load_scenario(scenario)
    partner, cluster = scenario.backend(backend_id)
    return engine_params_for(scenario, partner, cluster), partner, cluster


@dataclass(frozen=True)
class Faults:
    """Injected misbehaviour. Probabilities are drawn from the backend's own generator.

    - ``error_rate``: fraction of completion requests answered ``error_status`` (500) at once.
    - ``stall_rate``/``stall_s``: fraction of completion requests that hang ``stall_s`` before
      they reach the engine (a stuck request; the client sees nothing, not even headers).
    - ``stall_at_s``/``engine_stall_s``: at that many seconds after start the whole engine
      freezes for ``engine_stall_s`` (running streams pause, new requests queue; nothing is lost).
    - ``slow_start_s``: for this long after (re)start, ``/health`` and completions answer 503 (vLLM
      still loading; a real server refuses connections instead — use ``restart`` delays for that).
    - ``crash_after``: after accepting this many completion requests, the next one crashes the
      server: listener closed, every connection dropped, in-flight work lost. ``crash_mode``
      "stop" keeps the process (other emulated backends live on); "exit" ends the process (CLI).
    - ``restart_after_s``: a crashed server comes back (fresh engine, same port) after this long.
    """

    error_rate: float = 0.0
    error_status: int = 500
    stall_rate: float = 0.0
    stall_s: float = 0.0
    stall_at_s: float | None = None
    engine_stall_s: float = 0.0
    slow_start_s: float = 0.0
    crash_after: int | None = None
    crash_mode: str = "stop"
    restart_after_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "stall_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise PublicAILabError(f"faults.{name}: got {v}; must be in [0, 1]")
        if self.crash_mode not in ("stop", "exit"):
            raise PublicAILabError(f"faults.crash_mode: got {self.crash_mode!r}; allowed: stop, exit")
        if self.crash_after is not None and self.crash_after < 0:
            raise PublicAILabError(f"faults.crash_after: got {self.crash_after}; must be >= 0")


class _Disconnected(Exception):
    """The client went away before its request body was read."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, err_type: str = "BadRequestError",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


def _error_body(status: int, message: str, err_type: str, param: str | None = None) -> bytes:
    """vLLM's error shape (OpenAI-compatible)."""
    return _dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}})


class EmulatedBackend:
    """One emulated vLLM OpenAI server.

    ``engine``: an :class:`EngineParams`, a ``(scenario, "partner/cluster")`` pair (that cluster's
    engine config and perf model), or None for :func:`default_engine_params`. :meth:`from_scenario`
    takes the rest of the cluster too: model name and aliases, and its ``replicas`` as engines
    behind this one endpoint (vLLM's ``engine`` label on the metrics), as the simulator models it.
    ``served_model_names``: names accepted besides ``model_name`` (vLLM's multiple
    ``--served-model-name``). ``rng``: draws the fault knobs' coin flips.
    """

    def __init__(self, model_name: str = "emulated-model", *,
                 engine: EngineParams | tuple[Any, str] | None = None,
                 replicas: int = 1, port: int = 0, host: str = "127.0.0.1",
                 faults: Faults | None = None, zero_latency: bool = False,
                 served_model_names: Sequence[str] = (), default_max_tokens: int = 64,
                 min_tick_s: float = 0.0, backend_id: str | None = None, balancer: str = "least_loaded",
                 rng: np.random.Generator | None = None) -> None:
        self.model_name = model_name
        self.names = (model_name, *[n for n in served_model_names if n != model_name])
        if isinstance(engine, tuple):          # (scenario, "partner/cluster"): its engine and perf model
            engine = engine_from_scenario(*engine)[0]
        self.params = engine or default_engine_params()
        self.replicas = int(replicas)
        self._frontend = Frontend.for_perf(self.params.perf, self.replicas)
        self.host = host
        self.port = int(port)
        self.faults = faults or Faults()
        self.zero_latency = bool(zero_latency)
        self.default_max_tokens = int(default_max_tokens)
        self.min_tick_s = float(min_tick_s)
        self.backend_id = backend_id or model_name
        self.balancer = balancer
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.engine: RealtimeEngine | None = None
        self.running = False
        self.crashes = 0
        self.requests_accepted = 0        # completion requests since the last (re)start
        self.requests_total = 0
        self.in_flight = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._sock: socket.socket | None = None
        self._started_at = 0.0
        self._timers: list[asyncio.TimerHandle] = []
        self._ids = itertools.count(1)
        self._created = int(time.time())
        self._thread: threading.Thread | None = None
        self._zl_counts = {"prompt": 0, "gen": 0, "success": 0}
        names = self.names
        self._models_body = _dumps({"object": "list", "data": [
            {"id": n, "object": "model", "created": self._created, "owned_by": "vllm", "root": model_name,
             "parent": None, "max_model_len": self.params.max_context_tokens,
             "permission": []} for n in names]})

    @classmethod
    def from_scenario(cls, scenario: Any, backend_id: str, **kwargs: Any) -> "EmulatedBackend":
        """The backend ``partner/cluster`` of a scenario: its model name (and aliases), engine
        config, perf model and replica count; ``port`` from its ``base_url`` unless given."""
        from publicai_lab.scenario import load_scenario

        if not hasattr(scenario, "partners"):
            scenario = load_scenario(scenario)
        params, partner, cluster = engine_from_scenario(scenario, backend_id)
        model = scenario.resolve_model(cluster.model)
        aliases = list(scenario.models[model].aliases)
        kwargs.setdefault("replicas", cluster.replicas)
        kwargs.setdefault("balancer", cluster.replica_balancer)
        if "port" not in kwargs and cluster.base_url:
            from urllib.parse import urlsplit
            port = urlsplit(cluster.base_url).port
            if port:
                kwargs["port"] = port
        return cls(model, engine=params, served_model_names=aliases, backend_id=backend_id, **kwargs)

    # ------------------------------------------------------------------ lifecycle (on the loop)
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def astart(self) -> str:
        """Bind, start the engine and serve on the running loop. Returns the base URL."""
        import uvicorn

        self.loop = asyncio.get_running_loop()
        if self.running:
            return self.base_url
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self, lifespan="off", log_level="warning", access_log=False,
                                timeout_keep_alive=30, backlog=2048)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)   # what Server.serve() would set up
        server.server_state.default_headers = [(b"server", b"uvicorn")]
        await server.startup(sockets=[sock])
        self._server = server
        self.engine = RealtimeEngine(self.params, replicas=self.replicas, name=self.backend_id,
                                     balancer=self.balancer, min_tick_s=self.min_tick_s)
        self.engine.start(self.loop)
        self.requests_accepted = 0
        self._started_at = self.loop.time()
        self.running = True
        f = self.faults
        if f.stall_at_s is not None and f.engine_stall_s > 0:
            self._timers.append(self.loop.call_later(f.stall_at_s, self.stall, f.engine_stall_s))
        return self.base_url

    async def astop(self, *, grace_s: float = 0.5) -> None:
        """Stop serving: close the listener, let open responses finish for ``grace_s``, then drop them."""
        if not self.running:
            return
        self.running = False
        server = self._server
        for srv in server.servers:
            srv.close()
        for conn in list(server.server_state.connections):
            conn.shutdown()
        deadline = time.monotonic() + grace_s
        while server.server_state.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self._drop_connections()
        self._teardown()

    async def acrash(self) -> None:
        """Die now: every connection dropped, in-flight work lost, port closed."""
        if not self.running:
            return
        self.running = False
        self.crashes += 1
        for srv in self._server.servers:
            srv.close()
        self._drop_connections()
        self._teardown()
        if self.faults.crash_mode == "exit":
            sys.stderr.write(f"emulator {self.backend_id}: crashed (crash_mode=exit)\n")
            sys.stderr.flush()
            os._exit(3)
        if self.faults.restart_after_s is not None:
            self.loop.call_later(self.faults.restart_after_s,
                                 lambda: asyncio.ensure_future(self.astart()))

    async def arestart(self, *, delay_s: float = 0.0) -> str:
        """Crash-free restart: stop (if running), wait ``delay_s`` (port closed), start fresh."""
        await self.astop(grace_s=0.0)
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        return await self.astart()

    def stall(self, duration_s: float) -> None:
        """Freeze the engine for ``duration_s`` (must run on the backend's loop; see ``call``)."""
        if self.engine is not None:
            self.engine.stall(duration_s)

    def _drop_connections(self) -> None:
        """Abort every connection and cancel the request handlers still running (except the
        caller's own, when a request triggers the crash)."""
        state = self._server.server_state
        for conn in list(state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        me = asyncio.current_task()
        for task in list(state.tasks):
            if task is not me:
                task.cancel()

    def _teardown(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        if self.engine is not None:
            self.engine.fail_all()
            self.engine.close()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ thread helpers
    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float = 30.0) -> Any:
        """Run ``fn(*args)`` (a function or coroutine function) on the backend's loop from any
        thread and return its result: ``backend.call(backend.acrash)``, ``backend.call(backend.stall, 2)``."""
        loop = self.loop
        if loop is None:
            raise PublicAILabError("emulated backend is not started")

        async def run() -> Any:
            out = fn(*args)
            if asyncio.iscoroutine(out):
                out = await out
            return out

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise PublicAILabError("call() from the backend's own loop would deadlock; await it instead")
        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout_s)

    def crash(self) -> None:
        self.call(self.acrash)

    def restart(self, delay_s: float = 0.0) -> str:
        return self.call(lambda: self.arestart(delay_s=delay_s), timeout_s=30.0 + delay_s)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve in a background thread (own event loop); yields the base URL."""
        with serve_many([self]) as urls:
            yield urls[0]

    # ------------------------------------------------------------------ ASGI
    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        try:
            if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
                await self._completion(scope, receive, send, chat=path == "/v1/chat/completions")
            elif method == "GET" and path == "/v1/models":
                await _respond(send, 200, self._models_body)
            elif path == "/health":
                ok = self._ready()
                await _respond(send, 200 if ok else 503, b"" if ok else
                               _error_body(503, "server is starting", "ServiceUnavailableError"))
            elif path == "/ping":
                await _respond(send, 200, b"")
            elif method == "GET" and path == "/version":
                await _respond(send, 200, _dumps({"version": VLLM_VERSION}))
            elif method == "GET" and path == "/metrics":
                await _respond(send, 200, self.metrics_text().encode(), _TEXT)
            elif method == "POST" and path == "/tokenize":
                await self._tokenize(receive, send)
            else:
                await _respond(send, 404, _error_body(404, f"no route {method} {path}", "NotFoundError"))
        except _BadRequest as exc:
            await _respond(send, exc.status, _error_body(exc.status, exc.message, exc.err_type, exc.param))
        except _Disconnected:
            return
        except asyncio.CancelledError:
            return                      # stopped or crashed under us: the connection is gone

    def _ready(self) -> bool:
        return (self.running and self.loop is not None
                and self.loop.time() - self._started_at >= self.faults.slow_start_s)

    async def _read_json(self, receive: ASGIReceive) -> dict[str, Any]:
        chunks = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Disconnected()
            body = msg.get("body", b"")
            size += len(body)
            if size > _MAX_BODY_BYTES:
                raise _BadRequest(413, "request body too large")
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        try:
            data = _loads(b"".join(chunks))
        except ValueError as exc:
            raise _BadRequest(400, f"invalid JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise _BadRequest(400, "the request body must be a JSON object")
        return data

    def _check_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.model_name      # vLLM serves the default model when none is named
        if not isinstance(model, str):
            raise _BadRequest(400, "'model' must be a string", param="model")
        if model not in self.names:
            raise _BadRequest(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return model

    def _prompt_tokens(self, body: dict[str, Any], chat: bool) -> int:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest(400, "'messages' must be a non-empty list", param="messages")
            n = 0
            for m in messages:
                if not isinstance(m, dict):
                    raise _BadRequest(400, "each message must be an object", param="messages")
                content = m.get("content")
                if isinstance(content, str):
                    n += estimate_tokens(content)
                elif isinstance(content, list):
                    for part in content:
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            n += estimate_tokens(part["text"])
                elif content is not None:
                    raise _BadRequest(400, "message content must be a string or a list of parts",
                                      param="messages")
            return max(1, n)
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return max(1, estimate_tokens(prompt))
        if isinstance(prompt, list) and prompt:
            first = prompt[0]
            if isinstance(first, int):
                return len(prompt)                 # token ids: exact
            if isinstance(first, str):
                return max(1, estimate_tokens(first))
            if isinstance(first, list):
                return max(1, len(first))
        raise _BadRequest(400, "'prompt' must be a string, a list of strings or token ids", param="prompt")

    def _max_tokens(self, body: dict[str, Any], prompt_tokens: int) -> int:
        limit = self.params.max_context_tokens
        raw = body.get("max_completion_tokens", body.get("max_tokens"))
        if raw is None:
            return max(1, min(self.default_max_tokens, limit - prompt_tokens))
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
            raise _BadRequest(400, f"max_tokens must be an integer >= 1, got {raw!r}", param="max_tokens")
        if prompt_tokens + raw > limit:
            raise _BadRequest(400, f"This model's maximum context length is {limit} tokens. However, you "
                                   f"requested {prompt_tokens + raw} tokens ({prompt_tokens} in the messages, "
                                   f"{raw} in the completion). Please reduce the length of the messages "
                                   f"or completion.", param="max_tokens")
        return raw

    async def _tokenize(self, receive: ASGIReceive, send: ASGISend) -> None:
        body = await self._read_json(receive)
        self._check_model(body)
        chat = "messages" in body
        n = self._prompt_tokens(body, chat)
        await _respond(send, 200, _dumps({"count": n, "max_model_len": self.params.max_context_tokens,
                                          "tokens": list(range(n)), "token_strs": None}))

    async def _completion(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend,
                          chat: bool) -> None:
        self.requests_total += 1
        if not self.running:
            # a request that raced a crash on an open keep-alive connection
            await asyncio.sleep(0)
            return
        body = await self._read_json(receive)
        model = self._check_model(body)
        f = self.faults
        if not self._ready():
            raise _BadRequest(503, "the model is still loading", "ServiceUnavailableError")
        if f.crash_after is not None and self.requests_accepted >= f.crash_after:
            await self.acrash()
            await asyncio.sleep(0)      # let the dropped connection register before we return
            return
        self.requests_accepted += 1
        if f.error_rate > 0 and self.rng.random() < f.error_rate:
            raise _BadRequest(f.error_status, "emulated engine error", "InternalServerError")
        prompt_tokens = self._prompt_tokens(body, chat)
        out_tokens = self._max_tokens(body, prompt_tokens)
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        if f.stall_rate > 0 and self.rng.random() < f.stall_rate:
            await asyncio.sleep(f.stall_s)
            if not self.running:
                return
        fmt = _Format(chat, model, next(self._ids), self._created)
        self.in_flight += 1
        try:
            if not self.zero_latency and self._frontend is not None:
                # the frontend's queue before the engine sees the request, as in the simulator
                now = asyncio.get_running_loop().time()
                await asyncio.sleep(self._frontend.delay_s(now, now, self.in_flight - 1))
            if self.zero_latency:
                await self._answer_now(send, fmt, prompt_tokens, out_tokens, stream, include_usage)
            elif stream:
                await self._stream(receive, send, fmt, prompt_tokens, out_tokens, include_usage)
            else:
                await self._whole(receive, send, fmt, prompt_tokens, out_tokens)
        finally:
            self.in_flight -= 1

    async def _answer_now(self, send: ASGISend, fmt: "_Format", prompt: int, out: int, stream: bool,
                          include_usage: bool) -> None:
        c = self._zl_counts
        c["prompt"] += prompt
        c["gen"] += out
        c["success"] += 1
        if not stream:
            await _respond(send, 200, fmt.whole(prompt, out))
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        await send({"type": "http.response.body", "body": fmt.chunks(0, 1, out), "more_body": True})
        for i in range(1, out):
            await send({"type": "http.response.body", "body": fmt.chunks(i, i + 1, out), "more_body": True})
        await send({"type": "http.response.body", "body": fmt.tail(prompt, out, include_usage)})

    async def _stream(self, receive: ASGIReceive, send: ASGISend, fmt: "_Format", prompt: int, out: int,
                      include_usage: bool) -> None:
        engine = self.engine
        assert engine is not None
        job = engine.submit(prompt, out, stream=True)
        gone = asyncio.ensure_future(receive())      # resolves with http.disconnect
        gone.add_done_callback(lambda _f: job.wake())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            sent = 0
            while True:
                if gone.done():
                    engine.abort(job)
                    return
                if job.failed or job.rejected or job.aborted:
                    return        # engine crashed: the connection is being dropped
                n = job.produced()
                if n > sent:
                    body = fmt.chunks(sent, n, out)
                    sent = n
                    if n >= out:
                        await send({"type": "http.response.body",
                                    "body": body + fmt.tail(prompt, out, include_usage)})
                        return
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                await job.wait()
        finally:
            gone.cancel()

    async def _whole(self, receive: ASGIReceive, send: ASGISend, fmt: "_Format", prompt: int,
                     out: int) -> None:
        engine = self.engine
        assert engine is not None
        job = engine.submit(prompt, out, stream=False)
        gone = asyncio.ensure_future(receive())
        gone.add_done_callback(lambda _f: job.wake())
        try:
            while not job.finished:
                await job.wait()
                if gone.done() and not job.finished:
                    engine.abort(job)
                    return
            if job.rejected:
                await _respond(send, 400, _error_body(
                    400, f"the prompt ({prompt} tokens) does not fit in the KV cache", "BadRequestError"))
            elif job.done:
                await _respond(send, 200, fmt.whole(prompt, out))
        finally:
            gone.cancel()

    # ------------------------------------------------------------------ metrics
    def metrics_text(self) -> str:
        """Prometheus text in vLLM's names and labels (``engine``, ``model_name``)."""
        lines: list[str] = []
        model = self.model_name.replace("\\", "\\\\").replace('"', '\\"')
        engine = self.engine
        if self.zero_latency or engine is None:
            n = self.replicas
            gauges = [(self.in_flight if i == 0 else 0, 0, 0.0) for i in range(n)]
            c = self._zl_counts
            counters = [(c["prompt"], c["gen"], c["success"], 0) if i == 0 else (0, 0, 0, 0) for i in range(n)]
            stats = None
        else:
            gauges = engine.gauges()
            counters = [(s.prompt_tokens, s.generation_tokens, s.success, r.preemptions)
                        for s, r in zip(engine.stats, engine.replicas)]
            stats = engine.stats
        labels = [f'engine="{i}",model_name="{model}"' for i in range(len(gauges))]

        def gauge(name: str, help_: str, kind: str, values: list[float]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name.removesuffix('_total') if kind == 'counter' else name} {kind}")
            for lab, v in zip(labels, values):
                lines.append(f"{name}{{{lab}}} {float(v)}")

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", "gauge",
              [g[0] for g in gauges])
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "gauge",
              [g[1] for g in gauges])
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "gauge",
              [g[2] for g in gauges])
        gauge("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", "counter",
              [c[3] for c in counters])
        gauge("vllm:prompt_tokens_total", "Number of prefill tokens processed.", "counter",
              [c[0] for c in counters])
        gauge("vllm:generation_tokens_total", "Number of generation tokens processed.", "counter",
              [c[1] for c in counters])
        lines.append("# HELP vllm:request_success_total Count of successfully processed requests.")
        lines.append("# TYPE vllm:request_success counter")
        for lab, c in zip(labels, counters):
            lines.append(f'vllm:request_success_total{{{lab},finished_reason="length"}} {float(c[2])}')
        if stats is not None:
            for name, attr, help_ in (
                    ("vllm:time_to_first_token_seconds", "ttft", "Histogram of time to first token in seconds."),
                    ("vllm:e2e_request_latency_seconds", "e2e", "Histogram of e2e request latency in seconds."),
                    ("vllm:request_queue_time_seconds", "queue", "Histogram of time spent in WAITING phase."),
                    ("vllm:request_prefill_time_seconds", "prefill", "Histogram of time spent in PREFILL phase "
                     "for request."),
                    ("vllm:inter_token_latency_seconds", "itl", "Histogram of inter-token latency in seconds.")):
                lines.append(f"# HELP {name} {help_}")
                lines.append(f"# TYPE {name} histogram")
                for lab, s in zip(labels, stats):
                    lines.extend(getattr(s, attr).lines(name, lab))
        return "\n".join(lines) + "\n"


class _Format:
    """vLLM's response bodies for one request, with the constant parts built once."""

    __slots__ = ("chat", "head", "model_json", "created", "rid")

    def __init__(self, chat: bool, model: str, n: int, created: int) -> None:
        self.chat = chat
        self.rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}{n:x}"
        self.created = created
        self.model_json = _dumps(model).decode()
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.head = (f'data: {{"id":"{self.rid}","object":"{obj}","created":{created},'
                     f'"model":{self.model_json},"choices":[').encode()

    def chunks(self, start: int, end: int, out: int) -> bytes:
        """SSE chunks for output tokens ``start`` .. ``end``-1 (the role chunk before token 0)."""
        parts = []
        head = self.head
        if self.chat:
            if start == 0:
                parts.append(head + b'{"index":0,"delta":{"role":"assistant","content":""},'
                                    b'"logprobs":null,"finish_reason":null}]}\n\n')
            for i in range(start, end):
                word = _WORDS[i % len(_WORDS)]
                if i == out - 1:
                    parts.append(head + b'{"index":0,"delta":{"content":"' + word.encode()
                                 + b'"},"logprobs":null,"finish_reason":"length","stop_reason":null}]}\n\n')
                else:
                    parts.append(head + b'{"index":0,"delta":{"content":"' + word.encode()
                                 + b'"},"logprobs":null,"finish_reason":null}]}\n\n')
        else:
            for i in range(start, end):
                word = _WORDS[i % len(_WORDS)]
                fin = b'"length"' if i == out - 1 else b"null"
                parts.append(head + b'{"index":0,"text":"' + word.encode() + b'","logprobs":null,'
                             b'"finish_reason":' + fin + b',"stop_reason":null}]}\n\n')
        return b"".join(parts)

    def tail(self, prompt: int, out: int, include_usage: bool) -> bytes:
        usage = b""
        if include_usage:
            usage = self.head + (f'],"usage":{{"prompt_tokens":{prompt},"total_tokens":{prompt + out},'
                                 f'"completion_tokens":{out}}}}}\n\n').encode()
        return usage + b"data: [DONE]\n\n"

    def whole(self, prompt: int, out: int) -> bytes:
        text = "".join(_WORDS[i % len(_WORDS)] for i in range(out))
        usage = {"prompt_tokens": prompt, "total_tokens": prompt + out, "completion_tokens": out,
                 "prompt_tokens_details": None}
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                              "annotations": None, "audio": None, "function_call": None,
                                              "tool_calls": [], "reasoning_content": None},
                      "logprobs": None, "finish_reason": "length", "stop_reason": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length",
                      "stop_reason": None, "prompt_logprobs": None}
            obj = "text_completion"
        return _dumps({"id": self.rid, "object": obj, "created": self.created,
                       "model": _loads(self.model_json), "choices": [choice], "usage": usage,
                       "service_tier": None, "system_fingerprint": None, "prompt_logprobs": None,
                       "kv_transfer_params": None})


async def _respond(send: ASGISend, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]] = _JSON) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- many in one process
def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


@contextlib.contextmanager
def serve_many(backends: Sequence[EmulatedBackend], *, start_timeout_s: float = 30.0) -> Iterator[list[str]]:
    """Serve every backend on one event loop in one background thread; yields their base URLs.

    Faults and controls from another thread: ``backend.crash()``, ``backend.restart()``,
    ``backend.call(backend.stall, 2.0)``. On exit every backend is stopped and the thread joined.
    """
    loop = _new_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["urls"] = loop.run_until_complete(asyncio.gather(*(b.astart() for b in backends)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="emulated-backends", daemon=True)
    thread.start()
    if not started.wait(start_timeout_s):
        raise PublicAILabError("emulated backends did not start in time")
    if "error" in box:
        thread.join(5)
        raise PublicAILabError(f"emulated backends failed to start: {box['error']}") from box["error"]
    for b in backends:
        b._thread = thread
    try:
        yield list(box["urls"])
    finally:
        async def stop_all() -> None:
            await asyncio.gather(*(b.astop(grace_s=0.2) for b in backends), return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop_all(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        with contextlib.suppress(Exception):
            loop.close()


async def run_forever(backends: Sequence[EmulatedBackend]) -> None:
    """Start every backend on the running loop and serve until cancelled (the CLI's main)."""
    await asyncio.gather(*(b.astart() for b in backends))
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.gather(*(b.astop(grace_s=0.2) for b in backends), return_exceptions=True)


# ---------------------------------------------------------------------- CLI
def _params_from_args(args: argparse.Namespace, base: EngineParams) -> EngineParams:
    perf = base.perf
    if args.perf_model:
        from publicai_lab.perf import load_perf_model
        perf = load_perf_model(args.perf_model)
    coeffs = {k: getattr(args, k) for k in ("c0_s", "c_prefill_s", "c_prefill_sq_s", "c_decode_s", "c_ctx_s")
              if getattr(args, k) is not None}
    if coeffs:
        perf = StepTimeModel(**{**perf.coefficients(), **coeffs}, source="cli")
    p = replace(base, perf=perf)
    if args.max_num_seqs is not None:
        p = replace(p, max_num_seqs=args.max_num_seqs)
    if args.max_num_batched_tokens is not None:
        p = replace(p, max_num_batched_tokens=args.max_num_batched_tokens)
    if args.kv_cache_tokens is not None:
        p = replace(p, kv_blocks=max(1, args.kv_cache_tokens // p.block_size))
    if args.max_model_len is not None:
        p = replace(p, max_context_tokens=args.max_model_len)
    return p


def _faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(error_rate=args.error_rate, stall_rate=args.stall_rate, stall_s=args.stall_s,
                  stall_at_s=args.stall_at_s, engine_stall_s=args.engine_stall_s,
                  slow_start_s=args.slow_start_s, crash_after=args.crash_after,
                  crash_mode=args.crash_mode, restart_after_s=args.restart_after_s)


def build_backends(args: argparse.Namespace) -> list[EmulatedBackend]:
    """The backends an ``emulate`` command line asks for."""
    faults = _faults_from_args(args)
    seeds = np.random.SeedSequence(args.seed).spawn(max(1, args.count))
    common = dict(host=args.host, faults=faults, zero_latency=args.zero_latency,
                  default_max_tokens=args.default_max_tokens, min_tick_s=args.min_tick_ms / 1000.0)
    out: list[EmulatedBackend] = []
    if args.scenario:
        from publicai_lab.scenario import load_scenario

        scenario = load_scenario(args.scenario)
        ids = args.cluster or [scenario.backend_id(p, c) for p, c in scenario.clusters()]
        seeds = np.random.SeedSequence(args.seed).spawn(len(ids))
        for k, bid in enumerate(ids):
            kw: dict[str, Any] = dict(common, rng=np.random.default_rng(seeds[k]))
            if args.port:
                kw["port"] = args.port + k
            if args.replicas is not None:
                kw["replicas"] = args.replicas
            b = EmulatedBackend.from_scenario(scenario, bid, **kw)
            b.params = _params_from_args(args, b.params)
            out.append(b)
        return out
    params = _params_from_args(args, default_engine_params())
    for k in range(args.count):
        out.append(EmulatedBackend(args.model, engine=params, replicas=args.replicas or 1,
                                   port=args.port + k if args.port else 0,
                                   served_model_names=args.served_model_name or (),
                                   backend_id=f"{args.model}#{k}" if args.count > 1 else args.model,
                                   rng=np.random.default_rng(seeds[k]), **common))
    return out


def _cmd_emulate(args: argparse.Namespace) -> int:
    backends = build_backends(args)

    async def main() -> None:
        await asyncio.gather(*(b.astart() for b in backends))
        urls = {b.backend_id: b.base_url for b in backends}
        for b in backends:
            kind = "zero-latency" if b.zero_latency else f"{b.replicas} engine(s), perf {b.params.perf.source}"
            print(f"{b.backend_id:30s} {b.model_name:36s} {b.base_url}  ({kind})", flush=True)
        if args.urls_file:
            with open(args.urls_file, "w") as fh:
                json.dump(urls, fh, indent=2)
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.gather(*(b.astop(grace_s=0.2) for b in backends), return_exceptions=True)

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``emulate``."""
    p = subparsers.add_parser(
        "emulate", help="serve emulated vLLM backends (timing from the simulator's replica model)",
        description="Serve vLLM's OpenAI endpoints without a model: tokens leave when the simulator's "
                    "replica model says they would, in real time. One or many backends in one process.",
        epilog="Examples: publicai-lab emulate --port 8001 --count 3 ; "
               "publicai-lab emulate --scenario scenarios/toy.yaml --port 8100 ; "
               "publicai-lab emulate --zero-latency --port 8101")
    p.add_argument("--model", default="emulated-model", help="served model name (default: emulated-model)")
    p.add_argument("--served-model-name", nargs="*", help="further names accepted for the model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="first port (0: ephemeral); backend k gets port+k")
    p.add_argument("--count", type=int, default=1, help="identical backends to serve (without --scenario)")
    p.add_argument("--scenario", help="take engines, perf models, replicas and model names from this scenario")
    p.add_argument("--cluster", action="append",
                   help="backend id partner/cluster to emulate (repeatable; default: every cluster)")
    p.add_argument("--replicas", type=int, help="engines behind each endpoint (default: the cluster's, or 1)")
    g = p.add_argument_group("perf model and engine (override the scenario's or the default)")
    g.add_argument("--perf-model", help="data/perf_models/NAME.json or a path")
    g.add_argument("--c0-s", type=float, dest="c0_s", help="fixed step time, seconds")
    g.add_argument("--c-prefill-s", type=float, dest="c_prefill_s", help="seconds per prefill token")
    g.add_argument("--c-prefill-sq-s", type=float, dest="c_prefill_sq_s", help="seconds per squared prefix growth")
    g.add_argument("--c-decode-s", type=float, dest="c_decode_s", help="seconds per decoding sequence")
    g.add_argument("--c-ctx-s", type=float, dest="c_ctx_s", help="seconds per context token")
    g.add_argument("--max-num-seqs", type=int)
    g.add_argument("--max-num-batched-tokens", type=int)
    g.add_argument("--kv-cache-tokens", type=int)
    g.add_argument("--max-model-len", type=int)
    g.add_argument("--default-max-tokens", type=int, default=64, help="output tokens when max_tokens is absent")
    g.add_argument("--min-tick-ms", type=float, default=0.0,
                   help="coalesce token wake-ups to at most one per this many ms (many busy backends)")
    g.add_argument("--zero-latency", action="store_true",
                   help="no engine: answer at once with max_tokens chunks (gateway benchmarks)")
    f = p.add_argument_group("faults")
    f.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered HTTP 500")
    f.add_argument("--stall-rate", type=float, default=0.0, help="fraction of requests that hang --stall-s first")
    f.add_argument("--stall-s", type=float, default=0.0)
    f.add_argument("--stall-at-s", type=float, help="freeze the whole engine at this time after start ...")
    f.add_argument("--engine-stall-s", type=float, default=0.0, help="... for this long")
    f.add_argument("--slow-start-s", type=float, default=0.0, help="answer 503 (not ready) this long after start")
    f.add_argument("--crash-after", type=int, help="crash when this many completion requests were accepted")
    f.add_argument("--crash-mode", choices=("stop", "exit"), default="stop",
                   help="stop: close the server, keep the process; exit: end the process (status 3)")
    f.add_argument("--restart-after-s", type=float, help="a crashed server comes back after this long")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault coin flips")
    p.add_argument("--urls-file", help="write {backend_id: base_url} as JSON here once serving")
    p.set_defaults(func=_cmd_emulate)
