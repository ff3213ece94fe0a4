"""Tests for publicai_lab.analysis: summary numbers on a hand-built run, figures, reports on disk."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from publicai_lab import analysis
from publicai_lab.analysis import (
    meets_slo,
    percentiles,
    plot_latency_cdfs,
    plot_routing_shares,
    plot_utilisation,
    report_from_dir,
    slo_attainment,
    summarize,
    write_report,
)
from publicai_lab.errors import PublicAILabError
from publicai_lab.records import RequestRecord, empty_frame, to_frame, validate_frame

NAN = math.nan


def _rec(rid: int, arrival_s: float, partner: str | None, status: str, *, ttft: float = NAN,
         e2e: float = NAN, tpot: float = NAN, prompt: int = 100, output: int = 50,
         backend: str | None = "auto") -> RequestRecord:
    if backend == "auto":
        backend = None if partner is None else f"{partner}/c1"
    return RequestRecord(
        run_id="r1", source="sim", request_id=rid, arrival_s=arrival_s, client_region="eu",
        tier="free", model="m", prompt_tokens=prompt, output_tokens=output, policy="p",
        backend_id=backend, partner=partner, country=None if partner is None else "CH",
        attempts=1, status=status, error_type="rate_limit" if status == "rejected" else None,
        queue_wait_s=0.0 if status == "ok" else NAN, ttft_s=ttft, e2e_s=e2e, tpot_s=tpot)


@pytest.fixture
def requests() -> pd.DataFrame:
    """Nine requests over 100 s. SLO defaults: ttft 2.0, tpot 0.1, e2e 60.

    Meets SLO: #0 (clearly), #1 (ttft and tpot exactly on the boundary), #3 (e2e exactly 60,
    tpot NaN). Misses: #2 (ttft 2.5), #4 (e2e 61). Not ok: #5 failed, #6 rejected, #7 timeout,
    #8 incomplete.
    """
    recs = [
        _rec(0, 0.0, "A", "ok", ttft=1.0, e2e=10.0, tpot=0.05, prompt=100, output=50),
        _rec(1, 10.0, "A", "ok", ttft=2.0, e2e=20.0, tpot=0.1, prompt=200, output=100),
        _rec(2, 20.0, "A", "ok", ttft=2.5, e2e=5.0, tpot=0.02, prompt=300, output=150),
        _rec(3, 30.0, "B", "ok", ttft=0.5, e2e=60.0, tpot=NAN, prompt=400, output=1),
        _rec(4, 40.0, "B", "ok", ttft=0.5, e2e=61.0, tpot=0.05, prompt=500, output=200),
        _rec(5, 50.0, "B", "failed"),
        _rec(6, 60.0, None, "rejected"),
        _rec(7, 70.0, "A", "timeout"),
        _rec(8, 80.0, "A", "incomplete"),
    ]
    return validate_frame(to_frame(recs))


@pytest.fixture
def backends() -> pd.DataFrame:
    """A/c1 is paid ($2 per GPU-hour, 10 GPU-hours); B/c1 is donated (its price must be ignored)."""
    return pd.DataFrame({
        "backend_id": ["A/c1", "B/c1"], "partner": ["A", "B"], "cluster": ["c1", "c1"],
        "country": ["CH", "DE"], "region": ["eu", "eu"], "model": ["m", "m"],
        "hardware": ["H100", "A100"], "gpus": [8, 4], "replicas": [2, 2], "tensor_parallel": [4, 2],
        "donated": [False, True], "cost_per_gpu_hour_usd": [2.0, 3.0], "weight": [1.0, 1.0],
        "busy_s": [50.0, 30.0], "available_s": [100.0, 120.0], "gpu_hours": [10.0, 4.0],
    })


@pytest.fixture
def replicas() -> pd.DataFrame:
    rows = []
    for bid in ("A/c1", "B/c1"):
        for replica in (0, 1):
            for t in (0.0, 5.0, 10.0):
                rows.append({"time_s": t, "backend_id": bid, "replica": replica,
                             "running": 2 + replica, "waiting": 0, "kv_use": 0.2 * (replica + 1)})
    return pd.DataFrame(rows)


# --- summary -----------------------------------------------------------------------------------

def test_counts_and_rows(requests: pd.DataFrame) -> None:
    s = summarize(requests, duration_s=100.0)
    assert list(s.index) == ["A", "B", "(unrouted)", "ALL"]
    assert s.loc["ALL", ["requests", "ok", "rejected", "failed", "timeout", "incomplete"]].tolist() \
        == [9, 5, 1, 1, 1, 1]
    assert s.loc["A", ["requests", "ok", "timeout", "incomplete"]].tolist() == [5, 3, 1, 1]
    assert s.loc["B", ["requests", "ok", "failed"]].tolist() == [3, 2, 1]
    assert s.loc["(unrouted)", "rejected"] == 1
    # partner rows add up to ALL
    assert s.drop(index="ALL")["requests"].sum() == s.loc["ALL", "requests"]
    assert s["ok"].dtype == np.int64


def test_rates_and_goodput_with_boundaries(requests: pd.DataFrame) -> None:
    s = summarize(requests, duration_s=100.0)
    assert s.loc["ALL", "throughput_rps"] == pytest.approx(5 / 100)
    assert s.loc["ALL", "output_tokens_per_s"] == pytest.approx((50 + 100 + 150 + 1 + 200) / 100)
    # #0, #1 (on the ttft/tpot boundary) and #3 (on the e2e boundary, NaN tpot) meet the SLO
    assert s.loc["ALL", "goodput_rps"] == pytest.approx(3 / 100)
    assert s.loc["A", "goodput_rps"] == pytest.approx(2 / 100)
    assert s.loc["ALL", "slo_attainment"] == pytest.approx(3 / 8)   # rejected excluded
    assert s.loc["A", "slo_attainment"] == pytest.approx(2 / 5)
    assert s.loc["B", "slo_attainment"] == pytest.approx(1 / 3)
    assert math.isnan(s.loc["(unrouted)", "slo_attainment"])
    assert meets_slo(requests).tolist() == [True, True, False, True, False, False, False, False, False]


def test_rates_default_to_arrival_span(requests: pd.DataFrame) -> None:
    s = summarize(requests)                      # arrivals span 0..80 s
    assert s.loc["ALL", "throughput_rps"] == pytest.approx(5 / 80)


def test_slo_as_object_dict_or_partial(requests: pd.DataFrame) -> None:
    strict = SimpleNamespace(ttft_s=1.0, tpot_s=0.1, e2e_s=60.0)
    assert slo_attainment(requests, strict) == pytest.approx(2 / 8)           # #0 and #3
    assert slo_attainment(requests, {"ttft_s": 1.0}) == pytest.approx(2 / 8)  # rest defaults
    assert slo_attainment(requests, {"ttft_s": 10, "tpot_s": 1, "e2e_s": 100}) == pytest.approx(5 / 8)
    tight = summarize(requests, slo={"e2e_s": 9.0}, duration_s=100.0)
    assert tight.loc["ALL", "goodput_rps"] == pytest.approx(0.0)


def test_latency_percentiles_ok_only(requests: pd.DataFrame) -> None:
    s = summarize(requests, duration_s=100.0)
    assert s.loc["A", "ttft_p50_s"] == pytest.approx(2.0)                  # of [1.0, 2.0, 2.5]
    assert s.loc["ALL", "e2e_p50_s"] == pytest.approx(20.0)                # of [5, 10, 20, 60, 61]
    assert s.loc["B", "tpot_p50_s"] == pytest.approx(0.05)                 # NaN tpot dropped
    p = percentiles(np.arange(1, 101, dtype=float))
    assert p[50] == pytest.approx(50.5) and p[90] == pytest.approx(90.1) and p[99] == pytest.approx(99.01)
    assert percentiles([NAN, NAN]).isna().all()
    assert percentiles([], qs=(10,)).isna().all()


def test_cost_donated_vs_paid(requests: pd.DataFrame, backends: pd.DataFrame) -> None:
    s = summarize(requests, backends, duration_s=100.0)
    a_tokens = 100 + 50 + 200 + 100 + 300 + 150
    assert s.loc["A", "cost_usd"] == pytest.approx(20.0)
    assert s.loc["A", "cost_per_mtok_usd"] == pytest.approx(20.0 / a_tokens * 1e6)
    assert s.loc["A", "donated_gpu_hours"] == pytest.approx(0.0)
    assert s.loc["B", "cost_usd"] == pytest.approx(0.0)                    # donated: free
    assert s.loc["B", "donated_gpu_hours"] == pytest.approx(4.0)
    assert s.loc["ALL", "gpu_hours"] == pytest.approx(14.0)
    assert s.loc["ALL", "cost_usd"] == pytest.approx(20.0)
    assert s.loc["ALL", "utilisation"] == pytest.approx(80.0 / 220.0)
    assert s.loc["A", "utilisation"] == pytest.approx(0.5)
    assert math.isnan(s.loc["(unrouted)", "cost_per_mtok_usd"])


def test_list_price(requests: pd.DataFrame) -> None:
    s = summarize(requests, prices={"m": (1.0, 2.0)}, duration_s=100.0)
    prompt, output = 100 + 200 + 300 + 400 + 500, 50 + 100 + 150 + 1 + 200
    assert s.loc["ALL", "list_price_usd"] == pytest.approx((prompt * 1.0 + output * 2.0) / 1e6)
    # a served model without a price makes the value unknown rather than silently low
    assert math.isnan(summarize(requests, prices={"other": (1, 1)}).loc["ALL", "list_price_usd"])
    assert "list_price_usd" not in summarize(requests).columns


def test_empty_frame_gives_nan_not_errors(backends: pd.DataFrame) -> None:
    s = summarize(empty_frame())
    assert list(s.index) == ["ALL"]
    assert s.loc["ALL", "requests"] == 0
    assert math.isnan(s.loc["ALL", "throughput_rps"]) and math.isnan(s.loc["ALL", "e2e_p99_s"])
    assert math.isnan(s.loc["ALL", "slo_attainment"])
    s2 = summarize(empty_frame(), backends, duration_s=10.0, prices={"m": (1, 1)})
    assert s2.loc["ALL", "throughput_rps"] == 0.0
    assert math.isnan(s2.loc["ALL", "cost_per_mtok_usd"])                  # no tokens
    assert s2.loc["ALL", "cost_usd"] == pytest.approx(20.0)                # capacity still costs
    assert s2.loc["ALL", "list_price_usd"] == 0.0


def test_all_nan_latencies(requests: pd.DataFrame) -> None:
    live = requests.copy()
    live["ttft_s"] = NAN
    live["tpot_s"] = NAN
    s = summarize(live, duration_s=100.0)
    assert s[["ttft_p50_s", "tpot_p99_s"]].isna().all().all()
    assert s.loc["ALL", "goodput_rps"] == 0.0                              # unknown TTFT can't meet SLO


# --- figures -----------------------------------------------------------------------------------

def test_latency_cdf_lines(requests: pd.DataFrame) -> None:
    fig = plot_latency_cdfs(requests)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2                                        # partners A and B
    assert "(s)" in ax.get_xlabel()
    x, y = ax.get_lines()[0].get_data()
    assert y[-1] == pytest.approx(1.0) and list(x) == sorted(x)
    assert len(plot_latency_cdfs(requests, by=None, metric="ttft_s").axes[0].get_lines()) == 1
    assert len(plot_latency_cdfs(empty_frame()).axes[0].get_lines()) == 0


def test_utilisation_lines(replicas: pd.DataFrame, backends: pd.DataFrame) -> None:
    fig = plot_utilisation(replicas, backends)
    kv_ax, run_ax = fig.axes
    assert len(kv_ax.get_lines()) == 2 and len(run_ax.get_lines()) == 2
    x, y = kv_ax.get_lines()[0].get_data()
    assert list(y) == pytest.approx([30.0, 30.0, 30.0])                    # mean of 20 % and 40 %
    assert list(run_ax.get_lines()[0].get_data()[1]) == [5, 5, 5]          # 2 + 3 running
    assert "%" in kv_ax.get_ylabel() and "(s)" in run_ax.get_xlabel()
    assert "H100" in kv_ax.get_legend().get_texts()[0].get_text()


def test_routing_share_bars(requests: pd.DataFrame) -> None:
    fig = plot_routing_shares(requests)
    bars = fig.axes[0].patches
    assert len(bars) == 2
    assert sorted(b.get_width() for b in bars) == pytest.approx([50.0, 50.0])  # 3 vs 2 ok + 1 failed
    assert len(plot_routing_shares(empty_frame()).axes[0].patches) == 0


# --- report ------------------------------------------------------------------------------------

def test_write_report_and_rebuild(tmp_path, requests, replicas, backends) -> None:
    run = tmp_path / "run"
    slo = SimpleNamespace(ttft_s=2.0, tpot_s=0.1, e2e_s=60.0)
    path = write_report(run, requests, replicas, backends, title="Test run", scenario_name="tiny",
                        policy="least_loaded", seed=np.int64(7), slo=slo, duration_s=100.0,
                        prices={"m": (1.0, 2.0)}, extra_markdown="Closing note.")
    assert path == run / "report.md"
    for name in ("report.md", "latency_cdf.png", "utilisation.png", "routing_shares.png",
                 "requests.parquet", "replicas.parquet", "backends.parquet", "run.json"):
        assert (run / name).is_file(), name
    md = path.read_text()
    assert md.startswith("# Test run\n")
    for needle in ("least_loaded", "**Seed:** 7", "](latency_cdf.png)", "](utilisation.png)",
                   "](routing_shares.png)", "How to read this", "| ALL | 9 | 5 | 1 | 1 | 1 | 1 |",
                   "37.5 %", "Closing note.", "cost (USD)"):
        assert needle in md, needle
    assert str(tmp_path) not in md                                         # relative links only
    meta = json.loads((run / "run.json").read_text())
    assert meta["seed"] == 7 and meta["slo"] == {"ttft_s": 2.0, "tpot_s": 0.1, "e2e_s": 60.0}
    assert meta["scenario"] == "tiny" and meta["duration_s"] == 100.0

    out = tmp_path / "rebuilt"
    rebuilt = report_from_dir(run, out)
    assert rebuilt.read_text() == md
    assert (out / "utilisation.png").is_file()
    assert report_from_dir(run).read_text() == md                          # in place, idempotent


def test_report_without_replicas_or_backends(tmp_path, requests) -> None:
    path = write_report(tmp_path, requests, title="Bare")
    assert not (tmp_path / "utilisation.png").exists()
    assert not (tmp_path / "backends.parquet").exists()
    md = path.read_text()
    assert "utilisation.png" not in md and "Capacity and cost" not in md
    assert report_from_dir(tmp_path, tmp_path / "again").read_text() == md


def test_report_of_empty_run(tmp_path) -> None:
    path = write_report(tmp_path, empty_frame(), title="Nothing happened")
    assert "| ALL | 0 |" in path.read_text()
    assert report_from_dir(tmp_path, tmp_path / "again").read_text() == path.read_text()


def test_parquet_round_trip_keeps_schema(tmp_path, requests, backends) -> None:
    write_report(tmp_path, requests, None, backends, title="rt")
    back = pd.read_parquet(tmp_path / "requests.parquet")
    validate_frame(back)
    pd.testing.assert_frame_equal(back, requests)
    assert analysis.read_requests(tmp_path / "requests.parquet")["partner"].dtype == requests["partner"].dtype
    # object-typed strings (another writer) are re-pinned on read
    obj = requests.astype({"partner": object, "status": object})
    obj.to_parquet(tmp_path / "obj.parquet", index=False)
    pd.testing.assert_frame_equal(analysis.read_requests(tmp_path / "obj.parquet"), requests)


def test_report_from_dir_errors(tmp_path) -> None:
    with pytest.raises(PublicAILabError, match="requests.parquet"):
        report_from_dir(tmp_path)


def test_public_names() -> None:
    for name in analysis.__all__:
        assert callable(getattr(analysis, name)), name
