"""The Prometheus parser and vLLM gauge extraction, on a page captured from a real vLLM server
(tests/data/vllm_metrics_sample.txt) and on hand-written edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from publicai_lab.errors import GatewayError
from publicai_lab.live.metrics import (
    EngineGauges,
    engine_gauges,
    histogram_buckets,
    histogram_quantile,
    parse_prometheus,
    sample_sum,
)

SAMPLE = Path(__file__).parent / "data" / "vllm_metrics_sample.txt"


@pytest.fixture(scope="module")
def sample_text() -> str:
    return SAMPLE.read_text()


def test_real_vllm_page_gauges(sample_text: str) -> None:
    g = engine_gauges(sample_text)
    assert g == EngineGauges(running=12, waiting=0, kv_use=pytest.approx(0.0015259720441921365))
    assert isinstance(g.running, int) and isinstance(g.waiting, int)
    assert engine_gauges(sample_text, model_name="tiny") == g


def test_real_vllm_page_parses_every_family(sample_text: str) -> None:
    s = parse_prometheus(sample_text)
    assert s["vllm:prompt_tokens_total"] == [({"engine": "0", "model_name": "tiny"}, 2424.0)]
    assert sample_sum(s, "vllm:time_to_first_token_seconds_count") == 12.0
    assert sample_sum(s, "vllm:num_requests_running", model_name="other") is None
    buckets = histogram_buckets(s, "vllm:time_to_first_token_seconds", model_name="tiny")
    assert buckets[-1] == (math.inf, 12.0)
    assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
    # all 12 first tokens fell in (0.1, 0.25]: the median interpolates to the bucket's middle
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.175)
    # every sample line of the page became exactly one series
    lines = [ln for ln in sample_text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert sum(len(v) for v in s.values()) == len(lines)


def test_unknown_model_name_is_an_error(sample_text: str) -> None:
    with pytest.raises(GatewayError, match="model_name='nope'"):
        engine_gauges(sample_text, model_name="nope")


def test_not_a_vllm_page() -> None:
    with pytest.raises(GatewayError, match="not a vLLM /metrics page"):
        engine_gauges("# HELP up x\nup 1\n")


def test_sums_engines_and_takes_max_kv() -> None:
    text = (
        'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 4\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75\n'
    )
    assert engine_gauges(text) == EngineGauges(7, 1, 0.75)
    assert engine_gauges(parse_prometheus(text)) == EngineGauges(7, 1, 0.75)


def test_old_kv_gauge_name_and_missing_kv() -> None:
    base = "vllm:num_requests_running 2\nvllm:num_requests_waiting 5\n"
    assert engine_gauges(base + "vllm:gpu_cache_usage_perc 0.5\n") == EngineGauges(2, 5, 0.5)
    assert engine_gauges(base) == EngineGauges(2, 5, 0.0)
    # the new name wins when both are present
    both = base + "vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.2\n"
    assert engine_gauges(both).kv_use == 0.2


def test_escapes_special_values_timestamps_exemplars() -> None:
    text = "\n".join([
        "# HELP weird A metric with \\\\ and \\n in help",
        "# TYPE weird gauge",
        'weird{path="/v1/chat",quote="say \\"hi\\"",back="a\\\\b",nl="x\\ny",comma="a,b}c"} 1.5',
        "inf_pos +Inf",
        "inf_neg -Inf",
        "not_a_number NaN",
        "with_ts 42 1700000000000",
        'lat_bucket{le="0.5"} 3 # {trace_id="abc"} 0.4 1700000000',
        "sci 1.5e-3",
        "   ",
        'trailing_comma{a="1",} 7',
        "empty_labels{} 8",
        "# EOF",
    ])
    s = parse_prometheus(text)
    labels, value = s["weird"][0]
    assert value == 1.5
    assert labels == {"path": "/v1/chat", "quote": 'say "hi"', "back": "a\\b", "nl": "x\ny",
                      "comma": "a,b}c"}
    assert s["inf_pos"][0][1] == math.inf
    assert s["inf_neg"][0][1] == -math.inf
    assert math.isnan(s["not_a_number"][0][1])
    assert s["with_ts"][0][1] == 42.0
    assert s["lat_bucket"] == [({"le": "0.5"}, 3.0)]
    assert s["sci"][0][1] == 0.0015
    assert s["trailing_comma"] == [({"a": "1"}, 7.0)]
    assert s["empty_labels"] == [({}, 8.0)]


@pytest.mark.parametrize("bad", [
    'm{a="unterminated} 1',
    "m{a=1} 1",
    "m",
    "m abc",
    "1bad 2",
    'm{a="1" b="2"} 3',
])
def test_malformed_lines_raise_with_line_number(bad: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_prometheus("ok 1\n" + bad + "\n")


def test_nan_kv_is_ignored() -> None:
    text = ("vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
            'vllm:kv_cache_usage_perc{engine="0"} NaN\nvllm:kv_cache_usage_perc{engine="1"} 0.3\n')
    assert engine_gauges(text).kv_use == 0.3


def test_histogram_quantile_matches_promql() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 40.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.125, buckets) == pytest.approx(0.05)  # first bucket starts at 0
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 10 / 20)
    assert histogram_quantile(1.0, buckets) == pytest.approx(1.0)
    # a quantile landing in +Inf returns the highest finite bound
    assert histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))
    with pytest.raises(ValueError):
        histogram_quantile(1.5, buckets)
    with pytest.raises(ValueError):
        histogram_quantile(0.5, [(1.0, 1.0)])
