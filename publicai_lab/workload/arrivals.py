"""Arrival processes: when requests reach the gateway.

Every generator here is an infinite (or, for a non-looping trace, finite) iterator of numpy
chunks of absolute arrival times in seconds, non-decreasing across chunks. Working in chunks
keeps the per-request cost in numpy while never holding more than one chunk in memory, so a
million-request run costs a few megabytes. Randomness comes only from the injected
``numpy.random.Generator``; the draw order is fixed, so the same generator state gives the same
times.

- :func:`poisson_arrivals`  -- exponential inter-arrivals (memoryless open-loop load).
- :func:`gamma_arrivals`    -- gamma inter-arrivals with a chosen coefficient of variation
  (cv > 1 is burstier than Poisson, cv < 1 more regular; cv = 1 is Poisson).
- :func:`diurnal_arrivals`  -- a non-homogeneous Poisson process whose rate follows a 24-hour
  curve in each client region's *local* time; also says which region each arrival came from.
- :func:`trace_arrivals`    -- replay recorded times, stretched or squeezed by ``time_scale``.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "DEFAULT_CHUNK",
    "poisson_arrivals",
    "gamma_arrivals",
    "diurnal_arrivals",
    "diurnal_rates_per_s",
    "trace_arrivals",
    "trace_arrivals_indexed",
]

#: requests drawn per chunk: big enough to amortise numpy call overhead, small enough to stay
#: in cache and to keep memory flat
DEFAULT_CHUNK = 8192

_SECONDS_PER_HOUR = 3600.0


def _check_rate(rate_per_s: float) -> float:
    rate = float(rate_per_s)
    if not np.isfinite(rate) or rate <= 0:
        raise ValueError(f"arrival rate_per_s must be a positive finite number, got {rate_per_s!r}")
    return rate


def poisson_arrivals(rate_per_s: float, rng: np.random.Generator, *, start_s: float = 0.0,
                     chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Arrival times of a homogeneous Poisson process, ``chunk`` at a time (infinite)."""
    rate = _check_rate(rate_per_s)
    last = float(start_s)
    while True:
        times = last + np.cumsum(rng.exponential(1.0 / rate, chunk))
        last = float(times[-1])
        yield times


