"""Simulator speed and memory: simulated requests per wall-second, and peak RSS.

    python benchmarks/sim_speed.py [--requests 1000000] [--scenario scenarios/publicai-2025.yaml]

Runs the scenario at its nominal load (its own arrival rate and policy) on one core (the process
pins itself to a single CPU), then prints wall time, requests per second and peak resident memory
of the whole process (simulation + building the DataFrames). Target (issue 2): at least 20,000
requests/s (1,000,000 requests in under 50 s) and under 2 GiB.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "publicai-2025.yaml"))
    ap.add_argument("--policy", default=None, help="override the scenario's policy")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the last one)")
    args = ap.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else cpus[-1]
    os.sched_setaffinity(0, {cpu})

    import publicai_lab as pl

    scenario = pl.load_scenario(args.scenario)
    t0 = time.perf_counter()
    result = pl.simulate(scenario, requests=args.requests, policy=args.policy, progress=False)
    wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # ru_maxrss is KiB on Linux
    df = result.requests
    ok = int((df["status"] == "ok").sum())
    print(f"scenario            {scenario.name} (policy {result.policy_name}, seed {result.seed}, CPU {cpu})")
    print(f"requests            {len(df):,} ({ok:,} ok), {result.duration_s / 3600:.1f} simulated hours")
    print(f"wall time           {wall:.1f} s total, {result.wall_s:.1f} s in the event loop")
    print(f"speed               {len(df) / wall:,.0f} simulated requests per wall-second "
          f"(event loop alone {len(df) / result.wall_s:,.0f})")
    print(f"peak memory (RSS)   {peak_gib:.2f} GiB")
    print(f"E2E p50 / p99       {df.loc[df.status == 'ok', 'e2e_s'].median():.2f} s / "
          f"{df.loc[df.status == 'ok', 'e2e_s'].quantile(0.99):.2f} s")
    print(f"target              >= 20,000 req/s and < 2 GiB: "
          f"{'MET' if len(df) / wall >= 20_000 and peak_gib < 2 else 'NOT MET'}")


if __name__ == "__main__":
    main()
