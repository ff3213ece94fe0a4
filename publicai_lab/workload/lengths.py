"""Token-length samplers: how long prompts and completions are.

Prompt and output lengths drive everything downstream (prefill cost, decode steps, KV-cache
use), so each sampler is a plain vectorised function of an injected generator returning an
``int64`` array, clamped to ``[min_tokens, max_tokens]`` and never below 1 token (a request
with no tokens does not exist for a vLLM engine).

Kinds, matching a scenario's ``LengthDist.kind``:

=========== ===================================================================================
fixed       every request has ``value`` tokens
uniform     integers in ``[low, high]``, both ends inclusive
lognormal   ``exp(N(ln median, sigma))`` rounded — the usual fit for LLM prompt/output lengths
geometric   support ``1, 2, …`` with the given mean (memoryless stopping: "each token ends the
            answer with probability 1/mean")
empirical   ``values`` drawn with probability proportional to ``weights`` (uniform if omitted)
trace       taken row by row from a trace file; handled by :mod:`.generate`, which aligns the
            lengths with the trace's arrival times
=========== ===================================================================================

:func:`sample_lengths` reads a ``LengthDist``-like object (any object with these attributes);
the ``sample_*`` functions take plain numbers for use outside scenarios.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = [
    "LENGTH_KINDS",
    "clamp_tokens",
    "sample_fixed",
    "sample_uniform",
    "sample_lognormal",
    "sample_geometric",
    "sample_empirical",
    "sample_lengths",
]

LENGTH_KINDS = ("fixed", "uniform", "lognormal", "geometric", "empirical", "trace")


def clamp_tokens(values: np.ndarray, min_tokens: int | None = None,
                 max_tokens: int | None = None) -> np.ndarray:
    """Round to integers and clamp to ``[max(1, min_tokens), max_tokens]`` as ``int64``."""
    lo = max(1, int(min_tokens)) if min_tokens is not None else 1
    hi = int(max_tokens) if max_tokens is not None else None
    if hi is not None and hi < lo:
        raise ValueError(f"max_tokens {hi} is below min_tokens {lo}")
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        # rint before the cast; clip in float first so huge lognormal tails cannot overflow int64
        arr = np.rint(np.clip(arr, lo, hi if hi is not None else 2.0**62))
    return np.clip(arr.astype(np.int64, copy=False), lo, hi)


def sample_fixed(value: int, n: int, *, min_tokens: int | None = None,
                 max_tokens: int | None = None) -> np.ndarray:
    """``n`` copies of ``value`` (after clamping). Draws nothing from any generator."""
    return clamp_tokens(np.full(n, int(value), dtype=np.int64), min_tokens, max_tokens)


def sample_uniform(low: int, high: int, n: int, rng: np.random.Generator, *,
                   min_tokens: int | None = None, max_tokens: int | None = None) -> np.ndarray:
    """Integers uniform on ``[low, high]`` inclusive."""
    low, high = int(low), int(high)
    if high < low:
        raise ValueError(f"uniform lengths need low <= high, got {low} > {high}")
    return clamp_tokens(rng.integers(low, high, n, endpoint=True, dtype=np.int64),
                        min_tokens, max_tokens)


def sample_lognormal(median: float, sigma: float, n: int, rng: np.random.Generator, *,
                     min_tokens: int | None = None, max_tokens: int | None = None) -> np.ndarray:
    """Lognormal lengths parameterised by their median (``e^mu``) and log-space ``sigma``."""
    median, sigma = float(median), float(sigma)
    if median <= 0 or sigma < 0:
        raise ValueError(f"lognormal lengths need median > 0 and sigma >= 0, got {median}, {sigma}")
    return clamp_tokens(rng.lognormal(np.log(median), sigma, n), min_tokens, max_tokens)


def sample_geometric(mean: float, n: int, rng: np.random.Generator, *,
                     min_tokens: int | None = None, max_tokens: int | None = None) -> np.ndarray:
    """Geometric lengths on ``1, 2, …`` with the given mean (success probability ``1/mean``)."""
    mean = float(mean)
    if not mean >= 1:
        raise ValueError(f"geometric lengths need mean >= 1, got {mean}")
    return clamp_tokens(rng.geometric(1.0 / mean, n), min_tokens, max_tokens)


def sample_empirical(values: Sequence[int], weights: Sequence[float] | None, n: int,
                     rng: np.random.Generator, *, min_tokens: int | None = None,
                     max_tokens: int | None = None) -> np.ndarray:
    """Draw from a finite set of lengths, proportionally to ``weights`` (uniform if None)."""
    vals = np.asarray(list(values), dtype=np.int64)
    if vals.size == 0:
        raise ValueError("empirical lengths need at least one value")
    if weights is None:
        idx = rng.integers(0, vals.size, n)
    else:
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != vals.shape or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("empirical weights need one non-negative weight per value, not all 0")
        cum = np.cumsum(w / w.sum())
        idx = np.minimum(np.searchsorted(cum, rng.random(n), side="right"), vals.size - 1)
    return clamp_tokens(vals[idx], min_tokens, max_tokens)


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    """First attribute of ``obj`` (or key, for dicts) among ``names`` that is not None."""
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return default


def _required(dist: Any, kind: str, *names: str) -> Any:
    value = _attr(dist, *names)
    if value is None:
        raise ValueError(f"{kind} length distribution needs '{names[0]}'")
    return value


def sample_lengths(dist: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sample ``n`` lengths from a ``LengthDist``-like object (see the module table).

    ``min``/``max`` clamp every kind; for ``uniform`` they also serve as the range when
    ``low``/``high`` are absent. Kind ``trace`` cannot be sampled without a trace: use
    :func:`publicai_lab.workload.generate`.
    """
    kind = str(_attr(dist, "kind", default="fixed"))
    lo = _attr(dist, "min", "min_tokens")
    hi = _attr(dist, "max", "max_tokens")
    if kind == "fixed":
        return sample_fixed(_required(dist, kind, "value", "tokens", "median", "mean"), n,
                            min_tokens=lo, max_tokens=hi)
    if kind == "uniform":
        low = _required(dist, kind, "low", "min", "min_tokens")
        high = _required(dist, kind, "high", "max", "max_tokens")
        return sample_uniform(low, high, n, rng, min_tokens=lo, max_tokens=hi)
    if kind == "lognormal":
        return sample_lognormal(_required(dist, kind, "median"), _required(dist, kind, "sigma"),
                                n, rng, min_tokens=lo, max_tokens=hi)
    if kind == "geometric":
        return sample_geometric(_required(dist, kind, "mean"), n, rng, min_tokens=lo,
                                max_tokens=hi)
    if kind == "empirical":
        return sample_empirical(_required(dist, kind, "values"), _attr(dist, "weights"), n, rng,
                                min_tokens=lo, max_tokens=hi)
    if kind == "trace":
        raise ValueError("length kind 'trace' takes lengths from the trace rows; "
                         "use workload.generate() with a trace arrival process or a trace path")
    raise ValueError(f"unknown length distribution kind {kind!r}; allowed {LENGTH_KINDS}")
