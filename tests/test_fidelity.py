"""The fidelity table's machinery (``publicai_lab.live.fidelity``), on an emulated server.

The real-vLLM fidelity check is ``tests/live/test_sim_vs_live.py`` and ``benchmarks/fidelity.py``;
here the emulator (the simulator's replica in real time) stands in, so the simulated twin must
match it: that proves the plumbing (same requests, same backend id, the spread and judging rules),
not the model.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest

from publicai_lab import load_scenario
from publicai_lab.live.emulator import EmulatedBackend
from publicai_lab.live.fidelity import FidelityResult, fidelity_table, one_server_scenario, scaled_step_times
from publicai_lab.perf import StepTimeModel
from conftest import SCENARIOS_DIR

pytestmark = pytest.mark.usefixtures("cpu_alone")    # emulator timing: one such module at a time


def test_one_server_scenario_keeps_the_first_cluster_with_the_given_perf_model():
    sc = load_scenario(SCENARIOS_DIR / "publicai-2025.yaml")
    perf = StepTimeModel(c0_s=0.004, c_decode_s=1e-4, request_overhead_s=0.01)
    one = one_server_scenario(sc, perf)
    (partner, cluster), = one.clusters()
    assert (partner.name, cluster.name) == (sc.clusters()[0][0].name, sc.clusters()[0][1].name)
    assert cluster.replicas == 1
    assert cluster.perf_model.c0_s == 0.004 and cluster.perf_model.request_overhead_s == 0.01
    assert set(one.workload.models) == {one.resolve_model(cluster.model)}
    assert one_server_scenario(sc, "tiny-llama_cpu_tp1").clusters()[0][1].perf_model.c0_s > 0


def _result(rows: list[tuple[float, float, bool]]) -> FidelityResult:
    table = pd.DataFrame([{"level": 0.5, "rate_rps": 10.0, "metric": "e2e_p50_s", "sim": 1.0, "live": 1.0,
                           "rel_error": err, "live_spread": spread, "tolerance": 0.10,
                           "judged": spread <= 0.10, "ok": abs(err) <= 0.10} for err, spread, _ in rows])
    return FidelityResult(table, saturation_rps=20.0)


def test_only_rows_whose_live_repeats_agree_are_judged():
    assert _result([(0.05, 0.04, True), (0.5, 0.30, False)]).passed          # the 50 % error is in noise
    assert not _result([(0.05, 0.04, True), (0.15, 0.08, False)]).passed     # a judged row out of tolerance
    assert not _result([(0.5, 0.30, False)]).passed                          # nothing judged: no verdict
    md = _result([(0.05, 0.04, True), (0.5, 0.30, False)]).to_markdown()
    assert "pass" in md and "not judged" in md


def test_fidelity_table_against_an_emulated_server_matches_its_simulated_twin():
    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"),
                             StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=2e-4, request_overhead_s=0.005))
    backend_id = sc.backend_id(*sc.clusters()[0])
    with EmulatedBackend.from_scenario(sc, backend_id).serve() as url:
        result = fidelity_table(sc, url, levels=(0.5,), saturation_rps=60.0, requests=120, repeats=2,
                                engine_url=url)
    t = result.table.set_index("metric")
    assert list(t.index) == ["e2e_p50_s", "e2e_p90_s", "ttft_p50_s"]
    assert t.loc["e2e_p50_s", "rate_rps"] == pytest.approx(30.0)
    assert abs(t.loc["e2e_p50_s", "rel_error"]) < 0.10, result.to_markdown()
    assert abs(t.loc["ttft_p50_s", "rel_error"]) < 0.25, result.to_markdown()
    # the emulator's /metrics carry the engine's inter-token latency: it ran at the model's speed
    assert abs(t.loc["e2e_p50_s", "engine_drift"]) < 0.08, result.to_markdown()
    assert "engine drift" in result.to_markdown()


def _fidelity_against_a_30_percent_slower_engine(**kwargs) -> FidelityResult:
    """The fidelity table at 30 % of a 60 req/s saturation, against an emulated server whose steps are
    30 % slower than the perf model the simulation is given (anchor readings of four groups: the
    emulator's speed does not wander)."""
    perf = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=2e-4, request_overhead_s=0.005)
    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"), perf)
    slower = one_server_scenario(sc, scaled_step_times(perf, 1.3))
    with EmulatedBackend.from_scenario(slower, sc.backend_id(*sc.clusters()[0])).serve() as url:
        return fidelity_table(sc, url, levels=(0.3,), saturation_rps=60.0, requests=120, repeats=2,
                              engine_url=url, anchor_shape={"groups": 4}, constant_share=0.0, **kwargs)


