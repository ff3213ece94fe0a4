"""The live load generator: replay a scenario's workload against a real endpoint, open loop.

``run_live(scenario, target)`` sends exactly the requests the simulator would see for the same
seed — the workload stream is ``publicai_lab.workload.generate`` on the first child of
``SeedSequence(seed).spawn(2)``, as in ``sim/run.py`` — each at its arrival time, whether or not
earlier ones have been answered (open loop: a slow server builds a queue, it does not slow the
offered load). Every request streams (``stream_options.include_usage``) so time to first token is
measured; ``max_tokens`` = the drawn output length with ``ignore_eos`` so the answer has that
length; the client region goes in an ``X-Client-Region`` header, the tier as an API key
(when keys are given), the channel as ``X-Channel`` (when not "direct"). ``attempts`` comes from the
gateway's ``X-Gateway-Attempts`` header (1 without it).

Records follow the simulator's schema (``records.py``) with ``source="live"``:

- ``arrival_s`` is the *scheduled* send time (relative to the run start) and latencies are
  measured from it, so a client that falls behind shows up as latency, not as a lighter load
  (no coordinated omission). ``LiveResult.usage["send_lag_s"]`` says how late each send was.
- ``prompt_tokens``/``output_tokens`` are what the workload asked for (as in the sim, so the two
  frames line up request by request); what the server reports it served is in ``LiveResult.usage``.
  ``tpot_s`` divides by the served completion tokens when known.
- ``backend_id``/``partner``/``country`` from the gateway's ``X-Selected-Backend``,
  ``X-Compute-Sponsor``, ``X-Compute-Location`` headers (a backend id of the scenario gives its
  partner name and country, as in the sim); without them, from the target URL (a scenario cluster
  whose ``base_url`` it is, else ``host:port``).
- status: 429 → ``rejected``/``rate_limited``; other 4xx → ``rejected`` (``context_length_exceeded``,
  ``unauthorized``, ``model_not_found``, ``request_too_large``, ``http_<code>``); 504 (the
  gateway's timeout) → ``timeout``; other 5xx → ``failed``/``http_<code>``; refused or broken connections → ``failed``/``connection_error`` (or
  ``stream_error`` once streaming began); the client timeout → ``timeout``; in flight when the run
  was interrupted or hit its horizon → ``incomplete``. ``queue_wait_s`` is NaN (not observable).

Prompt text. A prompt of exactly N tokens needs the server's tokenizer. The prompt is N words drawn
at random (so vLLM's prefix cache does not turn the replay into cache hits) from short common
English words; before the run the generator measures two prompt sizes — with the target's
``/tokenize`` (vLLM and the emulator have it) or, where that is missing (a gateway), with a
one-token completion whose ``usage.prompt_tokens`` it reads — fits tokens = a + b·words (a is the
chat template) and inverts it: prompts then land on the asked length on average (the small model,
150 prompts of ~143 tokens: +0.2 tokens), each within about ±16 (sd 6: words tokenize unevenly). If
neither works it assumes one token per word, no template (exact for the emulator; about 1.3 tokens
a word for a Llama-3 BPE, ~3 for the tiny test model's 512-token vocabulary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from publicai_lab.live._sync import run_sync
from publicai_lab.errors import PublicAILabError
from publicai_lab.records import COLUMNS, frame_from_columns

__all__ = ["run_live", "run_live_async", "LiveResult", "PromptBuilder", "load_api_keys", "add_cli"]

#: short common words (2–5 letters): one token each in Llama/GPT-style BPEs, and one "token" under
#: the emulator's estimate (one per word, at least one per six characters)
PROMPT_WORDS = tuple(
    "time year day way man world life hand part child eye place week case point home water room "
    "mother area money story fact month lot right study book job word issue side kind head house "
    "game line end member law car city name team minute idea kid body back face level office door "
    "health person art war party result change power hour morning reason class girl guy moment air "
    "force fire music road tree river sea sky rain snow wind stone light night food bread fish "
    "bird dog cat horse field farm town shop bank park train ship plane map".split())

#: sampling fields of every replayed request: none, so the server's default (vLLM: temperature 1, random
#: sampling). The calibration and the speed anchor send the same (``calibrate.SAMPLING`` is this), so the
#: perf model describes the steps the replays run (top_p 0.9 cost 7 % a step here: docs/fidelity.md §14)
SAMPLING: dict[str, Any] = {}
_START_DELAY_S = 0.05          # headroom between planning and the first scheduled send
_USAGE_COLUMNS = ("request_id", "status_code", "served_prompt_tokens", "served_output_tokens",
                  "chunks", "send_lag_s", "model_sent")


# ---------------------------------------------------------------------- prompts and keys
class PromptBuilder:
    """Prompts of about ``n`` tokens: ``words(n) = round((n - overhead) / tokens_per_word)`` words.

    ``tokens_per_word``/``overhead_tokens`` come from :meth:`fit` (two ``/tokenize`` counts, see
    :func:`run_live`) or default to 1 and 0.
    """

    def __init__(self, rng: np.random.Generator, *, tokens_per_word: float = 1.0,
                 overhead_tokens: float = 0.0) -> None:
        self.rng = rng
        self.tokens_per_word = float(tokens_per_word)
        self.overhead_tokens = float(overhead_tokens)
        self._words = np.array(PROMPT_WORDS, dtype=object)
        self.calibrated = False

    def words_for(self, tokens: int) -> int:
        return max(1, int(round((tokens - self.overhead_tokens) / self.tokens_per_word)))

    def text(self, tokens: int) -> str:
        n = self.words_for(tokens)
        return " ".join(self._words[self.rng.integers(0, len(self._words), n)].tolist())

    def fit(self, words_a: int, tokens_a: int, words_b: int, tokens_b: int) -> None:
        """Fit tokens = overhead + per_word * words through two measured points."""
        if words_b == words_a:
            return
        slope = (tokens_b - tokens_a) / (words_b - words_a)
        if not 0.2 <= slope <= 5.0:
            return                      # a tokenizer this odd is not worth trusting
        self.tokens_per_word = slope
        self.overhead_tokens = tokens_a - slope * words_a
        self.calibrated = True


def load_api_keys(path: str | Path, tiers: Iterable[str] = ()) -> dict[str, list[str]]:
    """Read tier → API keys from a file; accepts the shapes a gateway key file is likely to have.

    JSON or YAML: ``{tier: key | [keys]}``; ``{key: tier}`` or ``{key: {tier: ...}}`` (a gateway's
    key table: values name a known tier); ``[{key: ..., tier: ...}, ...]``; or a ``keys:`` list of
    those. Plain text: one ``KEY TIER`` or ``TIER KEY`` per line (``#`` comments). Keys are never
    printed.
    """
    import yaml

    known = set(tiers)
    raw = Path(path).read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError:
        doc = None
    out: dict[str, list[str]] = {}

    def add(tier: Any, key: Any) -> None:
        if isinstance(tier, str) and isinstance(key, str) and key:
            out.setdefault(tier, []).append(key)

    if isinstance(doc, Mapping) and "keys" in doc and isinstance(doc["keys"], (list, Mapping)):
        doc = doc["keys"]
    if isinstance(doc, list):
        for item in doc:
            if isinstance(item, Mapping):
                add(item.get("tier", "free"), item.get("key") or item.get("api_key"))
    elif isinstance(doc, Mapping):
        for k, v in doc.items():
            if isinstance(v, Mapping):
                add(v.get("tier", "free"), k)
            elif isinstance(v, list):
                for key in v:
                    add(k, key)
            elif isinstance(v, str) and (v in known or (not known and k not in known and len(k) > len(v))):
                add(v, k)               # key: tier
            else:
                add(k, v)               # tier: key
    else:
        for line in raw.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2:
                a, b = parts[0], parts[1]
                add(b, a) if (b in known or a not in known) else add(a, b)
    if not out:
        raise PublicAILabError(f"{path}: no API keys found (expected tier -> key mappings)")
    return out


# ---------------------------------------------------------------------- result
@dataclass
class LiveResult:
    """A live run. ``requests`` follows the pinned schema (``validate_frame`` passes)."""

    requests: pd.DataFrame
    usage: pd.DataFrame
    scenario: Any
    target: str
    seed: int
    run_id: str
    policy_name: str
    duration_s: float
    wall_s: float
    interrupted: bool = False
    prompt_calibration: dict[str, float] = field(default_factory=dict)

    def summary(self, slo: Any = None) -> pd.DataFrame:
        """Per partner and overall, as for a simulation (no backend frame: cost columns absent)."""
        from publicai_lab.analysis import summarize
        from publicai_lab.sim.run import prices_of
        return summarize(self.requests, None, slo=slo or self.scenario.slo, duration_s=self.duration_s,
                         prices=prices_of(self.scenario))

    def report(self, out_dir: str | Path, *, title: str | None = None) -> Path:
        """report.md, figures, requests.parquet, run.json (+ usage.parquet) into ``out_dir``."""
        from publicai_lab.analysis import write_report
        from publicai_lab.sim.run import _slo_dict, prices_of
        sc = self.scenario
        lag = self.usage["send_lag_s"]
        extra = (f"## Live run\n\nTarget `{self.target}`; {len(self.requests)} requests in "
                 f"{self.wall_s:.1f} s wall{' (interrupted)' if self.interrupted else ''}. Send lag "
                 f"p50 {_q(lag, 0.5) * 1e3:.2f} ms, p99 {_q(lag, 0.99) * 1e3:.2f} ms, max "
                 f"{_q(lag, 1.0) * 1e3:.2f} ms (latencies are measured from the scheduled send).\n")
        path = write_report(out_dir, self.requests, None, None,
                            title=title or f"Live: {sc.name} ({self.policy_name})", scenario_name=sc.name,
                            policy=self.policy_name, seed=self.seed, slo=_slo_dict(sc.slo),
                            duration_s=self.duration_s, prices=prices_of(sc), extra_markdown=extra)
        self.usage.to_parquet(Path(out_dir) / "usage.parquet", index=False)
        return path

    def __repr__(self) -> str:
        ok = int((self.requests["status"] == "ok").sum()) if len(self.requests) else 0
        return (f"LiveResult(scenario={self.scenario.name!r}, target={self.target!r}, seed={self.seed}, "
                f"requests={len(self.requests)}, ok={ok}, duration_s={self.duration_s:.1f}"
                f"{', interrupted' if self.interrupted else ''})")


def _q(s: pd.Series, q: float) -> float:
    s = s.dropna()
    return float(s.quantile(q)) if len(s) else math.nan


# ---------------------------------------------------------------------- the run
def _root_url(target: str) -> str:
    t = target.rstrip("/")
    if t.endswith("/v1"):
        t = t[:-3]
    if "://" not in t:
        t = "http://" + t
    return t


class _Run:
    """State of one run: the client session, the plan, the rows gathered so far."""

    def __init__(self, scenario: Any, target: str, *, seed: int, run_id: str, policy_name: str,
                 api_keys: Mapping[str, Sequence[str]] | None, timeout_s: float | None,
                 endpoint: str, extra_headers: Mapping[str, str] | None, backend: str | None = None) -> None:
        self.scenario = scenario
        self.root = _root_url(target)
        self.target = target
        self.seed = seed
        self.run_id = run_id
        self.policy_name = policy_name
        self.keys = {t: list(k) if not isinstance(k, str) else [k] for t, k in (api_keys or {}).items()}
        self.timeout_s = timeout_s
        self.chat = endpoint == "chat"
        self.url = self.root + ("/v1/chat/completions" if self.chat else "/v1/completions")
        self.extra_headers = dict(extra_headers or {})
        self.rows: list[tuple] = []
        self.usage: list[tuple] = []
        self.done = 0
        self.t0 = 0.0
        self.bar: Any = None
        self.model_names: dict[str, str] = {}
        self.session: Any = None
        self.by_url = self._backends_by_url()
        self.default_backend = self._default_backend(backend)

    # -- where a response came from ------------------------------------------------------
    def _backends_by_url(self) -> dict[str, tuple[str, str, str]]:
        out = {}
        for partner, cluster in self.scenario.clusters():
            bid = self.scenario.backend_id(partner, cluster)
            if cluster.base_url:
                out[_root_url(cluster.base_url)] = (bid, partner.name, partner.country)
        return out

    def _default_backend(self, backend: str | None) -> tuple[str | None, str | None, str | None]:
        if backend is not None:
            partner, _cluster = self.scenario.backend(backend)
            return backend, partner.name, partner.country
        if self.root in self.by_url:
            return self.by_url[self.root]
        return (urlsplit(self.root).netloc or self.root, None, None)

    def _placement(self, headers: Any) -> tuple[str | None, str | None, str | None]:
        bid = headers.get("X-Selected-Backend")
        if not bid:
            return self.default_backend
        try:
            partner, _cluster = self.scenario.backend(bid)
            return bid, partner.name, partner.country
        except PublicAILabError:
            return bid, headers.get("X-Compute-Sponsor"), headers.get("X-Compute-Location")

    # -- one request ---------------------------------------------------------------------
    def _payload(self, spec: Any, prompt: str) -> bytes:
        model = self.model_names.get(spec.model, spec.model)
        body: dict[str, Any] = {"model": model, "max_tokens": int(spec.output_tokens), "ignore_eos": True,
                                "stream": True, "stream_options": {"include_usage": True}, **SAMPLING}
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return json.dumps(body, separators=(",", ":")).encode()

    def _headers(self, spec: Any) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream",
             "X-Client-Region": str(spec.client_region), **self.extra_headers}
        if spec.channel != "direct":
            h["X-Channel"] = str(spec.channel)
        keys = self.keys.get(spec.tier)
        if keys:
            try:
                k = int(str(spec.user).rsplit("-", 1)[-1])
            except ValueError:
                k = 0
            h["Authorization"] = f"Bearer {keys[k % len(keys)]}"
        return h

    def _record(self, spec: Any, status: str, error_type: str | None, placement: tuple, attempts: int,
                ttft: float = math.nan, e2e: float = math.nan, served_out: int | None = None,
                status_code: int = 0, served_prompt: int | None = None, chunks: int = 0,
                lag: float = math.nan) -> None:
        tpot = math.nan
        if status == "ok":
            n = served_out if served_out else int(spec.output_tokens)
            if n > 1:
                tpot = (e2e - ttft) / (n - 1)
        else:
            ttft = e2e = math.nan
        bid, partner, country = placement
        self.rows.append((self.run_id, "live", spec.request_id, spec.arrival_s, spec.client_region, spec.tier,
                          spec.model, int(spec.prompt_tokens), int(spec.output_tokens), self.policy_name,
                          bid, partner, country, attempts, status, error_type, math.nan, ttft, e2e, tpot))
        self.usage.append((spec.request_id, status_code,
                           -1 if served_prompt is None else served_prompt,
                           -1 if served_out is None else served_out, chunks, lag,
                           self.model_names.get(spec.model, spec.model)))
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    async def one(self, spec: Any, payload: bytes, headers: dict[str, str], sem: asyncio.Semaphore | None
                  ) -> None:
        import aiohttp

        loop = asyncio.get_running_loop()
        t_sched = self.t0 + spec.arrival_s
        placement = self.default_backend
        attempts = 1
        started = False
        first = math.nan
        chunks = 0
        code = 0
        lag = math.nan
        try:
            if sem is not None:
                await sem.acquire()
            try:
                lag = loop.time() - t_sched
                async with self.session.post(self.url, data=payload, headers=headers) as resp:
                    code = resp.status
                    placement = self._placement(resp.headers)
                    att = resp.headers.get("X-Gateway-Attempts") or resp.headers.get("X-Attempts")
                    if att and att.isdigit():
                        attempts = max(1, int(att))
                    if code != 200:
                        text = await resp.text()
                        status, etype = _classify(code, text)
                        self._record(spec, status, etype, placement, attempts, status_code=code, lag=lag)
                        return
                    started = True
                    usage = None
                    finished = False
                    async for line in resp.content:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            finished = True
                            break
                        if first != first:       # no content yet: parse until the first token
                            obj = json.loads(data)
                            if "error" in obj and "choices" not in obj:
                                raise _StreamError(str(obj.get("error"))[:200])
                            if _has_content(obj):
                                first = loop.time()
                                chunks += 1
                            if obj.get("usage"):
                                usage = obj["usage"]
                            continue
                        if b'"choices":[]' in data and b'"usage"' in data:
                            usage = json.loads(data).get("usage")
                        elif data.startswith(b'{"error"'):
                            raise _StreamError(data[:200].decode(errors="replace"))
                        else:
                            chunks += 1
                    end = loop.time()
                    if not finished:
                        raise _StreamError("stream ended without [DONE]")
                    served_p = served_o = None
                    if isinstance(usage, dict):
                        served_p = usage.get("prompt_tokens")
                        served_o = usage.get("completion_tokens")
                    if first != first:
                        first = end          # no content at all (zero-token answer): TTFT = E2E
                    self._record(spec, "ok", None, placement, attempts, ttft=first - t_sched,
                                 e2e=end - t_sched, served_out=served_o, status_code=code,
                                 served_prompt=served_p, chunks=chunks, lag=lag)
            finally:
                if sem is not None:
                    sem.release()
        except asyncio.CancelledError:
            self._record(spec, "incomplete", None, placement, attempts, status_code=code, chunks=chunks,
                         lag=lag)
            raise
        except asyncio.TimeoutError:
            self._record(spec, "timeout", "timeout", placement, attempts, status_code=code, chunks=chunks,
                         lag=lag)
        except (aiohttp.ClientError, OSError, _StreamError, ValueError) as exc:
            etype = "stream_error" if started else "connection_error"
            if isinstance(exc, aiohttp.ClientResponseError) and not started:
                etype = "connection_error"
            self._record(spec, "failed", etype, placement, attempts, status_code=code, chunks=chunks,
                         lag=lag)

    # -- before the run ------------------------------------------------------------------
    async def discover_models(self) -> None:
        """Map each scenario model to a name the target serves (canonical, an alias, or the only one)."""
        try:
            async with self.session.get(self.root + "/v1/models", timeout=_timeout(10)) as resp:
                served = [m["id"] for m in (await resp.json(content_type=None)).get("data", [])]
        except Exception:  # noqa: BLE001 - a target without /v1/models gets canonical names
            return
        for name, spec in self.scenario.models.items():
            for cand in (name, *spec.aliases):
                if cand in served:
                    self.model_names[name] = cand
                    break
            else:
                if len(served) == 1:
                    self.model_names[name] = served[0]

    async def calibrate(self, builder: PromptBuilder, url: str | None = None) -> None:
        """Fit tokens-per-word with ``/tokenize`` (two sizes) on the target, or on ``url`` (a
        backend behind a gateway that does not expose it); keep the defaults if it is absent."""
        root = self.root if url is None else _root_url(url)
        model = next(iter(self.model_names.values()), next(iter(self.scenario.models), None))
        if url is not None:
            try:
                async with self.session.get(root + "/v1/models", timeout=_timeout(10)) as resp:
                    model = (await resp.json(content_type=None))["data"][0]["id"]
            except Exception:  # noqa: BLE001 - keep the defaults
                return
        points = []
        # whole passes over the word list: the mean tokens per word of what prompts draw from
        for words in (len(PROMPT_WORDS), 2 * len(PROMPT_WORDS)):
            text = " ".join(PROMPT_WORDS[i % len(PROMPT_WORDS)] for i in range(words))
            count = await self._count_tokens(root, model, text)
            if count is None:
                return
            points.append((words, count))
        builder.fit(points[0][0], points[0][1], points[1][0], points[1][1])

    async def _count_tokens(self, root: str, model: Any, text: str) -> int | None:
        """The server's token count for ``text`` as a prompt: ``/tokenize`` if it has one, else a
        one-token completion's ``usage.prompt_tokens`` (works through any gateway)."""
        body: dict[str, Any] = {"model": model}
        if self.chat:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        try:
            async with self.session.post(root + "/tokenize", json=body, headers=self.extra_headers,
                                         timeout=_timeout(10)) as resp:
                if resp.status == 200:
                    count = (await resp.json(content_type=None)).get("count")
                    if isinstance(count, int):
                        return count
        except Exception:  # noqa: BLE001 - no /tokenize here: try a probe request
            pass
        probe = dict(body, max_tokens=1, stream=False)
        headers = dict(self.extra_headers)
        regions = list(self.scenario.workload.client_regions or {})
        if regions:
            headers["X-Client-Region"] = regions[0]
        key = next((k[0] for k in self.keys.values() if k), None)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = root + ("/v1/chat/completions" if self.chat else "/v1/completions")
        try:
            async with self.session.post(url, json=probe, headers=headers, timeout=_timeout(30)) as resp:
                if resp.status != 200:
                    return None
                count = ((await resp.json(content_type=None)).get("usage") or {}).get("prompt_tokens")
        except Exception:  # noqa: BLE001 - keep one token per word
            return None
        return count if isinstance(count, int) else None


class _StreamError(Exception):
    pass


def _timeout(seconds: float | None) -> Any:
    import aiohttp
    return aiohttp.ClientTimeout(total=seconds)


def _has_content(obj: Mapping[str, Any]) -> bool:
    for ch in obj.get("choices") or ():
        delta = ch.get("delta")
        if delta is not None:
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                return True
        elif ch.get("text"):
            return True
    return False


def _classify(code: int, text: str) -> tuple[str, str]:
    """HTTP status (+ error body) -> (status, error_type)."""
    if code == 429:
        return "rejected", "rate_limited"
    if code == 504:
        return "timeout", "timeout"         # the gateway's own request timeout, as in the sim
    if 400 <= code < 500:
        low = text.lower()
        if code in (400, 413) and ("context length" in low or "maximum context" in low):
            return "rejected", "context_length_exceeded"
        named = {401: "unauthorized", 403: "unauthorized", 404: "model_not_found", 413: "request_too_large"}
        return "rejected", named.get(code, f"http_{code}")
    return "failed", f"http_{code}"


def _limits(scenario: Any, requests: int | None, horizon_s: float | None) -> tuple[int | None, float | None]:
    """The simulator's rule: an explicit limit overrides both of the scenario's."""
    max_requests = requests if requests is not None else (None if horizon_s is not None else scenario.requests)
    horizon = horizon_s if horizon_s is not None else (None if requests is not None else scenario.horizon_s)
    if max_requests is None and horizon is None:
        raise PublicAILabError("set requests or horizon_s: the run would never end")
    return max_requests, horizon


async def run_live_async(scenario: Any, target: str, *, requests: int | None = None,
                         horizon_s: float | None = None, seed: int | None = None,
                         api_keys: Mapping[str, str | Sequence[str]] | str | Path | None = None,
                         concurrency_limit: int | None = None, progress: bool | None = None,
                         timeout_s: float | None = None, policy: str | None = None,
                         run_id: str | None = None, endpoint: str = "chat", calibrate: bool | str = True,
                         model_map: Mapping[str, str] | None = None,
                         headers: Mapping[str, str] | None = None, backend: str | None = None) -> LiveResult:
    """:func:`run_live` inside a running event loop. Cancelling it returns the partial result."""
    import aiohttp

    from publicai_lab.scenario import load_scenario
    from publicai_lab.workload import generate

    if not hasattr(scenario, "partners"):
        scenario = load_scenario(scenario)
    if endpoint not in ("chat", "completions"):
        raise PublicAILabError(f"endpoint: got {endpoint!r}; allowed: chat, completions")
    seed = scenario.seed if seed is None else int(seed)
    max_requests, horizon = _limits(scenario, requests, horizon_s)
    if isinstance(api_keys, (str, Path)):
        api_keys = load_api_keys(api_keys, scenario.workload.tiers)
    policy_name = policy or ("direct" if backend is not None else scenario.gateway.policy.name)
    run = _Run(scenario, target, seed=seed, run_id=run_id or f"live-{scenario.name}-{policy_name}-{seed}",
               policy_name=policy_name, api_keys=api_keys,  # type: ignore[arg-type]
               timeout_s=timeout_s if timeout_s is not None else scenario.gateway.timeout_s,
               endpoint=endpoint, extra_headers=headers, backend=backend)

    workload_ss, _router_ss = np.random.SeedSequence(seed).spawn(2)
    specs = generate(scenario, np.random.default_rng(workload_ss), max_requests=max_requests, horizon_s=horizon)
    # the prompts' words come from a stream of their own: the workload stream stays the sim's
    builder = PromptBuilder(np.random.default_rng(np.random.SeedSequence([seed, 0x9E3779B9])))

    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=concurrency_limit or 0, limit_per_host=0, force_close=False,
                                     enable_cleanup_closed=False, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, timeout=_timeout(run.timeout_s),
                                    auto_decompress=False, read_bufsize=2 ** 16)
    run.session = session
    sem = asyncio.Semaphore(concurrency_limit) if concurrency_limit else None
    show = sys.stderr.isatty() if progress is None else progress
    if show:
        from tqdm.auto import tqdm
        run.bar = tqdm(total=max_requests, desc=f"loadgen {scenario.name}", unit="req", mininterval=0.5)
    tasks: set[asyncio.Task[None]] = set()
    interrupted = False
    wall0 = time.perf_counter()
    last_s = 0.0
    try:
        await run.discover_models()
        if model_map:
            run.model_names.update(model_map)
        if calibrate:
            await run.calibrate(builder, calibrate if isinstance(calibrate, str) else None)
        run.t0 = loop.time() + _START_DELAY_S
        deadline = None if horizon is None else run.t0 + horizon
        for spec in specs:
            delay = run.t0 + spec.arrival_s - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)   # behind schedule: still let replies in
            task = loop.create_task(run.one(spec, run._payload(spec, builder.text(spec.prompt_tokens)),
                                            run._headers(spec), sem))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait(set(tasks), timeout=timeout)
        last_s = (loop.time() - run.t0) if deadline is None else horizon  # type: ignore[assignment]
    except asyncio.CancelledError:
        interrupted = True
        last_s = loop.time() - run.t0
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()          # we answer the cancellation by returning what we have
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await session.close()
        if run.bar is not None:
            run.bar.close()
    wall_s = time.perf_counter() - wall0
    return _result(run, scenario, max(0.0, last_s), wall_s, interrupted, builder)


