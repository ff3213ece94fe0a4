"""The engine's speed right now, measured the way the calibration measured it: a speed anchor.

A perf model fitted on a shared host holds for the minutes of its calibration; afterwards the
host moves the engine's speed (on the CI machine by 5–20 % over minutes, most often slower:
``docs/fidelity.md`` §4 and §7). A model that is right about *how* step time grows with batch and
context can still be wrong about the *scale* by then. The anchor re-measures the scale only:
``groups`` closed groups of ``concurrency`` streamed requests of ``prompt_tokens`` + ``output_tokens``
(as one cell of the calibration sweep), their decode interval cut into the calibration's windows
(:func:`~publicai_lab.live.calibrate.decode_windows`), and the median ratio of the observed step to
the perf model's step for the same batch and context. Multiply the model's step times by it
(:func:`~publicai_lab.live.fidelity.scaled_step_times`) and the model describes the engine now.

It is a calibration measurement — a fixed shape, closed groups, no replayed workload — so a
simulation at the anchored speed is still a prediction of the replay, not a fit to it.
:func:`~publicai_lab.live.fidelity.fidelity_at` (``anchor=True``) takes one reading before every
live repeat and one after the last, pools their decode windows and simulates at the pooled factor
(:func:`speed_windows` + :func:`factor_from_windows`): about a minute of the engine's time per level,
spread over the level's repeats.

Prompt tokens are read apart. After every group one lone prompt of ``prefill_tokens`` is sent
with one output token, and the engine's own prefill time of it (vLLM's prefill-time histogram) gives
the factor on the model's prompt-token terms (:func:`prefill_factor_from_windows`): a prefill step
is arithmetic on hundreds of tokens at once, a decode step of a few sequences is mostly reading the
weights, and the host does not slow the two alike (docs/fidelity.md §10); at 75–90 % of saturation
prefills are half the engine's time.

Read it *against its own reference*. The fitted model is not exact at the anchor's cell (decode
R² 0.86–0.99: a few per cent at any one shape), so the bare factor carries that cell's residual:
in one run the engine ran 3 % faster than its model through every replay while the anchor read
5–10 % faster (docs/fidelity.md §8). ``calibrate`` therefore takes the same groups at evenly spaced
points of its sweep and stores their factor against the fitted model as ``speed_anchor`` (and the
prefills' as ``speed_anchor_prefill``); the factor to simulate at is a reading divided by that
reference — the change of the engine's speed since its calibration, on one fixed shape.

    >>> from publicai_lab.live.anchor import speed_factor
    >>> speed_factor("http://127.0.0.1:8000", "publicai-lab/small-llama", perf)  # doctest: +SKIP
    1.07
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from publicai_lab.errors import PublicAILabError

__all__ = ["speed_factor", "speed_factor_async", "speed_windows", "speed_windows_async", "anchor_windows",
           "factor_from_windows", "c0_share_from_windows", "prefill_factor_from_windows", "observation_counts",
           "checked_factor", "calibrated_reference", "ANCHOR_SHAPE"]

#: the anchor's groups: a batch of 8 (the middle of the calibration's concurrencies), prompts and
#: outputs near the workloads' medians. Twelve groups take about 14 s with the small model on one core:
#: the engine's speed over any 5 s moves ±10 % on this host while a live repeat averages 50–100 s, and
#: four readings of five groups were 6.8 and 15.8 points from the engine's speed at two levels
#: (docs/fidelity.md §8–9). After every group one lone prompt of ``prefill_tokens`` (one output
#: token), its prefill step timed by the engine (vLLM's prefill-time histogram): the host does not
#: slow a prefill step as it slows a decode step (docs/fidelity.md §10); 0: no prefill probes
ANCHOR_SHAPE: dict[str, int] = {"concurrency": 8, "prompt_tokens": 144, "output_tokens": 56, "groups": 12,
                                "prefill_tokens": 512}


async def anchor_windows(client: Any, pool: Any, rng: np.random.Generator, *,
                         concurrency: int = ANCHOR_SHAPE["concurrency"], prompt_tokens: int = ANCHOR_SHAPE["prompt_tokens"],
                         output_tokens: int = ANCHOR_SHAPE["output_tokens"],
                         groups: int = ANCHOR_SHAPE["groups"],
                         prefill_tokens: int = ANCHOR_SHAPE["prefill_tokens"]) -> list[dict[str, float]]:
    """Run the anchor's closed groups through ``client`` (calibrate's ``_Client``), each followed by
    one lone prefill of ``prefill_tokens``, and return their observations (step_s, decode_seqs,
    context_tokens, prefill_tokens): decode windows (decode_seqs > 0) for :func:`factor_from_windows`,
    engine-timed prefill steps (prefill_tokens > 0; none where the server shows no prefill-time
    histogram) for :func:`prefill_factor_from_windows`."""
    from publicai_lab.live.calibrate import _WINDOWS, decode_windows

    if (concurrency < 1 or groups < 1 or prompt_tokens < 1 or output_tokens < _WINDOWS + 2
            or prefill_tokens < 0):
        raise PublicAILabError(f"speed anchor: needs concurrency >= 1, groups >= 1, prompt_tokens >= 1, "
                               f"output_tokens >= {_WINDOWS + 2} and prefill_tokens >= 0; got {concurrency}, "
                               f"{groups}, {prompt_tokens}, {output_tokens}, {prefill_tokens}")
    windows: list[dict[str, float]] = []
    for _ in range(groups):
        t0 = time.perf_counter()
        traces = await asyncio.gather(*(
            client.stream([int(i) for i in rng.choice(pool, size=prompt_tokens)], output_tokens, t0)
            for _ in range(concurrency)))
        windows += [{**w, "prefill_tokens": 0} for w in decode_windows(traces)]
        if prefill_tokens:
            step = await _engine_prefill_s(client, [int(i) for i in rng.choice(pool, size=prefill_tokens)])
            if step > 0:
                windows.append({"step_s": step, "decode_seqs": 0, "context_tokens": 0.0,
                                "prefill_tokens": prefill_tokens})
    return windows


async def _engine_prefill_s(client: Any, prompt_ids: list[int]) -> float:
    """The engine's own prefill time of one lone request (vLLM's prefill-time histogram around it),
    NaN where the server shows no such histogram."""
    from publicai_lab.live.calibrate import _metric_means

    before = await client.metrics()
    if before is None:
        return math.nan
    await client.stream(prompt_ids, 1, time.perf_counter())
    return _metric_means(before, await client.metrics())["engine_prefill_s"]


def observation_counts(windows: Sequence[Mapping[str, float]]) -> tuple[int, int]:
    """How many of the anchor's observations are decode windows and how many engine-timed prefills."""
    decode = sum(1 for w in windows if w["decode_seqs"] > 0)
    return decode, sum(1 for w in windows if w.get("prefill_tokens", 0) > 0)


