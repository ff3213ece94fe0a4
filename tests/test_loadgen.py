"""The live load generator against emulated backends (no gateway, no vLLM): the sim's workload
replayed request for request, the pinned record schema, status mapping, interruption."""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import pytest

from conftest import SCENARIOS_DIR
from publicai_lab.live.emulator import EmulatedBackend, Faults, serve_many
from publicai_lab.live.loadgen import (
    PromptBuilder,
    _classify,
    add_cli,
    load_api_keys,
    run_live,
    run_live_async,
)
from publicai_lab.records import validate_frame
from publicai_lab.scenario import load_scenario
from publicai_lab.workload import generate

TOY = SCENARIOS_DIR / "toy.yaml"


@pytest.fixture(scope="module")
def toy():
    return load_scenario(TOY)


def sim_specs(scenario, seed: int, n: int):
    workload_ss, _ = np.random.SeedSequence(seed).spawn(2)
    return list(generate(scenario, np.random.default_rng(workload_ss), max_requests=n, horizon_s=None))


class Gatewayish(EmulatedBackend):
    """An emulator that answers like the gateway would: placement headers, and it remembers the
    request headers it saw."""

    seen: list[dict[str, str]]

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/chat"):
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": list(msg["headers"]) + [
                    (b"x-selected-backend", b"elsewhere/gpu"), (b"x-compute-sponsor", b"Acme"),
                    (b"x-compute-location", b"SG"), (b"x-gateway-attempts", b"2")]}
            await send(msg)

        await super().__call__(scope, receive, send_with_headers)


def test_replays_toy_request_for_request(toy):
    n = 60
    b = EmulatedBackend.from_scenario(toy, "local/cpu")
    with b.serve() as url:
        res = run_live(toy, url, requests=n, progress=False, backend="local/cpu")
    df = validate_frame(res.requests)
    assert len(df) == n and (df["status"] == "ok").all()             # nothing lost
    assert (df["source"] == "live").all() and df["queue_wait_s"].isna().all()
    specs = sim_specs(toy, toy.seed, n)
    assert df["request_id"].tolist() == [s.request_id for s in specs]
    assert np.array_equal(df["arrival_s"].to_numpy(), np.array([s.arrival_s for s in specs]))
    assert df["prompt_tokens"].tolist() == [s.prompt_tokens for s in specs]
    assert df["output_tokens"].tolist() == [s.output_tokens for s in specs]
    assert set(df["backend_id"]) == {"local/cpu"} and set(df["country"]) == {"CH"}
    assert set(df["partner"]) == {"local"} and set(df["model"]) == {"publicai-lab/tiny-llama"}
    # the emulator served exactly the lengths asked for (prompt calibrated with /tokenize)
    u = res.usage.set_index("request_id")
    assert (u["served_prompt_tokens"] == df.set_index("request_id")["prompt_tokens"]).all()
    assert (u["served_output_tokens"] == df.set_index("request_id")["output_tokens"]).all()
    assert res.usage["send_lag_s"].median() < 0.02
    s = res.summary()
    assert s.loc["ALL", "ok"] == n
    # same workload, same perf model: live latency close to the simulator's
    from publicai_lab.sim import simulate
    sim = simulate(toy, requests=n, progress=False).requests
    assert np.array_equal(sim["arrival_s"].to_numpy(), df["arrival_s"].to_numpy())
    assert df["e2e_s"].median() == pytest.approx(sim["e2e_s"].median(), rel=0.25)


