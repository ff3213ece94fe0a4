"""Does the engine run a light open-loop replay's steps slower than the anchor's closed groups?

    python benchmarks/engine_iterations.py                     # 6 rounds at 25 %, about 9 minutes
    python benchmarks/engine_iterations.py --rounds 8 --level 0.5 --out /tmp/iters

Why: at 25 % of saturation the engine has run, on average over the benchmark runs, about 2 points
slower in a replay than the speed anchor's closed groups of 8 read (docs/fidelity.md §17). Either
its steps themselves run slower there (the forward pass at the same batch), or the time between them
grows, or the perf model's shape at small batches is off — the anchor reads a batch of 8, a light
replay decodes 1–3 sequences at a time. vLLM's iteration log (``publicai_lab.live.iterations``) times
every step's forward pass inside the engine and says what the step held, so the three can be told
apart.

One pinned server of the small model (engine on CPU 1, API server, gateway and this script on CPU 0,
as in the fidelity runs), started with ``--enable-logging-iteration-details``; a QUICK calibration on
the spot prices the steps; saturation is measured (200 requests, closed loop) and small-cpu.yaml's
workload replayed at ``--level`` of it. A round is four phases: closed groups of 8 (the anchor's
reading: 12 groups of 144 + 56 tokens), of 2 (12 groups) and of 1 (8 lone requests), then the
150-request replay through the gateway — the same requests every round. It prints
- the median forward pass of decode-only steps by batch, phase by phase (the same step shape in
  closed groups and in the replay),
- per phase the engine's mean inter-token latency (vLLM's ``/metrics``) over its token-weighted
  forward pass (what the engine spends between forward passes),
- the engine's inter-token latency over the perf model's price (closed groups: their steps; the
  replay: the simulation's mean inter-token latency at the same rate and seed), and the replay's
  ratio against each closed shape's in the same round (mean and standard error over rounds).
The iterations and phases are saved under ``--out``. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the closed shapes read every round: name → (concurrency, groups); the anchor's prompts and outputs
CLOSED = {"closed8": (8, 12), "closed2": (2, 12), "closed1": (1, 8)}
PROMPT_TOKENS, OUTPUT_TOKENS = 144, 56


def closed_itl_s(perf: Any, batch: int) -> float:
    """The perf model's mean decode step over a closed group's life (contexts growing one token a step)."""
    steps = [perf.step_s(0, batch, batch * (PROMPT_TOKENS + j)) for j in range(1, OUTPUT_TOKENS)]
    return sum(steps) / len(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="rounds of the four phases (default 6)")
    ap.add_argument("--level", type=float, default=0.25, help="replay rate as a share of saturation (default 0.25)")
    ap.add_argument("--requests", type=int, default=150, help="requests a replay (default 150)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "engine_iterations",
                    help="directory for iterations.csv, phases.csv and the server's log (default out/engine_iterations)")
    args = ap.parse_args()
    if args.rounds < 2 or not 0 < args.level < 1 or args.requests < 10:
        raise SystemExit(f"engine_iterations: --rounds must be >= 2, --level in (0, 1), --requests >= 10; "
                         f"got {args.rounds}, {args.level}, {args.requests}")

    import pandas as pd

    from publicai_lab import load_scenario
    from publicai_lab.live.anchor import speed_windows
    from publicai_lab.live.calibrate import QUICK, calibrate
    from publicai_lab.live.fidelity import engine_itl_during, measure_saturation_rps, one_server_scenario
    from publicai_lab.live.gateway import BackendSpec, Gateway
    from publicai_lab.live.iterations import ITERATION_DETAILS_ARG, LogPhases
    from publicai_lab.live.loadgen import run_live
    from publicai_lab.live.tiny_model import TOY_VLLM_ARGS, timing_server

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("engine_iterations: needs two cores (one for the engine, one for the rest)")
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "vllm.log"
    server = timing_server("small", ROOT / ".cache", cpus=str(cpus[1]), api_cpus=str(cpus[0]), log_path=log_path,
                           extra_args=TOY_VLLM_ARGS + (ITERATION_DETAILS_ARG,), startup_timeout_s=600)
    os.sched_setaffinity(0, {cpus[0]})
    phases = LogPhases(log_path)

    def timed(mark: dict, run: Callable[[], Any]) -> Any:
        """Run ``run()`` with the engine's inter-token-latency totals read around it into ``mark``."""
        with engine_itl_during(server.base_url) as itl:
            result = run()
        mark["engine_itl_s"] = itl[0] / itl[1] if itl[1] else math.nan
        return result

    server.start()
    try:
        server.wait_ready()
        base = one_server_scenario(load_scenario(ROOT / "scenarios" / "small-cpu.yaml"))
        gateway = Gateway(base, backends=[BackendSpec(base.backend_id(*base.clusters()[0]), server.base_url,
                                                      model=server.model_name)])
        with gateway.serve() as url:
            cal = calibrate(server.base_url, server.model_name, **QUICK, anchor_readings=0, stream_probes=0)
            print(f"priced by a QUICK calibration on the spot: {cal}")
            scenario = one_server_scenario(base, cal.model)
            saturation = measure_saturation_rps(scenario, url, requests=200, repeats=1)
            rate_rps = args.level * saturation
            scenario = scenario.with_overrides(rate_per_s=rate_rps)
            print(f"saturation {saturation:.1f} req/s; replays at {rate_rps:.2f} req/s")
            run_live(scenario.with_overrides(seed=scenario.seed + 1), url, requests=50, progress=False, run_id="warmup")
            t0 = time.monotonic()
            for k in range(args.rounds):
                for name, (concurrency, groups) in CLOSED.items():
                    with phases.phase(name, round=k) as mark:
                        timed(mark, lambda: speed_windows(server.base_url, server.model_name, seed=k, prefill_tokens=0,
                                                          concurrency=concurrency, groups=groups))
                with phases.phase("replay", round=k) as mark:
                    timed(mark, lambda: run_live(scenario, url, requests=args.requests, progress=False,
                                                 run_id=f"replay-{k}"))
                print(f"\rround {k + 1}/{args.rounds} ({time.monotonic() - t0:.0f} s)", end="", flush=True)
    finally:
        server.stop()
    print()

    iterations = phases.iterations()
    marks = pd.DataFrame(phases.marks).drop(columns=["start_byte", "end_byte"])
    report(iterations, marks, cal.model, scenario, args.requests, args.out)