def test_engine_drift_is_measured_and_conditioning_on_it_removes_the_error():
    """An engine 30 % slower than the perf model says: the raw error shows it, the drift column
    names it (from the server's own /metrics), and the simulation rerun at the measured speed agrees."""
    result = _fidelity_against_a_30_percent_slower_engine()
    t = result.table.set_index("metric")
    assert t.loc["e2e_p50_s", "rel_error"] < -0.15, result.to_markdown()      # sim too fast
    assert t.loc["e2e_p50_s", "engine_drift"] == pytest.approx(0.30, abs=0.08), result.to_markdown()
    assert abs(t.loc["e2e_p50_s", "conditioned_error"]) < 0.10, result.to_markdown()
    assert abs(t.loc["e2e_p90_s", "conditioned_error"]) < 0.12, result.to_markdown()


def test_speed_anchor_reanchors_the_simulation_to_the_engine_it_measures():
    """The same engine 30 % slower than its perf model: calibration groups around the repeats read
    the slowdown (a calibration measurement, not the replay), and the simulation at that speed agrees
    where the one at the calibration's speed is too fast."""
    result = _fidelity_against_a_30_percent_slower_engine(anchor=True)
    t = result.table.set_index("metric")
    level = result.levels[0.3]
    assert len(level.anchor_factors) == 3, level.anchor_factors          # before each repeat, after the last
    # the simulation runs at all readings' decode windows pooled: 3 readings × 4 groups × 4 windows
    assert "simulated at their 48 decode windows pooled" in result.to_markdown(), result.to_markdown()
    assert "(4 closed groups of 8 requests" in result.to_markdown(), result.to_markdown()   # the shape it ran
    # kept, reading by reading: 4 groups × 4 decode windows, and a lone prefill after every group
    assert [len(windows) for windows in level.anchor_readings] == [20, 20, 20]
    assert math.isnan(level.anchor_prefill_factor)        # no prefill reference: prompt tokens at the decode factor
    assert min(level.anchor_factors) <= level.anchor_factor <= max(level.anchor_factors), level
    assert t.loc["e2e_p50_s", "anchor"] == pytest.approx(0.30, abs=0.08), result.to_markdown()
    assert t.loc["e2e_p50_s", "unanchored_error"] < -0.15, result.to_markdown()
    assert abs(t.loc["e2e_p50_s", "rel_error"]) < 0.10, result.to_markdown()
    assert abs(t.loc["e2e_p90_s", "rel_error"]) < 0.12, result.to_markdown()
    assert "speed anchor" in result.to_markdown()


def test_speed_anchor_is_read_against_the_calibrations_own_reading():
    """With a reference reading of ×1.3 — as if the calibration had already seen the anchor's groups
    30 % slower than its model — the same slow engine has not changed since: the anchor reads no
    change, and the simulation stays at the calibration's speed (too fast here, by construction)."""
    result = _fidelity_against_a_30_percent_slower_engine(anchor=True, anchor_reference=1.3)
    t = result.table.set_index("metric")
    assert abs(t.loc["e2e_p50_s", "anchor"]) < 0.08, result.to_markdown()
    assert t.loc["e2e_p50_s", "rel_error"] == pytest.approx(t.loc["e2e_p50_s", "unanchored_error"], abs=0.06)
    assert "against the calibration's own reading ×1.300" in result.to_markdown()


