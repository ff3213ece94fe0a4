"""Do the simulator and the live gateway rank routing policies the same way? (p90 E2E latency)

    python benchmarks/policy_ranking.py [--requests 300] [--repeats 3]
        [--policies latency_ewma,least_in_flight,round_robin] [--out ranking.md]

Scenario: ``publicai_lab.live.ranking.ranking_scenario`` — three single-replica clusters of the
tiny Llama with step-time models 1x, 2x and 4x toy.yaml's (scaled), Poisson arrivals at
``--load-fraction`` (default 60 %) of the federation's capacity, toy.yaml's length distributions,
local clients. For each policy the simulator runs once per workload seed (it is deterministic)
and the live side ``--repeats`` times on the very same requests; the table gives the sim p90,
the median live p90, the live spread ((max - min) / median over repeats: the run-to-run noise)
and both ranks, then whether the rankings agree.

**The live side uses emulated backends.** "Live" is our real gateway (real policy objects, real
HTTP/SSE, real in-flight counting and latency EWMAs) driven by the real load generator, but the
vLLM servers behind it are ``EmulatedBackend``s that run each cluster's perf model on the wall
clock. On this 2-core machine three real vLLM servers cannot each get a quiet core, so their
step times would wander with the load of the others and of the gateway — noise larger than the
gaps between policies, which would make any ranking meaningless. Whether one real vLLM server
follows its perf model is checked separately (calibration and the ``live`` tests).

Everything runs in this process on 127.0.0.1; run it pinned (``taskset -c 0``) on a shared
machine. About 6 s per policy and repeat at the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def markdown(table, *, agree: bool, header: str) -> str:
    """The result table as Markdown, with the verdict under it."""
    lines = [header, "",
             "| policy | sim p90 E2E (ms) | live p90 median (ms) | live spread (%) | sim rank | live rank |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in table.itertuples():
        lines.append(f"| {row.policy} | {row.sim_p90_e2e_s * 1e3:.0f} | {row.live_p90_e2e_s * 1e3:.0f} | "
                     f"{row.live_spread * 100:.1f} | {row.sim_rank} | {row.live_rank} |")
    not_ok = int(table["live_not_ok"].sum())
    lines += ["", f"rankings agree: {'yes' if agree else 'no'}"]
    if not_ok:
        lines.append(f"(live requests that did not finish ok, left out of the p90s: {not_ok})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from publicai_lab.live.ranking import DEFAULT_POLICIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="live runs per policy, same requests (default 3)")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                    help=f"comma-separated policy names (default {','.join(DEFAULT_POLICIES)})")
    ap.add_argument("--load-fraction", type=float, default=0.6,
                    help="offered load as a fraction of the federation's capacity (default 0.6)")
    ap.add_argument("--seed", type=int, default=11, help="workload seed (default 11)")
    ap.add_argument("--out", help="also write the Markdown table to this .md file")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.repeats < 1:
        ap.error("--requests and --repeats must be >= 1")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if len(policies) < 2:
        ap.error("--policies: give at least two policies to rank")

    from publicai_lab.live.ranking import (
        capacity_req_per_s,
        rank_policies,
        ranking_scenario,
        rankings_agree,
    )

    scenario = ranking_scenario(load_fraction=args.load_fraction, seed=args.seed)
    t0 = time.perf_counter()
    table = rank_policies(scenario, policies, requests=args.requests, repeats=args.repeats)
    wall_s = time.perf_counter() - t0
    rate = scenario.workload.arrivals.rate_per_s
    header = (f"Policy ranking by p90 E2E: scenario {scenario.name}, clusters 1x/2x/4x step time, "
              f"{rate:g} req/s ({rate / capacity_req_per_s(scenario):.0%} of capacity), "
              f"{args.requests} requests, seed {args.seed}, {args.repeats} live repeat(s); "
              f"live = our gateway + emulated vLLM backends; {wall_s:.0f} s wall")
    text = markdown(table, agree=rankings_agree(table), header=header)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