def _result(run: _Run, scenario: Any, duration_s: float, wall_s: float, interrupted: bool,
            builder: PromptBuilder) -> LiveResult:
    rows = sorted(run.rows, key=lambda r: r[2])
    cols = {name: list(col) for name, col in zip(COLUMNS, zip(*rows))} if rows else {c: [] for c in COLUMNS}
    requests = frame_from_columns(cols)
    usage = pd.DataFrame(sorted(run.usage, key=lambda r: r[0]), columns=list(_USAGE_COLUMNS))
    usage = usage.astype({"request_id": "int64", "status_code": "int64", "served_prompt_tokens": "int64",
                          "served_output_tokens": "int64", "chunks": "int64", "send_lag_s": "float64"})
    return LiveResult(requests=requests, usage=usage, scenario=scenario, target=run.target, seed=run.seed,
                      run_id=run.run_id, policy_name=run.policy_name, duration_s=float(duration_s),
                      wall_s=wall_s, interrupted=interrupted,
                      prompt_calibration={"tokens_per_word": builder.tokens_per_word,
                                          "overhead_tokens": builder.overhead_tokens,
                                          "calibrated": float(builder.calibrated)})


def _loop_factory() -> Any:
    try:
        import uvloop
        return uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        return None


def run_live(scenario: Any, target: str, **kwargs: Any) -> LiveResult:
    """Replay ``scenario``'s workload against ``target`` (a gateway or one backend) in real time.

    Keywords: ``requests``/``horizon_s`` (override the scenario's limits, as in ``simulate``),
    ``seed`` (default the scenario's: the same requests as the simulator), ``api_keys`` (tier →
    key or keys, or a key file; user ``tier-k`` uses key ``k mod len``), ``concurrency_limit``
    (cap on open requests; default none: truly open loop), ``progress`` (None: a bar on a
    terminal), ``timeout_s`` (client timeout, default ``scenario.gateway.timeout_s``), ``policy``
    (the label in the records; default the scenario's policy name), ``endpoint`` ("chat" or
    "completions"), ``calibrate`` (fit prompt length with the target's ``/tokenize``; a URL: use that
    backend's instead, for gateways that do not expose it; False: one token per word), ``model_map`` (scenario
    model → name to send), ``headers`` (sent with every request), ``backend`` (the scenario's
    ``partner/cluster`` the target *is*, when sending straight to one backend: fills backend_id,
    partner and country of responses that carry no gateway headers).

    Ctrl-C (or cancelling the task of :func:`run_live_async`) ends the run early and returns what
    was gathered: finished requests as they ended, those in flight as ``incomplete``.
    """
    # from a notebook (a running loop) this runs on a private loop in a thread
    return run_sync(lambda: run_live_async(scenario, target, **kwargs), name="loadgen",
                    loop_factory=_loop_factory())