def test_the_anchors_prefills_set_the_prompt_token_terms_apart():
    """An engine whose decode steps are 30 % slower than its perf model and whose prompt tokens are
    not: the anchor's engine-timed prefills read the prompt-token terms at their own factor, and the
    simulation at both factors agrees with the replay (a uniform factor would slow its prefills too)."""
    perf = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=2e-4, request_overhead_s=0.005)
    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"), perf)
    engine = one_server_scenario(sc, scaled_step_times(perf, 1.3, prefill_factor=1.0))
    with EmulatedBackend.from_scenario(engine, sc.backend_id(*sc.clusters()[0])).serve() as url:
        result = fidelity_table(sc, url, levels=(0.3,), saturation_rps=60.0, requests=120, repeats=2,
                                engine_url=url, anchor=True, anchor_shape={"groups": 4},
                                anchor_reference=1.0, anchor_prefill_reference=1.0, constant_share=0.0)
    t = result.table.set_index("metric")
    level = result.levels[0.3]
    assert level.anchor_factor == pytest.approx(1.3, abs=0.08), result.to_markdown()
    assert level.anchor_prefill_factor == pytest.approx(1.0, abs=0.08), result.to_markdown()
    assert t.loc["e2e_p50_s", "anchor_prefill"] == pytest.approx(0.0, abs=0.08)
    assert abs(t.loc["e2e_p50_s", "rel_error"]) < 0.10, result.to_markdown()
    assert "engine-timed prefills pooled" in result.to_markdown()


def test_scaled_step_times_sets_the_prompt_token_terms_apart():
    perf = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_prefill_sq_s=1e-9, c_decode_s=2e-4, c_ctx_s=1e-6,
                         request_overhead_s=0.005)
    both = scaled_step_times(perf, 1.5, prefill_factor=0.8)
    assert (both.c0_s, both.c_decode_s, both.c_ctx_s) == pytest.approx((0.006, 3e-4, 1.5e-6))
    assert (both.c_prefill_s, both.c_prefill_sq_s) == pytest.approx((1.6e-5, 0.8e-9))
    assert both.request_overhead_s == perf.request_overhead_s                 # the frontend is not the engine
    assert scaled_step_times(perf, 1.5).c_prefill_s == pytest.approx(3e-5)    # one factor for all


def test_a_slowdown_split_onto_the_constant_keeps_the_anchors_step_and_spares_larger_batches():
    perf = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=2e-4, c_ctx_s=1e-6, request_overhead_s=0.005)
    q8 = perf.c0_s / perf.step_s(0, 8, 1600)
    split = scaled_step_times(perf, 1.2, constant_share=0.7, anchor_c0_share=q8)
    assert split.step_s(0, 8, 1600) == pytest.approx(1.2 * perf.step_s(0, 8, 1600))      # the anchor's reading kept
    for batch, ctx in ((1, 200), (2, 400), (16, 3200), (32, 6400)):
        q = perf.c0_s / perf.step_s(0, batch, ctx)
        want = 1 + 0.2 * (1 - 0.7 + 0.7 * q / q8)
        assert split.step_s(0, batch, ctx) / perf.step_s(0, batch, ctx) == pytest.approx(want)
    assert split.step_s(0, 1, 200) / perf.step_s(0, 1, 200) > 1.2 > split.step_s(0, 32, 6400) / perf.step_s(0, 32, 6400)
    assert split.c_prefill_s == pytest.approx(1.2 * perf.c_prefill_s)                     # prompt tokens as before
    plain = scaled_step_times(perf, 1.2)
    assert scaled_step_times(perf, 1.2, constant_share=0.0, anchor_c0_share=q8) == plain
    from publicai_lab.errors import PublicAILabError
    with pytest.raises(PublicAILabError, match="constant_share"):
        scaled_step_times(perf, 1.2, constant_share=1.5, anchor_c0_share=q8)


