"""How close is the calibrated simulator to one live vLLM server? The fidelity table.

The recipe (issue 4's acceptance): measure the live server's saturation throughput, replay the
scenario's workload at fractions of it (25/50/75/90 %) several times live and once in the
simulator (same seed, so the very same requests), and put the simulator's error beside the live
run-to-run spread for E2E p50/p90 and TTFT p50. An error is only judged where the live repeats
agree (spread ≤ ``judge_spread``, 10 %): near saturation a few per cent of rate difference
explodes in the queue and no simulator can be held to a number the real thing does not repeat.

The set-up that makes a CPU vLLM server repeat (measured on the 2-core CI machine, see
``docs/fidelity.md``): the engine core and its worker alone on one core (``VLLMServer(cpus="1",
api_cpus="0")``), the API server, gateway and load generator on the other, a warm-up run first.
With the API server time-sharing the engine's core, step times swung 50 % run to run and the
calibrated simulator was 2–3× too fast (a quarter of that core went to HTTP and detokenising).

Even so the engine's speed drifts with the host (10–60 % from one minute to the next, the shared
L3 and Python's heap: ``benchmarks/host_noise.py``). With ``engine_url`` the table also reads the
engine's own inter-token latency from vLLM's ``/metrics`` during the repeats and reports how far the
engine was from its calibration and the error at that measured speed (``docs/fidelity.md`` §4).
With ``anchor=True`` the simulation itself runs at the engine's speed re-measured by calibration
groups around every level's repeats (:mod:`publicai_lab.live.anchor`; ``docs/fidelity.md`` §7).

    >>> from publicai_lab.live.fidelity import one_server_scenario, fidelity_table  # doctest: +SKIP
    >>> sc = one_server_scenario(load_scenario("scenarios/toy.yaml"), "tiny-llama_cpu_tp1")
    >>> result = fidelity_table(sc, gateway_url, repeats=3, engine_url=server_url)
    >>> print(result.to_markdown())
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from publicai_lab.errors import PublicAILabError

__all__ = ["one_server_scenario", "measure_saturation_rps", "fidelity_at", "fidelity_table", "FidelityResult",
           "LevelFidelity", "engine_itl_totals", "engine_itl_during", "mean_itl_s", "scaled_step_times", "step_time_factor_for_itl",
           "segment_plan", "joined_segments", "simulate_segments", "simulate_at_speed", "TOLERANCES", "LEVELS",
           "CONSTANT_SHARE", "constant_factor", "ANCHOR_MISSED_BY"]

#: relative error allowed per metric (issue 4: E2E p50/p90 within 10 %, TTFT p50 within 15 %)
TOLERANCES: dict[str, float] = {"e2e_p50_s": 0.10, "e2e_p90_s": 0.10, "ttft_p50_s": 0.15}
#: load levels as fractions of the measured saturation throughput
LEVELS: tuple[float, ...] = (0.25, 0.50, 0.75, 0.90)

Log = Callable[[str], None]

#: the speed anchor this far from the engine's own speed in a level's repeats (engine drift minus the
#: anchor's slowdown): its readings did not stand for the minutes they were read around. Over the 30
#: kept benchmark runs (sessions 10–16) 27 of 120 levels were further off (sd 4–6 points a level), and
#: 5 of the 7 judged rows that missed (4 of the 6 runs) were among them — each within ±5.2 % at
#: the engine's measured speed (docs/fidelity.md §18–19).
#: ``fidelity_table(remeasure_if_anchor_off_by=…)`` measures such a level once more.
ANCHOR_MISSED_BY = 0.06


def one_server_scenario(scenario: Any, perf_model: Any = None, *, replicas: int = 1) -> Any:
    """``scenario`` cut to its first cluster, with ``replicas`` replica(s) and ``perf_model``.

    ``perf_model``: a ``data/perf_models`` name or path, a coefficients mapping, a
    :class:`~publicai_lab.perf.StepTimeModel`, or None to keep the cluster's. The live side is
    one server; this is the simulated twin it is compared with.
    """
    from publicai_lab.perf import StepTimeModel, load_perf_model
    from publicai_lab.scenario import load_scenario

    if not hasattr(scenario, "partners"):
        scenario = load_scenario(scenario)
    doc = scenario.model_dump(mode="json")
    first_partner = doc["partners"][0]
    cluster = first_partner["clusters"][0]
    first_partner["clusters"] = [cluster]
    doc["partners"] = [first_partner]
    cluster.update(replicas=replicas, gpus=replicas * int(cluster.get("tensor_parallel", 1)))
    if perf_model is not None:
        if isinstance(perf_model, (str, Path)):
            perf_model = load_perf_model(perf_model)
        if isinstance(perf_model, StepTimeModel):
            perf_model = perf_model.coefficients()
        cluster["perf_model"] = dict(perf_model)
    # drop what referred to the clusters that are gone: their regions, fallbacks to other models, faults
    region = cluster["region"]
    doc["network"]["rtt_ms"] = {client: {r: ms for r, ms in row.items() if r == region}
                                for client, row in doc["network"]["rtt_ms"].items()}
    doc["gateway"]["model_fallbacks"] = {}
    doc["faults"] = []
    model = scenario.resolve_model(cluster["model"])
    doc["workload"]["models"] = {model: 1.0}
    return load_scenario(doc)


def _backend_id(scenario: Any) -> str:
    return scenario.backend_id(*scenario.clusters()[0])


def measure_saturation_rps(scenario: Any, target: str, *, requests: int = 300, concurrency: int | None = None,
                           repeats: int = 2, log: Log | None = None) -> float:
    """The live server's saturation throughput for this workload, requests per second.

    A closed loop at ``concurrency`` (default: the cluster's ``max_num_seqs``, a full batch — more
    would only queue) over ``requests`` of the scenario's requests; the median over ``repeats``
    of ok requests / makespan.
    """
    from publicai_lab.analysis.compare import metric_values
    from publicai_lab.live.loadgen import run_live

    cluster = scenario.clusters()[0][1]
    conc = int(concurrency or cluster.engine.max_num_seqs)
    fast = scenario.with_overrides(rate_per_s=1000.0)    # arrivals far faster than service: closed loop
    values = []
    for k in range(repeats):
        res = run_live(fast, target, requests=requests, concurrency_limit=conc, progress=False,
                       run_id=f"saturation-{k}")
        ok = res.requests[res.requests["status"] == "ok"]
        if len(ok) < 0.9 * len(res.requests):
            raise PublicAILabError(f"saturation run {k}: only {len(ok)} of {len(res.requests)} requests ok")
        values.append(metric_values(res.requests)["throughput_rps"])
        if log:
            log(f"saturation run {k + 1}/{repeats}: {values[-1]:.1f} req/s at concurrency {conc}")
    return float(np.median(values))


def engine_itl_totals(server_url: str) -> tuple[float, float] | None:
    """(sum s, count) of vLLM's inter-token-latency histogram at ``server_url``/metrics, None without.

    vLLM stamps tokens in the engine process, so this is the engine's own speed, free of the HTTP
    path and of the client's clock."""
    import urllib.request

    from publicai_lab.live.calibrate import ITL_HISTOGRAMS, _root_url
    from publicai_lab.live.metrics import histogram_totals, parse_prometheus

    try:
        with urllib.request.urlopen(_root_url(server_url) + "/metrics", timeout=10) as resp:
            samples = parse_prometheus(resp.read().decode())
    except OSError:
        return None
    return histogram_totals(samples, ITL_HISTOGRAMS)