# ---------------------------------------------------------------------- CLI
def _cmd_loadgen(args: argparse.Namespace) -> int:
    from publicai_lab.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    headers = dict(h.split(":", 1) for h in (args.header or []))
    result = run_live(scenario, args.target, requests=args.requests, horizon_s=args.horizon_s, seed=args.seed,
                      api_keys=args.api_key_file, concurrency_limit=args.concurrency_limit,
                      progress=None if not args.quiet else False, timeout_s=args.timeout_s,
                      policy=args.policy_label, endpoint=args.endpoint,
                      calibrate=args.tokenize_url or not args.no_calibrate,
                      headers={k.strip(): v.strip() for k, v in headers.items()}, backend=args.backend)
    df = result.requests
    counts = df["status"].value_counts().to_dict()
    ok = df[df["status"] == "ok"]
    lag = result.usage["send_lag_s"]
    print(repr(result))
    print(f"sent {len(df):,} requests in {result.wall_s:.1f} s wall; status {counts}; "
          f"TTFT p50 {_q(ok['ttft_s'], .5):.3f} s, E2E p50 {_q(ok['e2e_s'], .5):.3f} s, "
          f"p99 {_q(ok['e2e_s'], .99):.3f} s; send lag p99 {_q(lag, .99) * 1e3:.1f} ms")
    if args.out:
        path = result.report(args.out)
        print(f"report: {path}")
    return 130 if result.interrupted else 0