def test_a_slowdown_of_the_constant_is_followed_where_one_factor_is_not():
    """An engine whose step constant c0 runs 3× slower than its perf model and whose per-sequence
    work does not: the anchor's batch of 8 reads ×1.67, a light replay's smaller batches run slower
    than that. The slowdown put on c0 (constant_share=1) follows the replay; one factor on every term,
    simulated against the same live repeats, is too fast."""
    from publicai_lab.analysis.compare import compare
    from publicai_lab.live.anchor import c0_share_from_windows
    from publicai_lab.live.fidelity import simulate_at_speed

    perf = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=1e-3, request_overhead_s=0.005)
    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"), perf)
    engine = one_server_scenario(sc, replace(perf, c0_s=3 * perf.c0_s))
    with EmulatedBackend.from_scenario(engine, sc.backend_id(*sc.clusters()[0])).serve() as url:
        result = fidelity_table(sc, url, levels=(0.1,), saturation_rps=60.0, requests=80, repeats=2,
                                engine_url=url, anchor=True, anchor_shape={"groups": 4}, anchor_reference=1.0,
                                anchor_prefill_reference=1.0, constant_share=1.0)
    level = result.levels[0.1]
    assert level.anchor_factor == pytest.approx(5 / 3, abs=0.08), result.to_markdown()
    split_error = result.table.set_index("metric").loc["e2e_p50_s", "rel_error"]
    pool = [w for windows in level.anchor_readings for w in windows]
    assert c0_share_from_windows(pool, perf) == pytest.approx(1 / 3, abs=0.01)      # 4 ms of a 12 ms step
    uniform = simulate_at_speed(sc.with_overrides(rate_per_s=6.0), perf, level.anchor_factor, requests=80,
                                prefill_factor=level.anchor_prefill_factor)
    uniform_error = compare(uniform, live_repeats=level.comparison.live_frames).table.loc["e2e_p50_s", "rel_error"]
    assert abs(split_error) < 0.03, result.to_markdown()
    assert uniform_error < split_error - 0.04, (uniform_error, split_error)          # one factor: too fast
    assert "100% of the slowdown on the step's constant c0" in result.to_markdown()


def test_speed_anchor_needs_the_server_itself():
    from publicai_lab.errors import PublicAILabError
    from publicai_lab.live.fidelity import fidelity_at
    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"))
    with pytest.raises(PublicAILabError, match="engine_url"):
        fidelity_at(sc, "http://127.0.0.1:9", 10.0, anchor=True)
    with pytest.raises(PublicAILabError, match="anchor_reference"):
        fidelity_at(sc, "http://127.0.0.1:9", 10.0, anchor=True, engine_url="http://127.0.0.1:9", anchor_reference=0.0)
    with pytest.raises(PublicAILabError, match="anchor_prefill_reference"):
        fidelity_at(sc, "http://127.0.0.1:9", 10.0, anchor=True, engine_url="http://127.0.0.1:9",
                    anchor_prefill_reference=-1.0)


def test_segment_plan_splits_the_requests_and_keeps_the_plain_run_as_one_segment():
    from publicai_lab.errors import PublicAILabError
    from publicai_lab.live.fidelity import SEGMENT_SEED_STRIDE, segment_plan

    assert segment_plan(300, 1, 7) == [(7, 300)]
    plan = segment_plan(10, 4, 7)
    assert [n for _, n in plan] == [3, 3, 2, 2]
    assert [seed for seed, _ in plan] == [7 + j * SEGMENT_SEED_STRIDE for j in range(4)]
    for bad in (0, 11):
        with pytest.raises(PublicAILabError, match="segments"):
            segment_plan(10, bad, 7)


def test_joined_segments_run_one_after_another():
    from publicai_lab.live.fidelity import joined_segments

    def frame(arrivals, e2e):
        return pd.DataFrame({"request_id": range(len(arrivals)), "arrival_s": arrivals, "e2e_s": e2e,
                             "status": ["ok"] * len(arrivals)})

    a, b = frame([0.5, 1.0], [1.0, 2.0]), frame([0.2, 0.4, 0.6], [0.1, float("nan"), 0.3])
    joined = joined_segments([a, b])
    assert list(joined["request_id"]) == [0, 1, 2, 3, 4]
    # the second segment starts where the first one's last request finished (2.5 s after its first arrival)
    assert list(joined["arrival_s"]) == pytest.approx([0.0, 0.5, 2.5, 2.7, 2.9])
    assert joined_segments([a]) is a


