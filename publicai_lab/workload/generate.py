"""Turn a scenario's workload into a lazy, ordered stream of :class:`RequestSpec`.

Reading guide: :func:`generate` validates eagerly, builds a :class:`_Plan` (everything that is
fixed for the whole run: names, cumulative shares, the trace), then :func:`_stream` loops over
arrival chunks. Per chunk every attribute is drawn as one numpy vector and the specs are built
by a single ``map(RequestSpec, …)`` over plain lists, which is what makes a million requests
cheap: numpy does the maths, the only per-request Python work is the constructor itself.

Randomness. The injected generator is used once, to seed a ``SeedSequence`` whose children
drive one concern each (arrivals, models, prompt lengths, output lengths, regions, tiers, users,
channels). So the same generator state gives the same stream, and changing one concern (say
the tier shares) leaves the others (arrival times, lengths, …) unchanged — common random
numbers when comparing scenarios. Chunk sizes never depend on the stopping limits, so a run
capped at N requests is a prefix of a longer run with the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from publicai_lab.errors import ScenarioError
from publicai_lab.types import RequestSpec
from publicai_lab.workload.arrivals import (
    DEFAULT_CHUNK,
    diurnal_arrivals,
    gamma_arrivals,
    poisson_arrivals,
    trace_arrivals_indexed,
)
from publicai_lab.workload.lengths import _attr, sample_lengths
from publicai_lab.workload.traces import read_trace

__all__ = ["generate", "FROM_SCENARIO", "ARRIVAL_KINDS"]

ARRIVAL_KINDS = ("poisson", "gamma", "diurnal", "trace")

#: the concerns that each get their own random stream, in spawn order (append only: reordering
#: would change every seeded stream)
_STREAMS = ("arrivals", "models", "prompt", "output", "regions", "tiers", "users", "channels")

_REPO_ROOT = Path(__file__).resolve().parents[2]


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array (safe for tuples, which ``np.array`` would turn into a 2-D array)."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def _cum_shares(source: str | None, field: str, shares: Sequence[float]) -> np.ndarray:
    """Cumulative normalised shares for categorical draws by ``searchsorted``."""
    w = np.asarray([float(s) for s in shares], dtype=np.float64)
    if w.size == 0 or np.any(~np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ScenarioError.at(source, field, list(shares),
                               "allowed: non-negative shares, at least one positive")
    cum = np.cumsum(w / w.sum())
    cum[-1] = 1.0
    return cum


def _pick(rng: np.random.Generator, cum: np.ndarray, n: int) -> np.ndarray:
    """``n`` category indices drawn with the probabilities behind ``cum``."""
    if cum.size == 1:
        return np.zeros(n, dtype=np.int64)
    return np.searchsorted(cum, rng.random(n), side="right").clip(0, cum.size - 1)


def _items(mapping: Any) -> list[tuple[str, Any]]:
    return list(mapping.items()) if mapping else []


def _resolve_path(scenario: Any, raw: str | os.PathLike[str]) -> Path:
    """A trace path as written, else next to the scenario file, else under the repository root."""
    p = Path(raw)
    if p.is_absolute() or p.exists():
        return p
    source = getattr(scenario, "source", None)
    candidates = [Path(source).parent / p] if source else []
    candidates.append(_REPO_ROOT / p)
    return next((c for c in candidates if c.exists()), p)


@dataclass
class _Plan:
    """Everything about the workload that does not change during the run."""

    arrivals_kind: str
    model_names: np.ndarray
    model_cum: np.ndarray
    region_names: np.ndarray
    region_residency: np.ndarray
    region_cum: np.ndarray
    region_offsets_h: np.ndarray
    tier_names: np.ndarray
    tier_cum: np.ndarray
    tier_users: np.ndarray
    channel_names: np.ndarray
    channel_cum: np.ndarray
    #: the arrivals trace (kind ``trace``), whose rows also give ``trace``-kind lengths
    trace: pd.DataFrame | None
    #: for ``trace``-kind lengths without trace arrivals: the column of the length's own file,
    #: resampled uniformly
    own_prompt: np.ndarray | None
    own_output: np.ndarray | None


def _plan(scenario: Any) -> _Plan:
    source = getattr(scenario, "source", None)
    wl = scenario.workload
    arrivals = wl.arrivals
    kind = str(_attr(arrivals, "kind", default="poisson"))
    if kind not in ARRIVAL_KINDS:
        raise ScenarioError.at(source, "workload.arrivals.kind", kind,
                               f"allowed: {', '.join(ARRIVAL_KINDS)}")

    models = _items(getattr(wl, "models", None))
    if not models:  # no mix given: every model the scenario declares, equally
        models = [(name, 1.0) for name in (getattr(scenario, "models", None) or {})]
    if not models:
        raise ScenarioError.at(source, "workload.models", {}, "allowed: at least one model")
    resolve = getattr(scenario, "resolve_model", None)
    canonical = [resolve(name) if resolve else name for name, _ in models]  # once per key

    regions = _items(getattr(wl, "client_regions", None))
    if regions:
        region_names = [name for name, _ in regions]
        region_shares = [float(r.share) for _, r in regions]
        residency = [tuple(getattr(r, "residency", None) or ()) for _, r in regions]
        offsets = [float(getattr(r, "utc_offset_h", 0.0) or 0.0) for _, r in regions]
    else:
        region_names, region_shares, residency, offsets = ["default"], [1.0], [()], [0.0]

    tiers = _items(getattr(wl, "tiers", None))
    if tiers:
        tier_names = [name for name, _ in tiers]
        tier_shares = [float(t.share) for _, t in tiers]
        tier_users = [max(1, int(getattr(t, "users", 1) or 1)) for _, t in tiers]
    else:
        tier_names, tier_shares, tier_users = ["free"], [1.0], [1]

    channels = _items(getattr(wl, "channels", None)) or [("direct", 1.0)]

    trace = None
    trace_path = _attr(arrivals, "path", "trace", "file")
    if kind == "trace":
        if trace_path is None:
            raise ScenarioError.at(source, "workload.arrivals.path", None,
                                   "allowed: a trace file path for trace arrivals")
        trace = read_trace(_resolve_path(scenario, trace_path), _attr(arrivals, "format"))
        if trace.empty:
            raise ScenarioError.at(source, "workload.arrivals.path", str(trace_path),
                                   "allowed: a trace with at least one request")
    own: dict[str, np.ndarray | None] = {"prompt_tokens": None, "output_tokens": None}
    for field in own:
        dist = getattr(wl, field)
        if str(_attr(dist, "kind", default="")) == "trace" and trace is None:
            own_path = _attr(dist, "path", "trace", "file")
            if own_path is None:
                raise ScenarioError.at(source, f"workload.{field}.kind", "trace",
                                       "allowed only with trace arrivals or a 'path' of its own")
            frame = read_trace(_resolve_path(scenario, own_path), _attr(dist, "format"))
            own[field] = frame[field].to_numpy(dtype=np.int64)

    return _Plan(
        arrivals_kind=kind,
        model_names=_objects(canonical),
        model_cum=_cum_shares(source, "workload.models", [s for _, s in models]),
        region_names=_objects(region_names),
        region_residency=_objects(residency),
        region_cum=_cum_shares(source, "workload.client_regions", region_shares),
        region_offsets_h=np.asarray(offsets, dtype=np.float64),
        tier_names=_objects(tier_names),
        tier_cum=_cum_shares(source, "workload.tiers", tier_shares),
        tier_users=np.asarray(tier_users, dtype=np.float64),
        channel_names=_objects([name for name, _ in channels]),
        channel_cum=_cum_shares(source, "workload.channels", [s for _, s in channels]),
        trace=trace,
        own_prompt=own["prompt_tokens"],
        own_output=own["output_tokens"],
    )


def _arrival_chunks(scenario: Any, plan: _Plan, rng: np.random.Generator, chunk: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Yields ``(times_s, region_index or None, trace_row or None)`` per chunk."""
    arrivals = scenario.workload.arrivals
    rate = _attr(arrivals, "rate_per_s", "rate")
    kind = plan.arrivals_kind
    if kind == "trace":
        assert plan.trace is not None
        for times, rows in trace_arrivals_indexed(
                plan.trace["arrival_s"].to_numpy(),
                time_scale=float(_attr(arrivals, "time_scale", default=1.0)),
                loop=bool(_attr(arrivals, "loop", default=False)), chunk=chunk):
            yield times, None, rows
        return
    if rate is None:
        raise ScenarioError.at(getattr(scenario, "source", None), "workload.arrivals.rate_per_s",
                               None, f"allowed: a positive rate for {kind} arrivals")
    if kind == "poisson":
        for times in poisson_arrivals(float(rate), rng, chunk=chunk):
            yield times, None, None
    elif kind == "gamma":
        cv = float(_attr(arrivals, "cv", default=1.0))
        for times in gamma_arrivals(float(rate), cv, rng, chunk=chunk):
            yield times, None, None
    else:  # diurnal
        curve = _attr(arrivals, "curve")
        if curve is None:  # loaded scenarios always carry one; this serves bare stand-ins
            from publicai_lab.scenario import DEFAULT_DIURNAL_CURVE as curve
        start_h = float(_attr(arrivals, "start_hour_utc", "start_utc_hour", default=0.0))
        shares = np.diff(plan.region_cum, prepend=0.0)
        for times, region in diurnal_arrivals(float(rate), curve, shares, plan.region_offsets_h,
                                              rng, start_hour_utc=start_h, chunk=chunk):
            yield times, region, None