def add_cli(subparsers: Any) -> None:
    """Register ``loadgen``."""
    p = subparsers.add_parser(
        "loadgen", help="replay a scenario's workload against a live endpoint (open loop)",
        description="Send the scenario's requests (the simulator's arrivals, lengths, regions and tiers for "
                    "the same seed) to TARGET at their arrival times, streaming; record them in the "
                    "simulator's schema (source=live) and optionally write a report.",
        epilog="Example: publicai-lab loadgen --scenario scenarios/toy.yaml --target http://127.0.0.1:4000 "
               "--requests 200 --out out/live-toy")
    p.add_argument("--scenario", required=True, help="scenario YAML file")
    p.add_argument("--target", required=True, help="base URL of a gateway or backend (with or without /v1)")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--requests", type=int, help="send this many requests (overrides the scenario)")
    lim.add_argument("--horizon-s", type=float, dest="horizon_s", help="send for this many seconds")
    p.add_argument("--seed", type=int, help="workload seed (default: the scenario's)")
    p.add_argument("--out", help="write report.md, figures, requests.parquet here")
    p.add_argument("--api-key-file", help="tier -> API key(s) file (JSON/YAML or 'KEY TIER' lines)")
    p.add_argument("--concurrency-limit", type=int, help="cap on open requests (default: none, open loop)")
    p.add_argument("--timeout-s", type=float, help="client timeout (default: the scenario's gateway timeout)")
    p.add_argument("--policy-label", help="policy name written into the records (default: the scenario's)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--no-calibrate", action="store_true", help="do not fit prompt length with /tokenize")
    cal.add_argument("--tokenize-url", help="fit prompt length with this backend's /tokenize (behind a gateway)")
    p.add_argument("--backend", help="the target is this scenario backend (partner/cluster), not a gateway")
    p.add_argument("--header", action="append", help="extra header 'Name: value' (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_loadgen)
