"""Take the host's drift out of a calibration sweep before the fit.

On a shared host the engine's speed wanders while ``calibrate`` sweeps its cells: the anchor's
groups (one fixed shape, :mod:`publicai_lab.live.anchor`) read the engine's speed 5.8 % apart (sd)
from one reading to the next minutes later, against 4.8 % group to group within a reading
(docs/fidelity.md §15). The sweep's cells run in a shuffled order, so the drift does not bias a
coefficient on average, but it lands on each coefficient as noise. Measured over four calibrations
(§15): detrended, every decode R² rose and the batch slope's bootstrap sd fell by about a tenth —
the fit's own noise, a smaller part of the slope's run-to-run movement than the engine's shape.

``calibrate`` spreads the anchor's groups evenly over its sweep anyway (for the reference reading).
Each group, being the same shape every time, reads the engine's speed at its moment up to a
constant; :func:`speed_readings` turns them into relative speeds, :func:`speed_trend` smooths them
over a few neighbours (a lone group is 4.8 % noisy) and :func:`detrend_observations` divides each
sweep observation by the trend at its time. The fit then describes the engine at the sweep's median
speed, and the anchor's reference reading is taken against that fit as before.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["speed_readings", "speed_trend", "detrend_observations", "TREND_SPAN"]

#: readings averaged (centred) for the trend at one reading: five groups of ~1 s, ~40 s of the sweep
#: with 24 readings over a FULL sweep — the noise of the mean 4.8 % / √5 ≈ 2 %, the drift it follows
#: slower than about half a minute
TREND_SPAN = 5


def speed_readings(readings: Sequence[tuple[float, Sequence[Mapping[str, float]]]]) -> pd.DataFrame:
    """One row per anchor reading taken during the sweep: ``at_s`` (its time since the sweep began),
    ``decode_step_s`` (the mean step of its decode windows) and ``prefill_step_s`` (the mean of its
    engine-timed prefill steps, NaN without). ``readings``: (at_s, the windows of
    :func:`~publicai_lab.live.anchor.anchor_windows`). Readings without decode windows are dropped."""
    rows = []
    for at_s, windows in readings:
        decode = [w["step_s"] for w in windows if w["decode_seqs"] > 0]
        prefill = [w["step_s"] for w in windows if w.get("prefill_tokens", 0) > 0]
        if decode:
            rows.append({"at_s": float(at_s), "decode_step_s": float(np.mean(decode)),
                         "prefill_step_s": float(np.mean(prefill)) if prefill else math.nan})
    return pd.DataFrame(rows, columns=["at_s", "decode_step_s", "prefill_step_s"])


def speed_trend(at_s: np.ndarray, step_s: np.ndarray, span: int = TREND_SPAN) -> np.ndarray:
    """The relative speed (1 = the readings' median) at each reading: the geometric mean over
    ``span`` readings centred on it (fewer at the ends; an even span counts one more), in time order.
    NaN steps are skipped (a window of NaN only reads 1)."""
    order = np.argsort(at_s)
    log_rel = pd.Series(np.log(np.asarray(step_s, float)[order] / np.nanmedian(step_s)))
    window = 2 * (max(0, int(span)) // 2) + 1    # an odd window, centred
    smoothed = log_rel.rolling(window, center=True, min_periods=1).mean().fillna(0.0).to_numpy()
    trend = np.empty_like(smoothed)
    trend[order] = np.exp(smoothed)
    return trend


def detrend_observations(obs: pd.DataFrame, readings: pd.DataFrame, *, span: int = TREND_SPAN,
                         min_readings: int = 3) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``obs`` (calibrate's observation rows with ``at_s``) with ``observed_s`` divided by the speed
    trend at each row's time — decode rows by the decode readings', prefill rows by the engine-timed
    prefills' (the host does not slow the two alike, docs/fidelity.md §10). The raw time is kept as
    ``observed_raw_s`` and the divisor as ``speed_trend``. A kind with fewer than ``min_readings``
    readings is left as it is (divisor 1). Returns (the new frame, a summary for the metadata)."""
    out = obs.copy()
    out["observed_raw_s"] = out["observed_s"]
    out["speed_trend"] = 1.0
    summary: dict[str, Any] = {"span": int(span)}
    for kind, column in (("decode", "decode_step_s"), ("prefill", "prefill_step_s")):
        r = readings[np.isfinite(readings[column])] if not readings.empty else readings
        if len(r) < max(2, min_readings):
            summary[kind] = f"not detrended ({len(r)} readings)"
            continue
        at = r["at_s"].to_numpy(float)
        trend = speed_trend(at, r[column].to_numpy(float), span)
        order = np.argsort(at)
        rows = (out["kind"] == kind).to_numpy()
        divisor = np.interp(out.loc[rows, "at_s"].to_numpy(float), at[order], trend[order])
        out.loc[rows, "speed_trend"] = divisor
        out.loc[rows, "observed_s"] = out.loc[rows, "observed_raw_s"] / divisor
        summary[kind] = {"readings": int(len(r)), "trend_min": round(float(trend.min()), 4),
                         "trend_max": round(float(trend.max()), 4)}
    return out, summary
