"""Taking the host's drift out of a calibration sweep (publicai_lab.live.sweep_drift).

Synthetic sweeps with a known engine and a known drift of its speed: a drift that lines up with
batch size biases the raw fit's batch slope; divided by the speed the anchor's readings saw, the
fit finds the engine's own slope again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from publicai_lab.live.calibrate import fit_observations
from publicai_lab.live.sweep_drift import detrend_observations, speed_readings, speed_trend
from publicai_lab.perf import StepTimeModel

TRUTH = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=3e-4, c_ctx_s=1e-6)


def _drift(at_s: np.ndarray) -> np.ndarray:
    """The engine 20 % slower at the sweep's end than at its start."""
    return 1.0 + 0.2 * np.asarray(at_s) / 100.0


def _sweep(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells in order of batch size (so the drift lines up with it), and an anchor reading of one
    fixed shape every 5 s whose steps follow the same drift, with 3 % noise."""
    rows, t = [], 0.0
    for p in (32, 256, 1024):
        rows.append({"kind": "prefill", "prefill_tokens": p, "prefill_sq_tokens": float(p * p), "decode_seqs": 0,
                     "context_tokens": 0.0, "at_s": t, "observed_s": TRUTH.step_s(p, 0, 0, p * p) * _drift(t)})
        t += 1.0
    for b in (1, 2, 4, 8, 16, 32):
        for ctx in (100, 600):
            for _ in range(3):
                rows.append({"kind": "decode", "prefill_tokens": 0, "prefill_sq_tokens": 0.0, "decode_seqs": b,
                             "context_tokens": float(b * ctx), "at_s": t,
                             "observed_s": TRUTH.step_s(0, b, b * ctx) * _drift(t)})
                t += 100.0 / 36
    readings = []
    for at in np.arange(0.0, 101.0, 5.0):
        step = TRUTH.step_s(0, 8, 8 * 200) * _drift(at)
        windows = [{"step_s": step * (1 + 0.03 * rng.standard_normal()), "decode_seqs": 8, "context_tokens": 1600.0,
                    "prefill_tokens": 0} for _ in range(4)]
        windows.append({"step_s": TRUTH.step_s(512, 0, 0) * _drift(at), "decode_seqs": 0, "context_tokens": 0.0,
                        "prefill_tokens": 512})
        readings.append((float(at), windows))
    return pd.DataFrame(rows), speed_readings(readings)


def _batch_slope(model: StepTimeModel) -> float:
    return model.step_s(0, 16, 16 * 200) / model.step_s(0, 8, 8 * 200)


def test_detrended_fit_recovers_the_batch_slope_a_drift_biases():
    obs, readings = _sweep(np.random.default_rng(7))
    raw, _, _ = fit_observations(obs, overhead_column=False)
    detrended_obs, summary = detrend_observations(obs, readings)
    fixed, _, fitted = fit_observations(detrended_obs, overhead_column=False)
    truth = _batch_slope(TRUTH)
    assert abs(_batch_slope(raw) / truth - 1) > 0.02          # the drift moved the raw slope (+3.5 %)
    assert _batch_slope(fixed) == pytest.approx(truth, rel=0.01)
    assert fitted.query("kind == 'decode'")["rel_residual"].abs().max() < 0.03
    assert np.allclose(detrended_obs["observed_raw_s"], obs["observed_s"])      # nothing lost
    assert summary["decode"]["readings"] == len(readings) == 21
    assert summary["decode"]["trend_max"] / summary["decode"]["trend_min"] == pytest.approx(1.2, abs=0.03)


def test_the_trend_is_relative_to_the_readings_median_and_smoothed():
    at = np.arange(9.0)
    steps = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0])    # one outlying reading
    assert speed_trend(at, steps, span=1)[4] == pytest.approx(2.0)
    smoothed = speed_trend(at, steps, span=5)
    assert smoothed[4] == pytest.approx(2.0 ** (1 / 5))               # a fifth of the outlier's log
    assert smoothed[0] == pytest.approx(1.0) and smoothed[8] == pytest.approx(1.0)
    shuffled = np.array([4, 0, 8, 2, 6, 1, 3, 5, 7])                  # any order in, time order used
    assert np.allclose(speed_trend(at[shuffled], steps[shuffled], span=5), smoothed[shuffled])


def test_the_trend_skips_missing_readings_and_takes_fewer_at_the_ends():
    at = np.arange(5.0)
    steps = np.array([2.0, np.nan, 1.0, 1.0, 4.0])                    # median 1.5 over the four read
    trend = speed_trend(at, steps, span=3)
    assert trend[1] == pytest.approx(np.sqrt(2.0 / 1.5 * 1.0 / 1.5))   # its neighbours only, the NaN skipped
    assert trend[0] == pytest.approx(2.0 / 1.5)                        # the first reading and the missing one
    assert trend[4] == pytest.approx(np.sqrt(1.0 / 1.5 * 4.0 / 1.5))   # two readings at the end
    assert np.allclose(speed_trend(at, steps, span=2), trend)          # an even span: the odd one above it
    lone = speed_trend(at, np.array([3.0, np.nan, np.nan, np.nan, 1.0]), span=1)
    assert lone[2] == pytest.approx(1.0) and lone[0] == pytest.approx(1.5)    # a window of NaN only reads 1


def test_a_kind_with_too_few_readings_is_left_as_it_is():
    obs, readings = _sweep(np.random.default_rng(1))
    readings["prefill_step_s"] = np.nan                               # a server without prefill stamps
    out, summary = detrend_observations(obs, readings.iloc[:2])
    assert summary["decode"] == "not detrended (2 readings)"
    assert summary["prefill"] == "not detrended (0 readings)"
    assert np.allclose(out["observed_s"], obs["observed_s"]) and (out["speed_trend"] == 1.0).all()