def report(iterations: pd.DataFrame, marks: pd.DataFrame, perf: Any, scenario: Any, requests: int,
           out: Path) -> None:
    """Print the three comparisons (module doc) and save the iterations and the phases under ``out``.

    ``marks``: one row per phase run (phase, round, engine_itl_s, wall_s); ``scenario``: the replay's,
    at its rate, priced by ``perf``."""
    import pandas as pd

    from publicai_lab.live.fidelity import mean_itl_s, segment_plan, simulate_segments
    from publicai_lab.live.iterations import decode_step_medians, phase_summary

    iterations.to_csv(out / "iterations.csv", index=False)
    summaries = [phase_summary(iterations[(iterations["phase"] == m.phase) & (iterations["round"] == m.round)])
                 for m in marks.itertuples()]
    marks = pd.concat([marks.reset_index(drop=True), pd.DataFrame(summaries)], axis=1)

    print("\nForward pass of decode-only steps, median ms, by decoding batch (engine-timed):")
    medians = decode_step_medians(iterations) * 1e3
    counts = decode_step_medians(iterations, aggfunc="size")
    print(medians.round(2).join(counts.add_suffix(" steps")).head(8).to_string())

    model = {name: closed_itl_s(perf, c) for name, (c, _) in CLOSED.items()}
    model["replay"] = mean_itl_s(simulate_segments(scenario, segment_plan(requests, 1, scenario.seed)))
    marks["model_itl_s"] = marks["phase"].map(model)
    marks["itl_over_model"] = marks["engine_itl_s"] / marks["model_itl_s"]
    marks["itl_over_forward"] = marks["engine_itl_s"] / marks["weighted_elapsed_s"]
    marks.to_csv(out / "phases.csv", index=False)
    per_phase = marks.groupby("phase", sort=False).agg(
        engine_itl_ms=("engine_itl_s", lambda v: 1e3 * v.mean()),
        forward_ms=("weighted_elapsed_s", lambda v: 1e3 * v.mean()), mean_batch=("mean_batch", "mean"),
        itl_over_forward=("itl_over_forward", "mean"), model_itl_ms=("model_itl_s", lambda v: 1e3 * v.mean()),
        itl_over_model=("itl_over_model", "mean"))
    print("\nPer phase (means over rounds): the engine's inter-token latency, its token-weighted forward pass, "
          "and the perf model's price:")
    print(per_phase.round(3).to_string())
    ratios = marks.pivot(index="round", columns="phase", values="itl_over_model")
    print("\nThe replay's engine speed against each closed shape's in the same round (points slower, +):")
    for name in CLOSED:
        points = 100 * (ratios["replay"] / ratios[name] - 1)
        se = points.std() / math.sqrt(len(points))
        print(f"  against {name}: {points.mean():+.1f} points (se {se:.1f}; rounds "
              f"{' / '.join(f'{p:+.1f}' for p in points)})")
    print(f"\nsaved: {out}/iterations.csv ({len(iterations)} iterations), {out}/phases.csv")

if __name__ == "__main__":
    main()