class NoTokenize(EmulatedBackend):
    """A target without /tokenize (like a gateway), whose "tokenizer" counts 2 tokens a word + 5."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/tokenize":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await super().__call__(scope, receive, send)

    def _prompt_tokens(self, body, chat):
        return 2 * super()._prompt_tokens(body, chat) + 5


def test_prompt_length_calibrated_by_probe_without_tokenize(toy):
    b = NoTokenize(toy.resolve_model("tiny-llama"))
    with b.serve() as url:
        res = run_live(toy, url, requests=10, progress=False)
    assert res.prompt_calibration == {"tokens_per_word": 2.0, "overhead_tokens": 5.0, "calibrated": 1.0}
    served = res.usage["served_prompt_tokens"].to_numpy()
    asked = res.requests["prompt_tokens"].to_numpy()
    assert np.abs(served - asked).max() <= 1                         # odd lengths round to even


def test_gateway_headers_tiers_and_regions(toy, tmp_path):
    b = Gatewayish(toy.resolve_model("tiny-llama"), engine=EmulatedBackend.from_scenario(toy, "local/cpu").params)
    b.seen = []
    keys = tmp_path / "keys.yaml"
    keys.write_text("free: [sk-a, sk-b]\n")
    with b.serve() as url:
        res = run_live(toy, url + "/v1", requests=8, progress=False, api_keys=keys, calibrate=False)
    df = validate_frame(res.requests)
    assert (df["status"] == "ok").all()
    assert set(df["backend_id"]) == {"elsewhere/gpu"} and set(df["partner"]) == {"Acme"}
    assert set(df["country"]) == {"SG"} and set(df["attempts"]) == {2}
    assert all(h["x-client-region"] == "default" for h in b.seen)
    assert {h["authorization"] for h in b.seen} <= {"Bearer sk-a", "Bearer sk-b"}
    assert all(h["content-type"] == "application/json" for h in b.seen)


def test_errors_map_to_statuses(toy):
    bad = EmulatedBackend(toy.resolve_model("tiny-llama"), faults=Faults(error_rate=1.0))
    hang = EmulatedBackend(toy.resolve_model("tiny-llama"), faults=Faults(stall_rate=1.0, stall_s=5.0))
    other = EmulatedBackend("some-other-model", served_model_names=["and-another"])
    with serve_many([bad, hang, other]) as (u_bad, u_hang, u_other):
        r = run_live(toy, u_bad, requests=3, progress=False)
        assert set(r.requests["status"]) == {"failed"} and set(r.requests["error_type"]) == {"http_500"}
        r = run_live(toy, u_hang, requests=2, progress=False, timeout_s=0.3)
        assert set(r.requests["status"]) == {"timeout"}
        r = run_live(toy, u_other, requests=2, progress=False)         # two models served: no guess
        assert set(r.requests["error_type"]) == {"model_not_found"}
        assert set(r.requests["status"]) == {"rejected"}
    r = run_live(toy, u_bad, requests=2, progress=False)                # nobody listens any more
    assert set(r.requests["status"]) == {"failed"} and set(r.requests["error_type"]) == {"connection_error"}
    validate_frame(r.requests)
    assert _classify(429, "") == ("rejected", "rate_limited")
    assert _classify(400, "This model's maximum context length is 10") == ("rejected", "context_length_exceeded")
    assert _classify(401, "") == ("rejected", "unauthorized")
    assert _classify(503, "") == ("failed", "http_503")
    assert _classify(504, "") == ("timeout", "timeout")


def test_interrupted_run_keeps_what_it_gathered(toy):
    # a slow engine (50 ms steps, 1 sequence at a time): most requests are still queued at the cut
    slow = EmulatedBackend(toy.resolve_model("tiny-llama"),
                           engine=EmulatedBackend.from_scenario(toy, "local/cpu").params)
    from dataclasses import replace
    from publicai_lab.perf import StepTimeModel
    slow.params = replace(slow.params, perf=StepTimeModel(c0_s=0.01), max_num_seqs=1)
    with slow.serve() as url:
        async def main():
            task = asyncio.ensure_future(run_live_async(toy, url, requests=200, progress=False))
            await asyncio.sleep(1.0)
            task.cancel()
            return await task

        res = asyncio.run(main())
    df = validate_frame(res.requests)
    assert res.interrupted
    counts = df["status"].value_counts()
    assert counts.get("ok", 0) >= 1 and counts.get("incomplete", 0) >= 1
    assert set(counts.index) <= {"ok", "incomplete"}
    assert 1 <= len(df) < 200 and df["request_id"].is_unique
    assert df["arrival_s"].max() <= 1.0 + 0.5      # nothing sent after the cut (+ CPU starvation)
    inc = df[df["status"] == "incomplete"]
    assert inc["e2e_s"].isna().all()


def test_horizon_cuts_like_the_simulator(toy):
    b = EmulatedBackend.from_scenario(toy, "local/cpu")
    with b.serve() as url:
        res = run_live(toy, url, horizon_s=0.5, progress=False, calibrate=False)
    df = validate_frame(res.requests)
    specs = sim_specs(toy, toy.seed, 200)
    expected = [s.arrival_s for s in specs if s.arrival_s <= 0.5]
    assert df["arrival_s"].tolist() == expected
    assert res.duration_s == pytest.approx(0.5)
    assert set(df["status"]) <= {"ok", "incomplete"}


def test_cli_writes_records_and_report(toy, tmp_path, capsys):
    b = EmulatedBackend.from_scenario(toy, "local/cpu")
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    with b.serve() as url:
        args = parser.parse_args(["loadgen", "--scenario", str(TOY), "--target", url, "--requests", "20",
                                  "--seed", "3", "--out", str(tmp_path / "run"), "--quiet"])
        assert args.func(args) == 0
    from publicai_lab.analysis import read_requests
    df = validate_frame(read_requests(tmp_path / "run" / "requests.parquet"))
    assert len(df) == 20 and (df["status"] == "ok").all()
    assert np.array_equal(df["arrival_s"].to_numpy(), [s.arrival_s for s in sim_specs(toy, 3, 20)])
    assert (tmp_path / "run" / "report.md").read_text().startswith("# Live: toy")
    assert "ok" in capsys.readouterr().out


def test_prompt_builder_and_key_files(tmp_path):
    pb = PromptBuilder(np.random.default_rng(0))
    assert len(pb.text(50).split()) == 50
    pb.fit(40, 60, 240, 320)                          # 1.3 tokens per word + 8 for the chat template
    assert pb.tokens_per_word == pytest.approx(1.3) and pb.overhead_tokens == pytest.approx(8.0)
    assert pb.words_for(132) == 95
    (tmp_path / "a.json").write_text('{"sk-1": "free", "sk-2": "pro"}')
    assert load_api_keys(tmp_path / "a.json", ["free", "pro"]) == {"free": ["sk-1"], "pro": ["sk-2"]}
    (tmp_path / "b.txt").write_text("# key tier\nsk-1 free\npro sk-2\n")
    assert load_api_keys(tmp_path / "b.txt", ["free", "pro"]) == {"free": ["sk-1"], "pro": ["sk-2"]}
    (tmp_path / "c.yaml").write_text("keys:\n  - {key: sk-9, tier: pro}\n")
    assert load_api_keys(tmp_path / "c.yaml") == {"pro": ["sk-9"]}
    # the gateway's own key file (live/auth.py): key -> tier or key -> {tier, name}
    (tmp_path / "d.yaml").write_text("sk-alice-0123: pro\nsk-bob-4567: {tier: free, name: bob}\n")
    assert load_api_keys(tmp_path / "d.yaml", ["free", "pro"]) == {"pro": ["sk-alice-0123"],
                                                                  "free": ["sk-bob-4567"]}