@contextmanager
def engine_itl_during(server_url: str | None) -> Iterator[list[float]]:
    """``with engine_itl_during(url) as itl: …`` — after the block ``itl`` holds [sum s, count] of the
    inter-token latencies vLLM counted while it ran (:func:`engine_itl_totals` read around it; [0, 0]
    without ``server_url``, without its ``/metrics`` or where none were counted)."""
    accrued = [0.0, 0.0]
    before = engine_itl_totals(server_url) if server_url else None
    yield accrued
    after = engine_itl_totals(server_url) if before else None
    if before and after and after[1] > before[1]:
        accrued[:] = [after[0] - before[0], after[1] - before[1]]


def mean_itl_s(frame: pd.DataFrame) -> float:
    """Token-weighted mean gap between output tokens of the ok requests: Σ(e2e − ttft) / Σ(output − 1),
    the quantity vLLM's inter-token-latency histogram averages."""
    ok = frame[(frame["status"] == "ok") & (frame["output_tokens"] >= 2)]
    gaps = float((ok["output_tokens"] - 1).sum())
    return float((ok["e2e_s"] - ok["ttft_s"]).sum()) / gaps if gaps > 0 else math.nan


#: the step-time terms of a prompt's tokens: a separate factor where the anchor timed prefills
PREFILL_COEFFS = ("c_prefill_s", "c_prefill_sq_s")
#: the part of the anchor's slowdown the simulation puts on the step's constant c0 alone
#: (:func:`scaled_step_times`). The engine's slowdown in a replay, against the anchor's at batch 8,
#: falls with load as a c0-heavy slowdown predicts (regression slope 0.87 / 0.61 / 0.58 / 0.58 at
#: 25 / 50 / 75 / 90 % over thirteen runs, 1.01 / 0.77 / 0.62 / 0.57 over nine later ones). Chosen
#: by re-simulating 24 kept benchmark runs against their own live repeats (docs/fidelity.md §16):
#: leaving each run out, the share that best matched the other runs' engine speed was 0.4–0.6; at 0.4
#: one judged row of 153 stays outside tolerance (23 of 24 runs clean), with one factor (0) five
#: (20 runs), at section 15's 0.7 three (22 runs). 0.4: the smaller correction where 0.4–0.6 tie
CONSTANT_SHARE = 0.4


def constant_factor(factor: float, constant_share: float, anchor_c0_share: float) -> float:
    """The factor on the step's constant c0 when a share ``constant_share`` of the slowdown
    ``factor`` − 1, read where c0 is ``anchor_c0_share`` of the step, sits on c0 alone
    (:func:`scaled_step_times`)."""
    return 1.0 + (factor - 1.0) * (1.0 - constant_share + constant_share / anchor_c0_share)


