"""publicai_lab.live.arrivals: the extra decode time per mid-decode arrival, against the model's price.

The table is checked on rounds whose answer is known (a fixed cost per arrival on a drifting host);
the measurement end to end against an emulated backend, whose steps the perf model itself times —
there an arrival costs what the model says, so the table must find about that. The real-vLLM
check is in tests/live/test_sim_vs_live.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from publicai_lab.errors import PublicAILabError
from publicai_lab.live.arrivals import arrival_cost_table, measure_arrival_cost

ROOT = Path(__file__).resolve().parents[1]
MODEL_STEP_S = 0.005


def _rounds(extra_s_per_arrival: float, speed: float, arrivals: int = 20) -> pd.DataFrame:
    """Quiet and fixed rounds on a host that runs ``speed`` × the model, drifting 1 % a round; every
    arrival adds ``extra_s_per_arrival`` to the background's decode; the model prices one at 20 ms."""
    rows = []
    for r in range(5):
        step_s = MODEL_STEP_S * speed * (1 + 0.01 * r)
        base = {"round": r, "tokens": 300.0, "model_step_s": MODEL_STEP_S}
        rows.append({**base, "mode": "quiet", "decode_s": 300 * step_s, "step_s": step_s, "arrivals": 0,
                     "prompt_tokens": 0.0, "model_extra_s": 0.0})
        decode_s = 300 * step_s + arrivals * extra_s_per_arrival
        rows.append({**base, "mode": "fixed", "decode_s": decode_s, "step_s": decode_s / 300, "arrivals": arrivals,
                     "prompt_tokens": 150.0, "model_extra_s": arrivals * 0.020})
    rows.append({"round": 5, "mode": "fixed", "tokens": 300.0, "model_step_s": MODEL_STEP_S, "decode_s": 1.0,
                 "step_s": 1.0 / 300, "arrivals": 0, "prompt_tokens": 0.0, "model_extra_s": 0.0})   # no quiet twin
    return pd.DataFrame(rows)


def test_the_table_takes_each_rounds_quiet_twin_and_prices_the_model_at_the_quiet_speed():
    table = arrival_cost_table(_rounds(extra_s_per_arrival=0.025, speed=1.1))
    speed = 1.1 * 1.02                                  # the median quiet round's step over the model's
    assert table.attrs["speed"] == pytest.approx(speed)
    row = table.loc["fixed"]
    assert row["rounds"] == 5                           # the round without a quiet twin is left out
    assert row["measured_ms"] == pytest.approx(25.0)    # the drift cancels against the same round's quiet step
    assert row["se_ms"] == pytest.approx(0.0, abs=1e-9)
    assert row["model_ms"] == pytest.approx(20.0 * speed)
    assert row["rel_error"] == pytest.approx(25.0 / (20.0 * speed) - 1)


def test_an_arrival_on_the_emulator_costs_what_the_model_says():
    """The emulator steps by the perf model, so the measurement must find the model's price (the
    client's clock and asyncio add noise: a third either way is allowed)."""
    from publicai_lab import load_scenario
    from publicai_lab.live.emulator import EmulatedBackend
    from publicai_lab.perf.step_time import load_perf_model_file

    scenario = load_scenario(ROOT / "scenarios" / "small-cpu.yaml")
    backend = EmulatedBackend.from_scenario(scenario, "local/cpu")
    perf = load_perf_model_file(ROOT / "data" / "perf_models" / "small-llama_cpu_tp1.json")
    with backend.serve() as url:
        result = measure_arrival_cost(url, backend.model_name, perf, rounds=2, gap_s=0.08,
                                      modes={"fixed": 150}, background={"output_tokens": 120})
    assert set(result.rounds["mode"]) == {"quiet", "fixed"} and len(result.rounds) == 4
    row = result.table.loc["fixed"]
    assert row["arrivals_per_round"] >= 5, result.rounds
    assert 0.9 < result.table.attrs["speed"] < 1.15, result.rounds       # the emulator runs at the model's speed
    assert abs(row["rel_error"]) < 1 / 3, result.to_markdown()
    assert "fixed (150-token prompts" in result.to_markdown()


def test_bad_rounds_gap_or_background_are_one_line_errors():
    with pytest.raises(PublicAILabError, match="rounds must be >= 1 and gap_s > 0; got 0, 0.1"):
        measure_arrival_cost("http://127.0.0.1:9", "m", None, rounds=0, gap_s=0.1)
    with pytest.raises(PublicAILabError, match=r"background keys are \['batch', 'output_tokens', 'prompt_tokens'\]; got \['outputs'\]"):
        measure_arrival_cost("http://127.0.0.1:9", "m", None, rounds=1, gap_s=0.1, background={"outputs": 9})
    assert arrival_cost_table(_rounds(0.02, 1.0).assign(arrivals=0)).empty     # no arrival in any round: no row
