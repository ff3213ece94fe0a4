"""What does a request arriving mid-decode cost the engine, beyond what the perf model says?

    python benchmarks/arrival_cost.py                  # 14 rounds, about 3 minutes with start-up
    python benchmarks/arrival_cost.py --rounds 20 --gap-ms 60 --out /tmp/arrivals.jsonl

Why: the calibration times closed groups — all requests arrive together, then decode together — but
a replay's requests arrive one by one while others decode, so their prefills run as mixed steps
beside the running decodes, and the engine admits, schedules and finishes a request at every step
of the batch's life. If any of that cost more than the perf model's prompt-token terms, the model
would run open-loop replays fast, most at light load (docs/fidelity.md §17).

One pinned server of the small model (engine on CPU 1, API server and this script on CPU 0, as in
the fidelity runs), idle but for this script. A round is one background group of 4 streamed requests
of 144 + 320 tokens, and, every ``--gap-ms`` while it decodes, one arriving request of two output
tokens: no arrivals (quiet), 16-token prompts (short), 150-token prompts (fixed) or prompts of 100–200
tokens drawn anew each time (varied: a new step shape at nearly every arrival). Modes rotate round by
round. Per mode it prints the background's extra decode time per arrival against its quiet rounds
(the same round's quiet group's step, times the same tokens), beside what the perf model
predicts — its added prompt tokens and one more decoding sequence, at the quiet rounds' own speed
against the model, so the host's drift since the fit does not count. The model: a QUICK calibration
of the server on the spot (``--perf-model`` to price with a saved one instead; a fit from another
day may have another shape — the committed one prices a 150-token arrival at 5.2 quiet steps, a fit
of this session at 4.2). Measured in docs/fidelity.md §17.

The measurement is ``publicai_lab.live.arrivals``; ``tests/live/test_sim_vs_live.py`` runs a short
one (fixed arrivals only) against the real server. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=14, help="background groups per mode (default 14)")
    ap.add_argument("--gap-ms", type=float, default=80.0,
                    help="milliseconds between arrivals while the background decodes (default 80)")
    ap.add_argument("--perf-model", default=None,
                    help="price arrivals with this perf model (a data/perf_models name or a path) instead of "
                         "a QUICK calibration on the spot")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "arrival_cost.jsonl",
                    help="the rounds, one JSON line each (default out/arrival_cost.jsonl)")
    args = ap.parse_args()
    if args.rounds < 2 or args.gap_ms <= 0:
        raise SystemExit(f"arrival_cost: --rounds must be >= 2 and --gap-ms > 0; got {args.rounds}, {args.gap_ms}")

    from publicai_lab.live.arrivals import measure_arrival_cost
    from publicai_lab.live.calibrate import QUICK, calibrate
    from publicai_lab.live.tiny_model import timing_server
    from publicai_lab.perf import load_perf_model

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("arrival_cost: needs two cores (one for the engine, one for the rest)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = timing_server("small", ROOT / ".cache", cpus=str(cpus[1]), api_cpus=str(cpus[0]),
                           log_path=args.out.with_suffix(".vllm.log"), startup_timeout_s=600)
    os.sched_setaffinity(0, {cpus[0]})
    with args.out.open("w") as f:
        def on_round(row: dict) -> None:
            f.write(json.dumps(row) + "\n")
            print(f"\rround {row['round'] + 1}/{args.rounds} {row['mode']:>6}: step {row['step_s'] * 1e3:.2f} ms, "
                  f"{row['arrivals']} arrivals", end="", flush=True)

        server.start()
        try:
            server.wait_ready()
            if args.perf_model:
                perf = load_perf_model(args.perf_model)
            else:
                cal = calibrate(server.base_url, server.model_name, **QUICK, anchor_readings=0, stream_probes=0)
                print(f"priced by a QUICK calibration on the spot: {cal}")
                perf = cal.model
            result = measure_arrival_cost(server.base_url, server.model_name, perf, rounds=args.rounds,
                                          gap_s=args.gap_ms / 1e3, on_round=on_round)
        finally:
            server.stop()
    print()
    print(result.to_markdown())


if __name__ == "__main__":
    main()