def factor_from_windows(windows: Sequence[Mapping[str, float]], perf: Any) -> float:
    """The median over the decode ``windows`` of observed step / ``perf``'s step for the same batch
    and context (NaN without any)."""
    ratios = [w["step_s"] / perf.step_s(0, int(w["decode_seqs"]), w["context_tokens"])
              for w in windows if w["decode_seqs"] > 0]
    return float(np.median(ratios)) if ratios else math.nan


def c0_share_from_windows(windows: Sequence[Mapping[str, float]], perf: Any) -> float:
    """The step's constant over the whole modelled step at the anchor's decode windows (median; NaN
    without any): where the simulation splits a slowdown between c0 and the per-sequence terms
    (:func:`~publicai_lab.live.fidelity.scaled_step_times`, ``constant_share``), the shape it was read at."""
    shares = [perf.c0_s / perf.step_s(0, int(w["decode_seqs"]), w["context_tokens"])
              for w in windows if w["decode_seqs"] > 0]
    return float(np.median(shares)) if shares else math.nan


def prefill_factor_from_windows(windows: Sequence[Mapping[str, float]], perf: Any, c0_factor: float) -> float:
    """The factor on ``perf``'s prompt-token terms (c_prefill, c_prefill_sq) that fits the engine-timed
    prefills among ``windows``, the step's constant c0 taken at ``c0_factor`` (the decode steps' factor
    on it: the decode factor, or c0's own where a slowdown is split onto it): the median of
    (observed − c0·c0_factor) / prompt-token terms. NaN without prefills or without prompt-token terms."""
    ratios = []
    for w in windows:
        p = int(w.get("prefill_tokens", 0))
        prompt_s = perf.c_prefill_s * p + perf.c_prefill_sq_s * p * p
        if p > 0 and prompt_s > 0:
            ratios.append((w["step_s"] - perf.c0_s * c0_factor) / prompt_s)
    return float(np.median(ratios)) if ratios else math.nan