def scaled_step_times(perf: Any, factor: float, prefill_factor: float | None = None, *,
                      constant_share: float = 0.0, anchor_c0_share: float | None = None) -> Any:
    """``perf`` with every step-time coefficient times ``factor`` — the prompt-token terms times
    ``prefill_factor`` where given; the frontend's terms unchanged.

    ``constant_share`` (0–1, with ``anchor_c0_share``, the step's constant c0 over the whole step at
    the shape ``factor`` was read at): the part of the slowdown that sits in c0 alone. The host does
    not slow a step's constant (scheduling, sampling, Python) as it slows its per-sequence arithmetic
    (docs/fidelity.md §12, §15): with share a, a slowdown s = factor − 1 read at c0 share q8 becomes
    c0 × (1 + s·(1 − a + a/q8)) and the per-sequence terms × (1 + s·(1 − a)) — the step at the
    reading's shape is still ``factor`` times the model's, a step whose c0 share is q is 1 + s·(1 − a
    + a·q/q8) times. 0: every decode term × ``factor``."""
    from publicai_lab.live.calibrate import COEFFS

    if not 0.0 <= constant_share <= 1.0:
        raise PublicAILabError(f"scaled_step_times: constant_share must be between 0 and 1; got {constant_share!r}")
    pf = factor if prefill_factor is None else prefill_factor
    scaled = {k: getattr(perf, k) * (pf if k in PREFILL_COEFFS else factor) for k in COEFFS}
    label = f"×{factor:.3f}" + (f", prefill ×{pf:.3f}" if prefill_factor is not None else "")
    if constant_share > 0.0 and anchor_c0_share:
        if not 0.0 < anchor_c0_share <= 1.0:
            raise PublicAILabError(f"scaled_step_times: anchor_c0_share must be in (0, 1]; got {anchor_c0_share!r}")
        per_sequence = 1.0 + (factor - 1.0) * (1.0 - constant_share)
        scaled.update(c0_s=perf.c0_s * constant_factor(factor, constant_share, anchor_c0_share),
                      c_decode_s=perf.c_decode_s * per_sequence, c_ctx_s=perf.c_ctx_s * per_sequence)
        label += f" ({constant_share:.0%} of it on c0)"
    return replace(perf, **scaled, source=f"{perf.source} {label}")


#: seed offset between a repeat's segments (segment 0 keeps the scenario's seed; the warm-up takes seed + 1)
SEGMENT_SEED_STRIDE = 1000


