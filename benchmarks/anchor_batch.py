"""Does the host move a batch-2 decode step as it moves the speed anchor's batch-8 step?

    python benchmarks/anchor_batch.py                  # 8 minutes of readings, about 10 with start-up
    python benchmarks/anchor_batch.py --minutes 3 --out /tmp/anchor-batch.jsonl

Why: the speed anchor (``publicai_lab.live.anchor``) reads the engine's speed with closed groups of
8 requests, while at 25 % of saturation the replay decodes one to three sequences a step. If the
host slowed a step's constant part (scheduling, sampling: Python) more than its per-sequence
arithmetic, a change read at batch 8 would under-state the change at batch 2.

One pinned server of the small model (engine on CPU 1, API server and this script on CPU 0, as in
the fidelity runs), idle but for this script: round after round, anchor readings of a few groups
at concurrency 1, 2, 8 and 16, back to back, each read against the committed perf model
(``data/perf_models/small-llama_cpu_tp1.json``; its scale does not matter, only the changes). It
prints the spread of each concurrency's factor and, over 20-, 40- and 60-second bins, the slope and
correlation of the other concurrencies' log factor on batch 8's: a slope of 1 means a reading at
batch 8 carries over unchanged. The results are in docs/fidelity.md §12 (slopes 1.3 at batch 1–2
over 20-s bins in one 8-minute run, 0.5–0.7 in a 2-minute one; in the replays a batch-2 anchor was
no closer to the engine's speed than the batch-8 one).

Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCIES = (1, 2, 8, 16)


def read_rounds(minutes: float, out: Path) -> list[dict]:
    """Anchor readings at every concurrency of :data:`CONCURRENCIES`, round after round, for ``minutes``."""
    from publicai_lab.live.anchor import factor_from_windows, speed_windows
    from publicai_lab.live.tiny_model import timing_server
    from publicai_lab.perf.step_time import load_perf_model_file

    perf = load_perf_model_file(ROOT / "data" / "perf_models" / "small-llama_cpu_tp1.json")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("anchor_batch: needs two cores (one for the engine, one for the rest)")
    server = timing_server("small", ROOT / ".cache", cpus=str(cpus[1]), api_cpus=str(cpus[0]),
                           log_path=out.with_suffix(".vllm.log"), startup_timeout_s=600)
    os.sched_setaffinity(0, {cpus[0]})
    rows: list[dict] = []
    server.start()
    try:
        server.wait_ready()
        speed_windows(server.base_url, server.model_name, groups=4, prefill_tokens=0)   # warm-up
        t0 = time.monotonic()
        with out.open("w") as f:
            k = 0
            while time.monotonic() - t0 < 60.0 * minutes:
                for c in CONCURRENCIES:
                    windows = speed_windows(server.base_url, server.model_name, seed=k, concurrency=c,
                                            groups=4 if c <= 2 else 3, prefill_tokens=0)
                    row = {"t_s": time.monotonic() - t0, "round": k, "concurrency": c,
                           "factor": factor_from_windows(windows, perf), "windows": len(windows)}
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                k += 1
                print(f"\rround {k}, {time.monotonic() - t0:.0f} s", end="", flush=True)
        print()
    finally:
        server.stop()
    return rows


def report(rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    log_f = np.log(df.pivot_table(index="round", columns="concurrency", values="factor"))
    t_s = df.groupby("round")["t_s"].min()
    print(f"{len(log_f)} rounds; factor against the committed perf model, median by concurrency: "
          + ", ".join(f"{c}: ×{np.exp(log_f[c].median()):.3f}" for c in log_f.columns))
    print("sd of the log factor, round by round: "
          + ", ".join(f"{c}: {log_f[c].std():.3f}" for c in log_f.columns))
    for bin_s in (20, 40, 60):
        binned = log_f.groupby((t_s // bin_s).astype(int)).mean()
        if len(binned) < 4:          # a slope through two or three points says nothing
            print(f"{bin_s}-s bins: only {len(binned)}; read longer (--minutes)")
            continue
        x = binned[8] - binned[8].mean()
        parts = []
        for c in (c for c in binned.columns if c != 8):
            y = binned[c] - binned[c].mean()
            parts.append(f"batch {c}: slope {float((x * y).sum() / (x * x).sum()):.2f}, "
                         f"corr {float(np.corrcoef(x, y)[0, 1]):+.2f}")
        print(f"{bin_s}-s bins ({len(binned)}), on batch 8's log factor: " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=8.0, help="how long to read (default 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "anchor_batch.jsonl",
                    help="the readings, one JSON line each (default out/anchor_batch.jsonl)")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report(read_rounds(args.minutes, args.out))


if __name__ == "__main__":
    main()