def test_segmented_repeats_read_the_anchor_between_segments_and_simulate_the_same_requests():
    """Every repeat in three segments: an anchor reading before each segment and after the last, the
    live repeats and the simulation serve the very same requests, and the re-anchored simulation
    agrees with the 30 % slower engine as the plain run does."""
    result = _fidelity_against_a_30_percent_slower_engine(anchor=True, segments=3)
    t = result.table.set_index("metric")
    level = result.levels[0.3]
    assert len(level.anchor_factors) == 2 * 3 + 1, level.anchor_factors
    sim = level.comparison.sim_frame
    for live in level.comparison.live_frames:
        assert len(live) == len(sim) == 120
        assert list(live.sort_values("request_id")["prompt_tokens"]) == list(sim.sort_values("request_id")["prompt_tokens"])
    assert abs(t.loc["e2e_p50_s", "rel_error"]) < 0.10, result.to_markdown()
    assert t.loc["e2e_p50_s", "engine_drift"] == pytest.approx(0.30, abs=0.08), result.to_markdown()
    assert "before each segment and after the last" in result.to_markdown()
    assert "in 3 segments a repeat" in level.comparison.title


def test_a_level_missed_with_the_anchor_off_the_engines_speed_is_measured_once_more():
    """A reference reading of ×1.3 against an engine 30 % slower than its model: the anchor reads no
    change, the engine's own latency says +30 %, and the simulation at the anchor's speed misses. With
    ``remeasure_if_anchor_off_by`` the level is measured again — once: the second miss stands, and the
    first measurement is kept and shown."""
    from publicai_lab.live.fidelity import ANCHOR_MISSED_BY

    result = _fidelity_against_a_30_percent_slower_engine(anchor=True, anchor_reference=1.3,
                                                          remeasure_if_anchor_off_by=ANCHOR_MISSED_BY)
    level = result.levels[0.3]
    assert level.anchor_to_engine == pytest.approx(0.30, abs=0.08), result.to_markdown()
    assert len(level.earlier_attempts) == 1, result.to_markdown()
    assert level.earlier_attempts[0].anchor_to_engine > ANCHOR_MISSED_BY, result.to_markdown()
    assert list(result.table["attempt"]) == [2, 2, 2] and list(result.superseded["attempt"]) == [1, 1, 1]
    assert not result.superseded.loc[result.superseded["judged"], "ok"].all(), result.to_markdown()
    assert not result.passed, result.to_markdown()                 # the second miss stands
    md = result.to_markdown()
    assert "Measured again" in md and "| FAIL (measured again) |" in md and "| missed |" in md, md


def test_a_miss_with_the_anchor_on_the_engines_speed_is_the_models_and_is_not_measured_again():
    """The engine runs at its model's speed (the anchor and the engine's latency agree) but its
    frontend takes 40 ms more a request than the perf model says: the simulation misses, and that
    miss is the model's — no second measurement."""
    perf = StepTimeModel(c0_s=0.004, c_prefill_s=2e-5, c_decode_s=2e-4, request_overhead_s=0.005)
    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"), perf)
    engine = one_server_scenario(sc, replace(perf, request_overhead_s=0.045))
    with EmulatedBackend.from_scenario(engine, sc.backend_id(*sc.clusters()[0])).serve() as url:
        result = fidelity_table(sc, url, levels=(0.3,), saturation_rps=60.0, requests=120, repeats=2,
                                engine_url=url, anchor=True, anchor_shape={"groups": 4}, anchor_reference=1.0,
                                constant_share=0.0, remeasure_if_anchor_off_by=0.06)
    level = result.levels[0.3]
    t = result.table.set_index("metric")
    assert abs(level.anchor_to_engine) < 0.06, result.to_markdown()
    assert t.loc["ttft_p50_s", "rel_error"] < -0.15 and not result.passed, result.to_markdown()
    assert level.earlier_attempts == [] and result.superseded.empty, result.to_markdown()
    assert list(result.table["attempt"]) == [1, 1, 1] and "Measured again" not in result.to_markdown()


def test_remeasuring_needs_the_anchor_and_the_engines_speed():
    from publicai_lab.errors import PublicAILabError

    sc = one_server_scenario(load_scenario(SCENARIOS_DIR / "toy.yaml"), StepTimeModel(c0_s=0.004))
    with pytest.raises(PublicAILabError, match="remeasure_if_anchor_off_by needs"):
        fidelity_table(sc, "http://127.0.0.1:9", levels=(0.3,), saturation_rps=60.0,
                       remeasure_if_anchor_off_by=0.06)