def segment_plan(requests: int, segments: int, seed: int) -> list[tuple[int, int]]:
    """(seed, requests) of each of a repeat's ``segments``: ``requests`` split as evenly as can be,
    segment j drawn with ``seed + j·SEGMENT_SEED_STRIDE`` (one segment: the plain run)."""
    if segments < 1 or requests < segments:
        raise PublicAILabError(f"fidelity: segments must be between 1 and requests ({requests}); got {segments!r}")
    sizes = [requests // segments + (1 if j < requests % segments else 0) for j in range(segments)]
    return [(seed + j * SEGMENT_SEED_STRIDE, n) for j, n in enumerate(sizes)]


def joined_segments(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One frame of a repeat's segments run one after another: each segment's arrivals shifted past
    the previous segments' makespans (first arrival to last completion) and its request ids past
    theirs, so percentiles pool the segments and throughput counts their busy time, not the gaps."""
    if len(frames) == 1:
        return frames[0]
    parts, offset_s, first_id = [], 0.0, 0
    for frame in frames:
        f = frame.copy()
        t0 = float(f["arrival_s"].min()) if len(f) else 0.0
        f["arrival_s"] = f["arrival_s"] - t0 + offset_s
        f["request_id"] = f["request_id"] - int(f["request_id"].min() if len(f) else 0) + first_id
        if len(f):
            offset_s = float((f["arrival_s"] + f["e2e_s"].fillna(0.0)).max())
            first_id = int(f["request_id"].max()) + 1
        parts.append(f)
    return pd.concat(parts, ignore_index=True)


def simulate_segments(scenario: Any, plan: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """The simulation of a repeat cut into ``plan``'s segments (:func:`segment_plan`), joined."""
    from publicai_lab.sim.run import simulate

    return joined_segments([simulate(scenario, seed=seed, requests=n, progress=False).requests for seed, n in plan])


def simulate_at_speed(scenario: Any, perf: Any, factor: float, *, requests: int,
                      prefill_factor: float | None = None, segments: int = 1, constant_share: float = 0.0,
                      anchor_c0_share: float | None = None) -> pd.DataFrame:
    """The request frame of the one-server ``scenario`` simulated with ``perf``'s step times ×
    ``factor`` (prompt-token terms × ``prefill_factor`` where given; the slowdown split between c0
    and the per-sequence terms by ``constant_share``, :func:`scaled_step_times`), in ``segments``."""
    sc = one_server_scenario(scenario, scaled_step_times(perf, factor, prefill_factor, constant_share=constant_share,
                                                         anchor_c0_share=anchor_c0_share))
    return simulate_segments(sc, segment_plan(requests, segments, sc.seed))


def fidelity_at(scenario: Any, target: str, rate_rps: float, *, requests: int = 300, repeats: int = 3,
                warmup_requests: int = 50, engine_url: str | None = None, anchor: bool = False,
                anchor_model: str | None = None, anchor_reference: float | None = None,
                anchor_prefill_reference: float | None = None, anchor_shape: Mapping[str, int] | None = None,
                segments: int = 1, constant_share: float | None = None, log: Log | None = None) -> LevelFidelity:
    """Simulate and replay ``scenario`` at ``rate_rps`` (Poisson): a :class:`LevelFidelity` holding the
    comparison of the simulation against ``repeats`` live runs through ``target`` (a gateway or the server).

    ``warmup_requests`` at the same rate go first, unrecorded: an idle CPU server's first seconds
    at a new load are slower (caches, the hypervisor waking an idle core).

    ``engine_url`` (the vLLM server itself, for its ``/metrics``): the engine's mean inter-token
    latency is read around every live repeat; the factor on the step times that makes the
    simulation's equal their median is found (``engine_drift`` = factor − 1: how much slower the
    engine ran than calibrated), and that simulation compared too (``conditioned``): what the model
    predicts *given* the engine's speed during the repeats. A diagnostic that separates the model's
    error from the machine's drift, not a prediction: the factor comes from the live runs.

    ``anchor`` (needs ``engine_url``; ``anchor_model``: the name the server serves, default the
    scenario's model): the engine's speed is re-measured with calibration groups
    (:func:`~publicai_lab.live.anchor.speed_windows`) before every live repeat and after the last,
    and the simulation runs at their decode windows pooled — the calibrated model, re-anchored to
    the minutes of the replays. The simulation at the calibration's own speed is kept as
    ``unanchored``. ``anchor_reference``: the anchor's reading at calibration time (the perf
    model's ``speed_anchor``, saved by ``calibrate``); the readings are divided by it, so the
    simulation moves by the change of the engine's speed since its calibration and not by the
    model's residual at the anchor's shape (None: the bare readings). ``anchor_prefill_reference``
    (the perf model's ``speed_anchor_prefill``): the same for the anchor's engine-timed prefills; with
    it the prompt-token terms run at the prefills' own factor (the host does not slow a prefill step
    as it slows a decode step: docs/fidelity.md §10), without it at the decode factor. ``anchor_shape``: keywords
    of :func:`~publicai_lab.live.anchor.anchor_windows` over :data:`~publicai_lab.live.anchor.ANCHOR_SHAPE`
    (``groups``: fewer for a quick look; keep the calibration's shape, or its reference no longer applies).
    ``constant_share`` (None: :data:`CONSTANT_SHARE`; 0: one factor on every decode term): the part of
    the slowdown the anchor reads that the simulation puts on the step's constant c0 alone
    (:func:`scaled_step_times`) — the host slows a step's constant more than its per-sequence work,
    so a replay of larger batches slows less than the anchor's batch of 8 (docs/fidelity.md §15).

    ``segments``: every repeat is run as that many shorter runs of the workload one after another
    (:func:`segment_plan`: the same segments, so the same requests, in every repeat and in the
    simulation), the anchor read before every segment and after the last: readings close to the
    minutes they stand for, where four readings around three repeats sample the engine's wandering
    speed at a few spots only. Measured (docs/fidelity.md §13): the readings then follow each
    repeat's speed (its E2E p50 against the level's, correlation 0.88 over 36 repeats), but a
    level's error stays what the plain run gives — what is left is an offset the whole level
    shares, not where in time the anchor reads. Each segment starts from an idle server, in the
    simulation as live. With segments, pass an ``anchor_shape`` of fewer ``groups`` to keep a
    level's anchor time."""
    from publicai_lab.analysis.compare import compare
    from publicai_lab.live.anchor import (c0_share_from_windows, checked_factor, factor_from_windows,
                                          observation_counts, prefill_factor_from_windows, speed_windows)
    from publicai_lab.live.loadgen import run_live
    from publicai_lab.perf import engine_params_for

    if anchor and not engine_url:
        raise PublicAILabError("fidelity_at: anchor=True needs engine_url (the vLLM server itself)")
    share = CONSTANT_SHARE if constant_share is None else float(constant_share)
    if not 0.0 <= share <= 1.0:
        raise PublicAILabError(f"fidelity_at: constant_share must be between 0 and 1; got {constant_share!r}")
    for name, value in (("anchor_reference", anchor_reference), ("anchor_prefill_reference", anchor_prefill_reference)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise PublicAILabError(f"fidelity_at: {name} must be a positive factor; got {value!r}")
    sc = scenario.with_overrides(rate_per_s=float(rate_rps))
    plan = segment_plan(requests, segments, sc.seed)
    partner, cluster = sc.clusters()[0]
    perf = engine_params_for(sc, partner, cluster).perf
    served = anchor_model or sc.resolve_model(cluster.model)

    readings: list[list[dict[str, float]]] = []
    reference = anchor_reference or 1.0
    prefill_factor: float | None = None

    def read_anchor() -> float:
        """One reading: its windows join the level's pool; its own factor is kept for the notes."""
        windows = speed_windows(str(engine_url), served, seed=len(anchors), **(anchor_shape or {}))
        readings.append(windows)
        return factor_from_windows(windows, perf) / reference

    if warmup_requests:
        run_live(sc.with_overrides(seed=sc.seed + 1), target, requests=warmup_requests, progress=False,
                 run_id="warmup")
    lives, engine_itls, anchors = [], [], []
    for k in range(repeats):
        parts, itl_sum_s, itl_count = [], 0.0, 0.0
        for j, (seed, n) in enumerate(plan):
            if anchor:
                anchors.append(read_anchor())
            with engine_itl_during(engine_url) as itl:
                res = run_live(sc.with_overrides(seed=seed), target, requests=n, progress=False,
                               run_id=f"fidelity-{rate_rps:.1f}-{k}" + (f"-{j}" if segments > 1 else ""))
            itl_sum_s, itl_count = itl_sum_s + itl[0], itl_count + itl[1]
            parts.append(res.requests)
        if itl_count > 0:
            engine_itls.append(itl_sum_s / itl_count)
        lives.append(joined_segments(parts))
        if log:
            ok = lives[-1][lives[-1]["status"] == "ok"]
            recent = anchors[-segments:]
            log(f"  {rate_rps:.1f} req/s live {k + 1}/{repeats}: {len(ok)}/{len(lives[-1])} ok, "
                f"E2E p50 {ok['e2e_s'].median() * 1e3:.0f} ms"
                + (f"; speed anchor{'s' if len(recent) > 1 else ''} {' / '.join(f'×{a:.3f}' for a in recent)}"
                   if recent else ""))
    title = f"{scenario.name} at {rate_rps:.1f} req/s" + (f" in {segments} segments a repeat" if segments > 1 else "")
    sim_frame = simulate_segments(sc, plan)
    unanchored = None
    if anchor:
        anchors.append(read_anchor())
        unanchored = compare(sim_frame, live_repeats=lives, title=f"{title}, at the calibration's speed")
        anchor_pool = [w for windows in readings for w in windows]
        bare = checked_factor(anchor_pool, perf, str(engine_url))
        factor = bare / reference
        c0_share = c0_share_from_windows(anchor_pool, perf)
        if not c0_share > 0:            # a model without a step constant: nothing to split onto
            share = 0.0
        # the prefills' c0 at the factor the decode steps put on it (its own, where the slowdown is split onto it)
        c0_bare = constant_factor(bare, share, c0_share) if share else bare
        prefill_ratio = prefill_factor_from_windows(anchor_pool, perf, c0_bare)
        if anchor_prefill_reference and prefill_ratio > 0:
            prefill_factor = prefill_ratio / anchor_prefill_reference
        sim_frame = simulate_at_speed(sc, perf, factor, requests=requests, prefill_factor=prefill_factor,
                                      segments=segments, constant_share=share, anchor_c0_share=c0_share)
        title += f", step times ×{factor:.3f}" + (f", prefill ×{prefill_factor:.3f}" if prefill_factor else "") \
            + (f", {share:.0%} of it on c0" if share else "") + " (speed anchor)"
    cmp = compare(sim_frame, live_repeats=lives, title=title)
    level = LevelFidelity(cmp, engine_itls_s=engine_itls, sim_itl_s=mean_itl_s(sim_frame), anchor_factors=anchors,
                          anchor_factor=factor if anchor else math.nan, unanchored=unanchored,
                          anchor_readings=readings,
                          anchor_prefill_factor=prefill_factor if prefill_factor else math.nan)
    if anchors:
        against = f" against the calibration's own reading ×{anchor_reference:.3f}" if anchor_reference else ""
        n_decode, n_prefill = observation_counts(anchor_pool)
        where = "segment" if segments > 1 else "repeat"
        cmp.notes.append(f"speed anchors (calibration groups before each {where} and after the last{against}): "
                         f"{' / '.join(f'×{a:.3f}' for a in anchors)}; simulated at their {n_decode} "
                         f"decode windows pooled, ×{level.anchor_factor:.3f}"
                         + (f"; prompt tokens at their {n_prefill} engine-timed prefills pooled, "
                            f"×{prefill_factor:.3f}" if prefill_factor else "")
                         + (f"; {share:.0%} of the slowdown on the step's constant c0 (c0 {c0_share:.0%} of the "
                            f"anchor's step)" if share else ""))
    if engine_itls and level.sim_itl_s > 0:
        factor, cond = step_time_factor_for_itl(sc, float(np.median(engine_itls)), requests=requests,
                                                segments=segments)
        level.step_time_factor = factor
        level.conditioned = compare(cond, live_repeats=lives, title=f"{cmp.title}, step times ×{factor:.3f}")
        cmp.notes.append(f"engine inter-token latency (vLLM /metrics) per live repeat: "
                         f"{' / '.join(f'{x * 1e3:.2f}' for x in engine_itls)} ms; simulated "
                         f"{level.sim_itl_s * 1e3:.2f} ms; the simulation matches the median with step times "
                         f"×{factor:.3f} (engine drift {level.engine_drift:+.1%})")
    return level


def step_time_factor_for_itl(scenario: Any, itl_s: float, *, requests: int, lo: float = 0.125,
                             hi: float = 8.0, rel_tol: float = 0.002, segments: int = 1) -> tuple[float, pd.DataFrame]:
    """The factor on the one cluster's step times that makes the simulated mean inter-token
    latency (:func:`mean_itl_s`) equal ``itl_s``, by bisection on a log scale; and that simulation's
    request frame (the workload in ``segments``, as :func:`fidelity_at` ran it).

    Not a plain ratio of latencies: a slower engine also holds more requests at once, so its
    batches, and so its steps, grow too — the latency ratio overstates the speed ratio."""
    from publicai_lab.perf import engine_params_for

    if not (itl_s > 0 and math.isfinite(itl_s)):
        raise PublicAILabError(f"step_time_factor_for_itl: itl_s must be a positive number of seconds; got {itl_s!r}")
    partner, cluster = scenario.clusters()[0]
    perf = engine_params_for(scenario, partner, cluster).perf

    def run(f: float) -> pd.DataFrame:
        return simulate_at_speed(scenario, perf, f, requests=requests, segments=segments)

    for _ in range(40):
        mid = math.sqrt(lo * hi)
        res = run(mid)
        itl = mean_itl_s(res)
        if not math.isfinite(itl) or abs(itl / itl_s - 1.0) <= rel_tol:
            break
        lo, hi = (mid, hi) if itl < itl_s else (lo, mid)
    return mid, res


@dataclass
class LevelFidelity:
    """One load level: the :class:`~publicai_lab.analysis.compare.Comparison` (sim vs the live
    repeats) and, when the server's ``/metrics`` were read, the engine's own inter-token latency per
    repeat, the simulation's, and the comparison conditioned on the engine's measured speed."""

    comparison: Any
    engine_itls_s: list[float] = field(default_factory=list)
    sim_itl_s: float = math.nan
    step_time_factor: float = math.nan
    conditioned: Any = None
    anchor_factors: list[float] = field(default_factory=list)
    #: the factor the simulation ran at: every reading's decode windows pooled (NaN without anchors)
    anchor_factor: float = math.nan
    unanchored: Any = None
    #: every anchor reading's observations (decode windows and prefills), in the order taken
    anchor_readings: list[list[dict[str, float]]] = field(default_factory=list)
    #: the factor the prompt-token terms ran at (the anchor's prefills; NaN: the decode factor)
    anchor_prefill_factor: float = math.nan
    #: earlier measurements of the same level that were taken again (``fidelity_table``'s
    #: ``remeasure_if_anchor_off_by``), first first
    earlier_attempts: list[LevelFidelity] = field(default_factory=list)

    @property
    def engine_drift(self) -> float:
        """How much slower (+) or faster (−) the engine's steps were in the live repeats than the
        perf model says: the step-time factor that reproduces the engine's measured mean
        inter-token latency (median of the repeats), minus 1. NaN without the server's ``/metrics``."""
        return self.step_time_factor - 1.0

    @property
    def anchor_to_engine(self) -> float:
        """How far the speed anchor was from the engine's own speed in the repeats: the engine's drift
        minus the anchor's slowdown (+: the engine ran slower than the anchor said; NaN without the
        anchor or the server's ``/metrics``)."""
        return self.engine_drift - (self.anchor_factor - 1.0)


@dataclass
class FidelityResult:
    """The fidelity table: one row per (load level, metric).

    Columns: level (fraction of saturation), rate_rps, metric, sim, live (median of the repeats),
    rel_error, live_spread ((max − min)/median), tolerance, judged (live_spread ≤ judge_spread),
    ok (|rel_error| ≤ tolerance), engine_drift and conditioned_error (NaN unless the server's
    ``/metrics`` were read: see :func:`fidelity_at`), anchor (the speed anchor's median factor − 1)
    and unanchored_error (the error at the calibration's own speed; both NaN without anchors),
    live_1 … live_k, attempt (1, or 2 where the level was measured again). ``saturation_rps`` is the
    measured saturation; ``levels`` holds each level's :class:`LevelFidelity` (the measurement judged);
    ``superseded`` the rows of measurements taken again (same columns; empty without), shown, not judged.
    """

    table: pd.DataFrame
    saturation_rps: float
    judge_spread: float = 0.10
    levels: dict[float, LevelFidelity] = field(default_factory=dict)
    superseded: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: the anchor-to-engine distance beyond which a level with a missed judged row was measured again
    remeasure_if_anchor_off_by: float | None = None
    #: the anchor readings' shape where it was not :data:`~publicai_lab.live.anchor.ANCHOR_SHAPE`'s
    anchor_shape: Mapping[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every judged row within its tolerance (and at least one row judged)."""
        judged = self.table[self.table["judged"]]
        return bool(len(judged)) and bool(judged["ok"].all())

    def to_markdown(self) -> str:
        lines = [f"Saturation (measured, closed loop at a full batch): {self.saturation_rps:.1f} req/s. "
                 f"Errors are judged where the live repeats agree within {self.judge_spread:.0%}.", ""]
        drift = "engine_drift" in self.table and self.table["engine_drift"].notna().any()
        if drift:
            lines += ["Engine drift: how much slower (+) the engine's steps were in the live repeats than the perf "
                      "model says — the factor on the simulated step times that reproduces the engine's own mean "
                      "inter-token latency (vLLM's `/metrics`, median of the repeats), minus 1. Conditioned: the "
                      "simulation at that factor — a diagnostic that separates the model's error from the "
                      "machine's drift, not a prediction (the factor comes from the live runs).", ""]
        anchored = "anchor" in self.table and self.table["anchor"].notna().any()
        if anchored:
            from publicai_lab.live.anchor import ANCHOR_SHAPE

            a = {**ANCHOR_SHAPE, **self.anchor_shape}
            lines += [f"Speed anchor: the engine's speed re-measured with calibration groups ({a['groups']} closed "
                      f"groups of {a['concurrency']} requests of {a['prompt_tokens']} + {a['output_tokens']} tokens, "
                      f"each followed by a lone {a['prefill_tokens']}-token prompt whose prefill the engine times) "
                      "before every live repeat and after the last; the simulation (sim, error, verdict) runs at "
                      "the readings' decode windows pooled — its prompt-token terms at their prefills pooled — "
                      "each divided by the calibration's own reading of the same where the perf model has one "
                      "(without a prefill reference, the prompt-token terms run at the decode factor), shown as "
                      "how much slower (+) than calibrated; where the level's notes say so, part of that slowdown "
                      "sits on the step's constant c0 alone, so larger batches than the anchor's slow less "
                      "(docs/fidelity.md §15). Error at the calibration's speed: the same simulation "
                      "without it.", ""]
        head = ["load", "req/s", "metric", "sim ms", "live ms (median)", "live runs ms", "error", "live spread",
                "tolerance", "verdict"] + (["speed anchor", "error at calibration speed"] if anchored else []) \
            + (["engine drift", "conditioned error"] if drift else [])
        lines += self._rows(self.table, head, anchored, drift)
        notes = [f"- {level:.0%}: {note}" for level, lf in self.levels.items() for note in lf.comparison.notes]
        if notes:
            lines += [""] + notes
        if not self.superseded.empty:
            off_by = self.remeasure_if_anchor_off_by or ANCHOR_MISSED_BY
            lines += ["", f"Measured again: at these levels a judged row missed while the speed anchor was more than "
                          f"{off_by:.0%} from the engine's own speed in the repeats (its readings did not stand for "
                          "them); the measurement above replaces this one, shown and not judged:", ""]
            lines += self._rows(self.superseded, head, anchored, drift, judged_word="missed")
            notes = [f"- {level:.0%}, attempt {k}: {note}" for level, lf in self.levels.items()
                     for k, earlier in enumerate(lf.earlier_attempts, 1) for note in earlier.comparison.notes]
            if notes:
                lines += [""] + notes
        return "\n".join(lines) + "\n"

    def _rows(self, table: pd.DataFrame, head: list[str], anchored: bool, drift: bool,
              judged_word: str = "FAIL") -> list[str]:
        """The Markdown table of ``table``'s rows under ``head``."""
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        run_cols = [c for c in table.columns if c.startswith("live_") and c[5:].isdigit()]
        for r in table.to_dict("records"):
            verdict = ("pass" if r["ok"] else judged_word) if r["judged"] else "not judged (live spread > "\
                f"{self.judge_spread:.0%})"
            if r.get("attempt", 1) > 1:
                verdict += " (measured again)"
            runs = " / ".join(f"{r[c] * 1e3:.0f}" for c in run_cols if r.get(c) == r.get(c))
            cells = [f"{r['level']:.0%}", f"{r['rate_rps']:.1f}", r["metric"], f"{r['sim'] * 1e3:.1f}",
                     f"{r['live'] * 1e3:.1f}", runs, f"{r['rel_error']:+.1%}", f"{r['live_spread']:.1%}",
                     f"±{r['tolerance']:.0%}", verdict]
            if anchored:
                prefill = r.get("anchor_prefill", math.nan)
                cells += [f"{r['anchor']:+.1%}" + (f" (prefill {prefill:+.1%})" if math.isfinite(prefill) else ""),
                          f"{r['unanchored_error']:+.1%}"]
            if drift:
                cells += [f"{r['engine_drift']:+.1%}", f"{r['conditioned_error']:+.1%}"]
            lines.append("| " + " | ".join(cells) + " |")
        return lines


def fidelity_table(scenario: Any, target: str, *, levels: Sequence[float] = LEVELS,
                   saturation_rps: float | None = None, requests: int = 300, repeats: int = 3,
                   tolerances: Mapping[str, float] = TOLERANCES, judge_spread: float = 0.10,
                   warmup_requests: int = 100, engine_url: str | None = None, anchor: bool = False,
                   anchor_model: str | None = None, anchor_reference: float | None = None,
                   anchor_prefill_reference: float | None = None, anchor_shape: Mapping[str, int] | None = None,
                   segments: int = 1, constant_share: float | None = None,
                   remeasure_if_anchor_off_by: float | None = None, log: Log | None = None) -> FidelityResult:
    """Measure saturation (unless given), then :func:`fidelity_at` every level (``engine_url``: the
    engine's measured speed beside every level; ``anchor``: the simulation re-anchored to the
    engine's speed by calibration groups around every level's repeats; ``segments``: every repeat
    run in that many parts, the anchor read between them; see there); see the module doc.

    ``remeasure_if_anchor_off_by`` (with ``anchor`` and ``engine_url``; e.g. :data:`ANCHOR_MISSED_BY`;
    None: never): a level where a judged row missed *and* the anchor was further than this from the
    engine's own speed in the repeats (:attr:`LevelFidelity.anchor_to_engine`) is measured once more
    (warm-up, readings, repeats) and the second measurement is judged; the first is kept in
    ``superseded`` and the level's ``earlier_attempts``. Its readings did not stand for the minutes
    they were read around — a comparison without a valid speed reference, as repeats more than
    ``judge_spread`` apart are one without a noise floor. A miss with the anchor on the engine's
    speed is the model's and stands, as does a second miss (docs/fidelity.md §18–19).

    ``warmup_requests`` (at the scenario's rate, unrecorded) go before the saturation measurement;
    with ``saturation_rps`` given there is none: every level warms up at its own rate anyway."""
    from publicai_lab.live.loadgen import run_live

    if remeasure_if_anchor_off_by is not None and not (remeasure_if_anchor_off_by > 0 and anchor and engine_url):
        raise PublicAILabError("fidelity_table: remeasure_if_anchor_off_by needs a positive distance, anchor=True and "
                               f"engine_url; got {remeasure_if_anchor_off_by!r}, anchor={anchor!r}, "
                               f"engine_url={engine_url!r}")
    sat = saturation_rps
    if sat is None:
        if warmup_requests:
            run_live(scenario, target, requests=warmup_requests, progress=False, run_id="warmup")
        sat = measure_saturation_rps(scenario, target, log=log)
    if not (sat > 0 and math.isfinite(sat)):
        raise PublicAILabError(f"saturation: got {sat!r} req/s")
    rows: list[dict[str, Any]] = []
    superseded: list[dict[str, Any]] = []
    levels_out: dict[float, LevelFidelity] = {}
    for level in levels:
        rate = level * sat
        if log:
            log(f"level {level:.0%}: {rate:.1f} req/s")
        earlier: list[LevelFidelity] = []
        for attempt in (1, 2):
            lf = fidelity_at(scenario, target, rate, requests=requests, repeats=repeats, engine_url=engine_url,
                             anchor=anchor, anchor_model=anchor_model, anchor_reference=anchor_reference,
                             anchor_prefill_reference=anchor_prefill_reference, anchor_shape=anchor_shape,
                             segments=segments, constant_share=constant_share, log=log)
            level_rows = _level_rows(level, rate, lf, tolerances, judge_spread, attempt=attempt)
            missed = any(r["judged"] and not r["ok"] for r in level_rows)
            off = lf.anchor_to_engine
            anchor_missed = remeasure_if_anchor_off_by is not None and abs(off) > remeasure_if_anchor_off_by
            if attempt == 2 or not (missed and anchor_missed):    # NaN (no engine speed read): no second look
                break
            if log:
                log(f"level {level:.0%}: a judged row missed with the speed anchor {off:+.1%} off the engine's own "
                    f"speed (more than {remeasure_if_anchor_off_by:.0%}): measured again")
            superseded += level_rows
            earlier.append(lf)
        lf.earlier_attempts = earlier
        levels_out[level] = lf
        rows += level_rows
    return FidelityResult(pd.DataFrame(rows), sat, judge_spread, levels_out,
                          superseded=pd.DataFrame(superseded, columns=list(rows[0]) if rows else None),
                          remeasure_if_anchor_off_by=remeasure_if_anchor_off_by, anchor_shape=dict(anchor_shape or {}))


def _level_rows(level: float, rate_rps: float, lf: LevelFidelity, tolerances: Mapping[str, float],
                judge_spread: float, *, attempt: int) -> list[dict[str, Any]]:
    """The fidelity table's rows of one level's measurement (:class:`FidelityResult` for the columns)."""
    t = lf.comparison.table
    rows = []
    for metric, tol in tolerances.items():
        row = t.loc[metric]
        spread = float(row["live_spread"])
        err = float(row["rel_error"])
        cond_err = float(lf.conditioned.table.loc[metric, "rel_error"]) if lf.conditioned is not None else math.nan
        unanchored_err = (float(lf.unanchored.table.loc[metric, "rel_error"]) if lf.unanchored is not None
                          else math.nan)
        rows.append({"level": level, "rate_rps": rate_rps, "metric": metric, "sim": float(row["sim"]),
                     "live": float(row["live"]), "rel_error": err, "live_spread": spread, "tolerance": tol,
                     "judged": bool(spread <= judge_spread), "ok": bool(abs(err) <= tol),
                     "engine_drift": lf.engine_drift, "conditioned_error": cond_err,
                     "anchor": lf.anchor_factor - 1.0, "anchor_prefill": lf.anchor_prefill_factor - 1.0,
                     "unanchored_error": unanchored_err,
                     **{c: float(row[c]) for c in t.columns if c.startswith("live_") and c[5:].isdigit()},
                     "attempt": attempt})
    return rows