def _lengths(dist: Any, n: int, rng: np.random.Generator, trace_col: np.ndarray | None,
             rows: np.ndarray | None, own: np.ndarray | None) -> np.ndarray:
    """Lengths for one chunk: trace-aligned, resampled from a length trace, or drawn."""
    if str(_attr(dist, "kind", default="")) != "trace":
        return sample_lengths(dist, n, rng)
    lo = _attr(dist, "min", "min_tokens")
    hi = _attr(dist, "max", "max_tokens")
    if trace_col is not None and rows is not None:
        values = trace_col[rows]
    else:
        assert own is not None
        values = own[rng.integers(0, own.size, n)]
    if lo is None and hi is None:
        return values
    return np.clip(values, max(1, int(lo or 1)), None if hi is None else int(hi))


def _split(rng: np.random.Generator) -> dict[str, np.random.Generator]:
    """One child generator per concern, seeded from four draws of ``rng``."""
    root = np.random.SeedSequence(rng.integers(0, 2**63, size=4).tolist())
    return {name: np.random.default_rng(child)
            for name, child in zip(_STREAMS, root.spawn(len(_STREAMS)))}


def _stream(scenario: Any, plan: _Plan, streams: dict[str, np.random.Generator],
            max_requests: int | None, horizon_s: float | None, chunk: int
            ) -> Iterator[RequestSpec]:
    wl = scenario.workload
    trace_prompt = trace_output = None
    if plan.trace is not None:
        trace_prompt = plan.trace["prompt_tokens"].to_numpy(dtype=np.int64)
        trace_output = plan.trace["output_tokens"].to_numpy(dtype=np.int64)

    next_id = 0
    for times, region, rows in _arrival_chunks(scenario, plan, streams["arrivals"], chunk):
        n = times.size
        # draw full chunks whatever the limits, so a capped run is a prefix of a longer one
        models = _pick(streams["models"], plan.model_cum, n)
        prompt = _lengths(wl.prompt_tokens, n, streams["prompt"], trace_prompt, rows,
                          plan.own_prompt)
        output = _lengths(wl.output_tokens, n, streams["output"], trace_output, rows,
                          plan.own_output)
        if region is None:
            region = _pick(streams["regions"], plan.region_cum, n)
        tiers = _pick(streams["tiers"], plan.tier_cum, n)
        users = (streams["users"].random(n) * plan.tier_users[tiers]).astype(np.int64)
        channels = _pick(streams["channels"], plan.channel_cum, n)

        keep = n
        if horizon_s is not None:
            keep = int(np.searchsorted(times, horizon_s, side="right"))
        if max_requests is not None:
            keep = min(keep, max_requests - next_id)
        if keep <= 0:
            return
        sl = slice(0, keep)
        tier_names = plan.tier_names[tiers[sl]].tolist()
        yield from map(
            RequestSpec,
            range(next_id, next_id + keep),
            times[sl].tolist(),
            plan.model_names[models[sl]].tolist(),
            prompt[sl].tolist(),
            output[sl].tolist(),
            plan.region_names[region[sl]].tolist(),
            tier_names,
            plan.channel_names[channels[sl]].tolist(),
            plan.region_residency[region[sl]].tolist(),
            map("{}-{}".format, tier_names, users[sl].tolist()),
        )
        next_id += keep
        if keep < n or next_id == max_requests:
            return