async def speed_windows_async(target: str, model: str, *, seed: int = 0, api_key: str | None = None,
                              timeout_s: float = 120.0, sampling: Mapping[str, Any] | None = None,
                              **shape: int) -> list[dict[str, float]]:
    """:func:`speed_windows` inside a running event loop. ``sampling``: the requests' sampling fields
    (None: the calibration's, :data:`~publicai_lab.live.calibrate.SAMPLING` — keep them, or the
    calibration's reference no longer applies; ``benchmarks/sampling_cost.py`` varies them)."""
    from publicai_lab.live.calibrate import _open_client

    async with _open_client(target, model, api_key=api_key, timeout_s=timeout_s, sampling=sampling) as client:
        pool = np.asarray(await client.token_pool())
        return await anchor_windows(client, pool, np.random.default_rng(seed), **shape)


def checked_factor(windows: Sequence[Mapping[str, float]], perf: Any, target: str) -> float:
    """:func:`factor_from_windows`, or a one-line error naming ``target`` where the windows give no
    positive factor (none at all, say)."""
    factor = factor_from_windows(windows, perf)
    if not (factor > 0 and math.isfinite(factor)):
        raise PublicAILabError(f"speed anchor at {target}: got factor {factor!r} from "
                               f"{observation_counts(windows)[0]} decode windows")
    return factor


async def speed_factor_async(target: str, model: str, perf: Any, **kwargs: Any) -> float:
    """:func:`speed_factor` inside a running event loop."""
    return checked_factor(await speed_windows_async(target, model, **kwargs), perf, target)


def calibrated_reference(perf_model: str | Path, kind: str = "decode") -> float | None:
    """The reference reading a calibration saved in a perf-model file (a ``data/perf_models`` name or
    a path): ``speed_anchor`` (``kind="decode"``) or ``speed_anchor_prefill`` (``"prefill"``); None
    where it has none (fits made before the reference existed, published fits)."""
    import json

    from publicai_lab.perf import perf_model_file

    if kind not in ("decode", "prefill"):
        raise PublicAILabError(f"calibrated_reference: kind must be 'decode' or 'prefill'; got {kind!r}")
    key = "speed_anchor" if kind == "decode" else "speed_anchor_prefill"
    value = json.loads(perf_model_file(perf_model).read_text()).get(key)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def speed_windows(target: str, model: str, **kwargs: Any) -> list[dict[str, float]]:
    """One anchor reading at ``target`` (serving ``model``): the decode windows of ``groups`` closed
    groups, for :func:`factor_from_windows` — pool several readings' windows for one factor.
    Keywords as :func:`speed_factor`."""
    from publicai_lab.live._sync import run_sync

    return run_sync(lambda: speed_windows_async(target, model, **kwargs), name="speed-anchor")


def speed_factor(target: str, model: str, perf: Any, **kwargs: Any) -> float:
    """The factor on ``perf``'s step times that fits the engine at ``target`` (serving ``model``) now:
    the median over the decode windows of ``groups`` closed groups of observed step / modelled step.
    Keywords as :func:`speed_factor_async`: ``concurrency``, ``prompt_tokens``, ``output_tokens``,
    ``groups``, ``prefill_tokens`` (0: no prefill probes, which this factor does not read),
    ``seed``, ``api_key``, ``timeout_s``."""
    from publicai_lab.live._sync import run_sync

    return run_sync(lambda: speed_factor_async(target, model, perf, **kwargs), name="speed-anchor")
