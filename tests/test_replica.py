"""The vLLM replica model, read as traces: exact times from the perf model, batching, KV limits."""

from __future__ import annotations

import math

import pytest
import simpy

from publicai_lab.perf import EngineParams, StepTimeModel
from publicai_lab.sim.replica import Replica


def make(perf: StepTimeModel, *, max_num_seqs: int = 8, max_batched: int = 512, kv_blocks: int = 10_000,
         chunked: bool = True, block_size: int = 16):
    env = simpy.Environment()
    log: list[tuple[str, float, float]] = []
    params = EngineParams(perf=perf, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched,
                          block_size=block_size, kv_blocks=kv_blocks, enable_chunked_prefill=chunked,
                          max_context_tokens=100_000)
    rep = Replica(env, params, name="r0",
                  on_finish=lambda seq, t: log.append((seq.req, seq.first_token_s, t)),
                  on_reject=lambda seq, t: log.append((seq.req, math.nan, -t)), scrape_interval_s=1.0)
    return env, rep, log


def at(env, t, fn):
    ev = env.timeout(t)
    ev.callbacks.append(lambda _e: fn())


def test_single_request_matches_the_perf_model_exactly():
    perf = StepTimeModel(c0_s=0.01, c_prefill_s=1e-4, c_prefill_sq_s=1e-8, c_decode_s=1e-3, c_ctx_s=1e-6)
    env, rep, log = make(perf)
    at(env, 1.0, lambda: rep.add("a", 100, 50))
    env.run()
    (name, first, done), = log
    assert first == pytest.approx(1.0 + perf.step_s(100, 0, 0, 100 * 100), rel=1e-12)
    assert done == pytest.approx(1.0 + perf.service_s(100, 50), rel=1e-9)
    assert rep.busy_s == pytest.approx(perf.service_s(100, 50), rel=1e-9)


def test_continuous_batching_joins_at_the_next_step_boundary():
    # constant step time 10 ms: a arrives at 0 (2 steps for 100 prompt tokens? no: one step), b at 25 ms
    perf = StepTimeModel(c0_s=0.010)
    env, rep, log = make(perf)
    at(env, 0.0, lambda: rep.add("a", 10, 10))   # steps end at 10,20,...,100 ms
    at(env, 0.025, lambda: rep.add("b", 10, 3))  # joins the step starting at 30 ms
    env.run()
    got = {n: (f, d) for n, f, d in log}
    assert got["a"][0] == pytest.approx(0.010) and got["a"][1] == pytest.approx(0.100)
    assert got["b"][0] == pytest.approx(0.040) and got["b"][1] == pytest.approx(0.060)


def test_max_num_seqs_queues_fcfs():
    perf = StepTimeModel(c0_s=0.010)
    env, rep, log = make(perf, max_num_seqs=1)
    for name in "abc":
        at(env, 0.0, lambda n=name: rep.add(n, 5, 2))
    env.run()
    assert [n for n, _, _ in log] == ["a", "b", "c"]
    assert [d for _, _, d in log] == pytest.approx([0.02, 0.04, 0.06])


def test_chunked_prefill_splits_a_long_prompt_over_steps():
    perf = StepTimeModel(c0_s=0.010, c_prefill_s=1e-5)
    env, rep, log = make(perf, max_batched=256)
    at(env, 0.0, lambda: rep.add("long", 1000, 2))
    env.run()
    (_, first, done), = log
    # 4 chunks of 256, 256, 256, 232 tokens, then one decode step
    expected_first = 4 * 0.010 + 1000 * 1e-5
    assert first == pytest.approx(expected_first)
    assert done == pytest.approx(expected_first + 0.010)


def test_kv_exhaustion_preempts_the_newest_and_everything_still_finishes():
    perf = StepTimeModel(c0_s=0.001, c_decode_s=1e-4)
    # 20 blocks of 16 tokens = 320 tokens: three requests of 64 + 100 tokens cannot all fit
    env, rep, log = make(perf, kv_blocks=20, max_num_seqs=8)
    for name in "abc":
        at(env, 0.0, lambda n=name: rep.add(n, 64, 100))
    env.run()
    assert sorted(n for n, _, _ in log) == ["a", "b", "c"]
    assert rep.preemptions >= 1
    assert not rep.running and not rep.waiting
    done = {n: d for n, _, d in log}
    assert done["a"] <= done["c"]


def test_prompt_larger_than_the_whole_cache_is_rejected_not_stuck():
    perf = StepTimeModel(c0_s=0.001)
    env, rep, log = make(perf, kv_blocks=4)
    at(env, 0.0, lambda: rep.add("huge", 200, 5))
    env.run()
    (name, first, t), = log
    assert name == "huge" and t <= 0 and math.isnan(first)


def test_abort_frees_the_slot_at_the_next_step():
    perf = StepTimeModel(c0_s=0.010)
    env, rep, log = make(perf, max_num_seqs=1)
    handle = {}
    at(env, 0.0, lambda: handle.setdefault("a", rep.add("a", 5, 1000)))
    at(env, 0.0, lambda: rep.add("b", 5, 2))
    at(env, 0.055, lambda: rep.abort(handle["a"]))
    env.run()
    assert [n for n, _, _ in log] == ["b"]
    # a's step in progress ends at 60 ms; b then takes two steps
    assert log[0][2] == pytest.approx(0.080)


def test_decode_run_time_is_the_arithmetic_sum_of_growing_steps():
    perf = StepTimeModel(c0_s=0.005, c_decode_s=1e-4, c_ctx_s=1e-6)
    env, rep, log = make(perf)
    at(env, 0.0, lambda: rep.add("a", 300, 400))
    env.run()
    assert log[0][2] == pytest.approx(perf.service_s(300, 400), rel=1e-9)


def test_fail_all_returns_everything_and_goes_idle():
    perf = StepTimeModel(c0_s=0.010)
    env, rep, log = make(perf, max_num_seqs=2)
    lost = []
    for name in "abc":
        at(env, 0.0, lambda n=name: rep.add(n, 5, 100))
    at(env, 0.5, lambda: lost.extend(rep.fail_all()))
    env.run()
    assert sorted(lost) == ["a", "b", "c"] and log == []
    assert rep.busy_s == pytest.approx(0.5)