class _FromScenario:
    """Default marker: "take this limit from the scenario" (None means "no limit")."""

    def __repr__(self) -> str:
        return "FROM_SCENARIO"


#: the default of :func:`generate`'s limits: use ``scenario.requests`` / ``scenario.horizon_s``
FROM_SCENARIO: Any = _FromScenario()


def generate(scenario: Any, rng: np.random.Generator, *,
             max_requests: int | None = FROM_SCENARIO, horizon_s: float | None = FROM_SCENARIO,
             chunk: int = DEFAULT_CHUNK) -> Iterator[RequestSpec]:
    """Requests of ``scenario.workload`` in arrival order, produced lazily ``chunk`` at a time.

    The stream stops at whichever comes first: ``max_requests`` requests or the first arrival
    after ``horizon_s`` (arrivals at exactly ``horizon_s`` are kept), or the end of a non-looping
    trace. A limit not passed is taken from the scenario (``scenario.requests``,
    ``scenario.horizon_s``); a limit passed as None (or a horizon of ``math.inf``) means no limit
    from that side. If no limit remains and the arrivals are endless, this raises
    :class:`ScenarioError` at once.

    Per request: ``request_id`` counts from 0; ``model`` is drawn by ``workload.models`` shares
    and canonicalised with ``scenario.resolve_model``; lengths come from the ``LengthDist``s (or
    the trace rows for kind ``trace``); ``client_region`` by shares (for diurnal arrivals, from
    the arrival process); ``residency`` is that region's residency list; ``tier`` by shares;
    ``user`` is ``f"{tier}-{k}"`` with ``k`` uniform in ``[0, tier.users)``; ``channel`` by shares.

    Validation happens here, not at the first ``next()``, so a bad scenario fails where it is
    passed in.
    """
    source = getattr(scenario, "source", None)
    if max_requests is FROM_SCENARIO:
        max_requests = getattr(scenario, "requests", None)
    if horizon_s is FROM_SCENARIO:
        horizon_s = getattr(scenario, "horizon_s", None)
    if max_requests is not None:
        max_requests = int(max_requests)
        if max_requests < 0:
            raise ScenarioError.at(source, "requests", max_requests, "allowed: >= 0")
    if horizon_s is not None:
        horizon_s = float(horizon_s)
        if not horizon_s >= 0:
            raise ScenarioError.at(source, "horizon_s", horizon_s, "allowed: >= 0")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    plan = _plan(scenario)
    finite_trace = plan.arrivals_kind == "trace" and not bool(
        _attr(scenario.workload.arrivals, "loop", default=False))
    unbounded_horizon = horizon_s is None or np.isinf(horizon_s)
    if max_requests is None and unbounded_horizon and not finite_trace:
        raise ScenarioError.at(source, "requests", None,
                               "allowed: set requests or horizon_s (at least one must bound the run)")
    # split now, not at the first next(): later use of ``rng`` by the caller cannot change us
    return _stream(scenario, plan, _split(rng), max_requests, horizon_s, int(chunk))

