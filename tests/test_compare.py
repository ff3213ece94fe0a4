"""Sim-versus-live comparison: exact errors on synthetic frames, and the CLI end to end on an emulator."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
import pytest

from publicai_lab.analysis.compare import add_cli, compare, metric_values
from publicai_lab.records import COLUMNS, frame_from_columns, validate_frame

from conftest import SCENARIOS_DIR


def frame(e2e: float, ttft: float, backends: list[str], n: int = 100, source: str = "sim") -> pd.DataFrame:
    """n ok requests, one a second, all with the same latencies (so every percentile is exact)."""
    out = 11
    cols = {c: [] for c in COLUMNS}
    for i in range(n):
        row = dict(run_id="r", source=source, request_id=i, arrival_s=float(i), client_region="ch", tier="free",
                   model="m", prompt_tokens=10, output_tokens=out, policy="p", backend_id=backends[i % len(backends)],
                   partner="x", country="CH", attempts=1, status="ok", error_type=None, queue_wait_s=math.nan,
                   ttft_s=ttft, e2e_s=e2e, tpot_s=(e2e - ttft) / (out - 1))
        for c in COLUMNS:
            cols[c].append(row[c])
    return validate_frame(frame_from_columns(cols))


def test_exact_errors_and_spread():
    sim = frame(1.1, 0.2, ["a", "b"])
    live = [frame(e, 0.25, ["a", "a", "a", "b"], source="live") for e in (0.9, 1.0, 1.2)]
    cmp = compare(sim, live_repeats=live)
    t = cmp.table
    assert t.loc["e2e_p50_s", "live"] == pytest.approx(1.0)             # median of the repeats
    for q in (50, 90, 99):
        assert t.loc[f"e2e_p{q}_s", "rel_error"] == pytest.approx(0.1)
        assert t.loc[f"e2e_p{q}_s", "live_spread"] == pytest.approx(0.3)   # (1.2 - 0.9) / 1.0
        assert bool(t.loc[f"e2e_p{q}_s", "within_noise"])
        assert t.loc[f"ttft_p{q}_s", "rel_error"] == pytest.approx(-0.2)
        assert t.loc[f"ttft_p{q}_s", "live_spread"] == pytest.approx(0.0)
        assert not bool(t.loc[f"ttft_p{q}_s", "within_noise"])
    # tpot: sim (1.1-0.2)/10 = 0.09, live median (1.0-0.25)/10 = 0.075
    assert t.loc["tpot_p50_s", "rel_error"] == pytest.approx(0.09 / 0.075 - 1)
    assert t.loc["tpot_p50_s", "live_spread"] == pytest.approx(0.03 / 0.075)
    # throughput: 100 ok from the first arrival (0 s) to the last completion (99 s + E2E)
    assert t.loc["throughput_rps", "sim"] == pytest.approx(100 / 100.1)
    assert t.loc["throughput_rps", "live"] == pytest.approx(100 / 100.0)
    assert t.loc["throughput_rps", "rel_error"] == pytest.approx(100.0 / 100.1 - 1)
    assert t.loc["throughput_rps", "live_spread"] == pytest.approx((100 / 99.9 - 100 / 100.2) / 1.0)
    assert t.loc["share[a]", "sim"] == 0.5 and t.loc["share[a]", "live"] == 0.75
    assert t.loc["share[a]", "rel_error"] == pytest.approx(-1 / 3)
    assert t.loc["share[b]", "abs_error"] == pytest.approx(0.25)
    assert list(t.filter(like="live_").columns)[:2] == ["live_spread", "live_repeats"]
    assert (t["live_repeats"] == 3).all()
    assert cmp.error("e2e_p90_s") == pytest.approx(0.1) and cmp.spread("e2e_p90_s") == pytest.approx(0.3)
    md = cmp.to_markdown()
    assert "| e2e_p50_s | 1.1 | 1 | +10.0 % | 30.0 % | yes |" in md


def test_single_live_run_has_no_noise_floor(tmp_path):
    sim = frame(1.0, 0.1, ["a"])
    cmp = compare(sim, frame(0.8, 0.1, ["a"], source="live"))
    assert cmp.error("e2e_p50_s") == pytest.approx(0.25)
    assert np.isnan(cmp.spread("e2e_p50_s"))
    assert "no noise floor" in cmp.to_markdown()
    md = cmp.write(tmp_path / "c")
    for name in ("comparison.md", "comparison.csv", "cdf_ttft.png", "cdf_tpot.png", "cdf_e2e.png"):
        assert (tmp_path / "c" / name).exists()
    assert "cdf_e2e.png" in md.read_text()
    with pytest.raises(ValueError):
        compare(sim)


def test_failed_requests_do_not_count_in_latency():
    df = frame(1.0, 0.1, ["a"], n=10)
    df.loc[0, "status"] = "failed"
    df.loc[0, "e2e_s"] = 100.0
    m = metric_values(df, backends=["a"])
    assert m["e2e_p99_s"] == pytest.approx(1.0) and m["throughput_rps"] == pytest.approx(9 / 10)


def test_cli_against_emulator(tmp_path, capsys):
    from publicai_lab.live.emulator import EmulatedBackend
    from publicai_lab.perf import StepTimeModel
    from publicai_lab.scenario import load_scenario

    toy = load_scenario(SCENARIOS_DIR / "toy.yaml")
    b = EmulatedBackend.from_scenario(toy, "local/cpu", port=0)
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out = tmp_path / "cmp"
    perf = tmp_path / "toy-perf.json"          # the toy's own coefficients, as a calibration file
    StepTimeModel(c0_s=0.0025, c_prefill_s=2e-5, c_decode_s=0.00011).to_json(perf, model="tiny")
    with b.serve() as url:
        args = parser.parse_args(["compare", "--scenario", str(SCENARIOS_DIR / "toy.yaml"), "--target", url,
                                  "--requests", "40", "--repeats", "2", "--backend", "local/cpu",
                                  "--out", str(out), "--quiet",
                                  "--perf-model", str(perf)])
        assert args.func(args) == 0
    text = (out / "comparison.md").read_text()
    assert "e2e_p90_s" in text and "share[local/cpu]" in text
    t = pd.read_csv(out / "comparison.csv", index_col="metric")
    assert (t["live_repeats"] == 2).all()
    assert t.loc["share[local/cpu]", "sim"] == 1.0 and t.loc["share[local/cpu]", "live"] == 1.0
    # the emulator runs the simulator's own timing model: E2E agrees closely (loose: shared cores)
    assert abs(t.loc["e2e_p50_s", "rel_error"]) < 0.3
    assert len(pd.read_parquet(out / "live_requests_2.parquet")) == 40
    assert "simulated versus live" in capsys.readouterr().out
