"""What does random sampling add to a decode step? Greedy against the server's default and top_p.

    python benchmarks/sampling_cost.py                 # 20 rounds, about 3 minutes with start-up
    python benchmarks/sampling_cost.py --rounds 40 --out /tmp/sampling.jsonl

Why: the load generator's requests carry no sampling fields, so vLLM samples them at its default
(temperature 1: softmax, a random draw per sequence every step), while the calibration and the speed
anchor used to send temperature 0 (vLLM's greedy path: one argmax). A model fitted to greedy steps
then runs the replays a little fast. Since session 12 they all sample alike
(``publicai_lab.live.calibrate.SAMPLING``); this script measures what the difference is worth.

One pinned server of the small model (engine on CPU 1, API server and this script on CPU 0, as in
the fidelity runs), idle but for this script: round after round, one speed-anchor reading (three
closed groups of 8 requests of 144 + 56 tokens) per sampling setting, in alternating order, each
read against the committed perf model (``data/perf_models/small-llama_cpu_tp1.json``; its scale
does not matter, only the ratios). It prints each setting's mean ratio to greedy in the same round,
its spread and standard error. Measured in docs/fidelity.md §14 (two runs of 20 rounds, weighted): default
+0.6 % (±0.5 %), top_p 0.9 +6.8 % (±0.5 %) — top_p sorts the vocabulary every step (512 tokens here;
128k on a GPU model's vocabulary, where it costs more).

Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
#: the sampling settings compared, by name: vLLM's greedy path, its default, a typical chat client's
SETTINGS: dict[str, dict[str, float]] = {"greedy": {"temperature": 0.0}, "default": {},
                                         "top_p 0.9": {"temperature": 0.7, "top_p": 0.9}}


def read_rounds(rounds: int, out: Path) -> pd.DataFrame:
    """One anchor reading per setting of :data:`SETTINGS`, ``rounds`` times, the order alternating."""
    from publicai_lab.live.anchor import factor_from_windows, speed_windows
    from publicai_lab.live.tiny_model import timing_server
    from publicai_lab.perf.step_time import load_perf_model_file

    perf = load_perf_model_file(ROOT / "data" / "perf_models" / "small-llama_cpu_tp1.json")
    server = timing_server("small", ROOT / ".cache", cpus="1", api_cpus="0", log_path=out.with_suffix(".vllm.log"))
    rows = []
    try:
        server.start().wait_ready()
        speed_windows(server.base_url, server.model_name, groups=4, prefill_tokens=0)  # warm-up, not kept
        with out.open("w") as fh:
            for i in range(rounds):
                names = list(SETTINGS) if i % 2 == 0 else list(reversed(SETTINGS))
                for name in names:
                    windows = speed_windows(server.base_url, server.model_name, seed=i, groups=3, prefill_tokens=0,
                                            sampling=SETTINGS[name])
                    row = {"round": i, "setting": name, "factor": factor_from_windows(windows, perf)}
                    fh.write(json.dumps(row) + "\n")
                    rows.append(row)
                print(f"round {i + 1}/{rounds}: " + ", ".join(f"{r['setting']} ×{r['factor']:.3f}"
                                                            for r in rows[-len(names):]), flush=True)
    finally:
        server.stop()
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Per setting: the mean ratio of its reading to greedy's in the same round, as a per-cent cost."""
    wide = frame.pivot(index="round", columns="setting", values="factor")
    out = []
    for name in SETTINGS:
        if name == "greedy":
            continue
        log_ratio = np.log(wide[name] / wide["greedy"])
        out.append({"setting": name, "rounds": int(log_ratio.count()),
                    "step cost vs greedy": f"{np.expm1(log_ratio.mean()):+.1%}",
                    "sd a round": f"{log_ratio.std():.1%}",
                    "standard error": f"{log_ratio.std() / np.sqrt(log_ratio.count()):.1%}"})
    return pd.DataFrame(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--rounds", type=int, default=20, help="rounds of one reading per setting (default 20)")
    ap.add_argument("--out", default=str(ROOT / "out" / "sampling_cost.jsonl"), help="readings, one JSON line each")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error(f"--rounds: need at least 2 for a spread; got {args.rounds}")
    os.sched_setaffinity(0, {0})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(summarise(read_rounds(args.rounds, out)).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