def gamma_arrivals(rate_per_s: float, cv: float, rng: np.random.Generator, *,
                   start_s: float = 0.0, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Arrival times of a gamma renewal process: mean gap ``1/rate``, gap CV ``cv`` (infinite).

    Shape ``k = 1/cv²`` and scale ``1/(rate·k)`` give mean ``1/rate`` and standard deviation
    ``cv/rate``.
    """
    rate = _check_rate(rate_per_s)
    cv = float(cv)
    if not np.isfinite(cv) or cv <= 0:
        raise ValueError(f"gamma arrivals need cv > 0, got {cv!r}")
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    last = float(start_s)
    while True:
        times = last + np.cumsum(rng.gamma(shape, scale, chunk))
        last = float(times[-1])
        yield times


def _curve_array(curve: Sequence[float]) -> np.ndarray:
    values = np.asarray(list(curve), dtype=np.float64)
    if values.shape != (24,):
        raise ValueError(f"a diurnal curve needs 24 hourly values, got {values.size}")
    if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
        raise ValueError("a diurnal curve needs finite, non-negative values that are not all zero")
    return values


def _curve_at(values: np.ndarray, local_hour: np.ndarray) -> np.ndarray:
    """The curve at fractional local hours, linearly interpolated and wrapping at midnight."""
    h = np.mod(local_hour, 24.0)
    i = np.floor(h).astype(np.int64)
    frac = h - i
    i %= 24  # guards h that rounds to exactly 24.0
    return values[i] * (1.0 - frac) + values[(i + 1) % 24] * frac


def diurnal_rates_per_s(times_s: np.ndarray, rate_per_s: float, curve: Sequence[float],
                        shares: Sequence[float], utc_offsets_h: Sequence[float], *,
                        start_hour_utc: float = 0.0) -> np.ndarray:
    """Per-region instantaneous rates, shape ``(len(times_s), len(shares))``.

    Region ``r`` contributes ``rate·share_r·curve(local hour)/mean(curve)``, so the day-averaged
    total rate is ``rate_per_s`` (shares are normalised to sum to one). Simulated time 0 is
    ``start_hour_utc`` o'clock UTC.
    """
    values = _curve_array(curve)
    share = np.asarray(shares, dtype=np.float64)
    share = share / share.sum()
    offsets = np.asarray(utc_offsets_h, dtype=np.float64)
    utc_hour = start_hour_utc + np.asarray(times_s, dtype=np.float64) / _SECONDS_PER_HOUR
    local = utc_hour[:, None] + offsets[None, :]
    return (rate_per_s / values.mean()) * share[None, :] * _curve_at(values, local)


def diurnal_arrivals(rate_per_s: float, curve: Sequence[float], shares: Sequence[float],
                     utc_offsets_h: Sequence[float], rng: np.random.Generator, *,
                     start_hour_utc: float = 0.0, start_s: float = 0.0,
                     chunk: int = DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Non-homogeneous Poisson arrivals by thinning, with the client region of each (infinite).

    Candidates come at the bound ``λmax = rate·max(curve)/mean(curve)``; one uniform ``u·λmax``
    per candidate both accepts it (``u·λmax < Σ_r λ_r(t)``) and, when accepted, picks the region
    whose slice of the cumulative rates contains it — which is exactly "in proportion to the
    regions' rates at that instant". Yields ``(times_s, region_index)`` pairs; thinning makes a
    chunk shorter than ``chunk`` but never empty.
    """
    rate = _check_rate(rate_per_s)
    values = _curve_array(curve)
    share = np.asarray(shares, dtype=np.float64)
    if share.ndim != 1 or share.size == 0 or np.any(share < 0) or share.sum() <= 0:
        raise ValueError("diurnal arrivals need at least one client region with a positive share")
    offsets = np.asarray(utc_offsets_h, dtype=np.float64)
    if offsets.shape != share.shape:
        raise ValueError("diurnal arrivals need one utc offset per client region share")
    lam_max = rate * values.max() / values.mean()
    last = float(start_s)
    while True:
        cand = last + np.cumsum(rng.exponential(1.0 / lam_max, chunk))
        last = float(cand[-1])
        u = rng.random(chunk) * lam_max
        cum = np.cumsum(diurnal_rates_per_s(cand, rate, values, share, offsets,
                                            start_hour_utc=start_hour_utc), axis=1)
        keep = u < cum[:, -1]
        if not keep.any():
            continue
        region = (u[keep, None] >= cum[keep]).sum(axis=1)
        yield cand[keep], region.astype(np.int64)


def trace_arrivals(times_s: np.ndarray, *, time_scale: float = 1.0, loop: bool = False,
                   start_s: float = 0.0, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
    """Replay recorded arrival times, re-based to ``start_s`` and multiplied by ``time_scale``.

    ``time_scale`` < 1 compresses the trace (more load), > 1 stretches it. With ``loop`` the trace
    repeats forever; each repetition starts one mean gap after the previous one ended, so the
    join neither bunches nor stalls. Without ``loop`` the iterator ends with the trace.
    """
    for times, _rows in trace_arrivals_indexed(times_s, time_scale=time_scale, loop=loop,
                                               start_s=start_s, chunk=chunk):
        yield times


def trace_arrivals_indexed(times_s: np.ndarray, *, time_scale: float = 1.0, loop: bool = False,
                           start_s: float = 0.0, chunk: int = DEFAULT_CHUNK
                           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Like :func:`trace_arrivals` but also yields the trace row of each arrival.

    The row index lets the caller take prompt and output lengths from the same trace rows, so a
    replay keeps each request's recorded size with its recorded time.
    """
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("a trace needs at least one arrival time")
    if np.any(np.diff(t) < 0):
        raise ValueError("trace arrival times must be non-decreasing")
    scale = float(time_scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"time_scale must be positive, got {time_scale!r}")
    rel = (t - t[0]) * scale
    span = float(rel[-1])
    gap = span / (rel.size - 1) if rel.size > 1 and span > 0 else scale
    period = span + gap
    rows = np.arange(rel.size, dtype=np.int64)
    base = float(start_s)
    while True:
        for i in range(0, rel.size, chunk):
            yield base + rel[i:i + chunk], rows[i:i + chunk]
        if not loop:
            return
        base += period
