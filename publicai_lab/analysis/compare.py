"""Simulated versus live: an error table with the live noise floor beside every error.

``compare(sim_frame, live_frame, live_repeats=[...])`` takes request frames of the pinned schema
(``records.py``) from the simulator and from the load generator (same scenario, same seed) and
gives a :class:`Comparison`:

- ``table``: one row per metric — TTFT, TPOT and E2E at p50/p90/p99 (over ``ok`` requests),
  throughput (ok requests and output tokens per second from the first arrival to the last ok
  completion, or of the durations given) and each backend's share of ok requests. Columns: ``sim``, ``live`` (the median over the
  live repeats), ``rel_error`` = (sim − live)/live, ``abs_error`` = sim − live, ``live_spread`` =
  (max − min)/median over the live repeats (NaN with one repeat), ``live_repeats``, and
  ``within_noise`` = |rel_error| ≤ live_spread. A comparison without its noise floor is not a
  result: pass several live repeats.
- overlay CDF plots per latency metric (the sim, and every live repeat) and ``to_markdown()`` /
  ``write(out_dir)`` (comparison.md, comparison.csv, cdf_<metric>.png).

CLI ``publicai-lab compare --scenario S --target URL`` runs the scenario in the simulator and live
(``run_live`` through the target, e.g. a gateway) with the same seed, ``--repeats`` times live.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["compare", "Comparison", "metric_values", "LATENCY_METRICS", "QUANTILES", "add_cli"]

LATENCY_METRICS = ("ttft_s", "tpot_s", "e2e_s")
QUANTILES = (50, 90, 99)


def _duration(df: pd.DataFrame, duration_s: float | None) -> float:
    """The throughput denominator: given, else first arrival to last ok completion (the makespan —
    the arrival span alone would be the offered load, identical in sim and live by construction)."""
    if duration_s is not None:
        return float(duration_s)
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return math.nan
    span = float((ok["arrival_s"] + ok["e2e_s"]).max() - df["arrival_s"].min())
    return span if span > 0 else math.nan


def metric_values(df: pd.DataFrame, *, duration_s: float | None = None,
                  backends: Sequence[str] = ()) -> dict[str, float]:
    """The compared metrics of one run: latency percentiles of ok requests, throughput, shares."""
    ok = df[df["status"] == "ok"]
    out: dict[str, float] = {}
    for m in LATENCY_METRICS:
        vals = pd.to_numeric(ok[m], errors="coerce").dropna().to_numpy(float)
        for q in QUANTILES:
            out[f"{m[:-2]}_p{q}_s"] = float(np.percentile(vals, q)) if vals.size else math.nan
    dur = _duration(df, duration_s)
    out["throughput_rps"] = len(ok) / dur if dur == dur and dur > 0 else math.nan
    out["output_tokens_per_s"] = float(ok["output_tokens"].sum()) / dur if dur == dur and dur > 0 else math.nan
    counts = ok["backend_id"].astype("object").fillna("(none)").value_counts()
    for b in backends:
        out[f"share[{b}]"] = float(counts.get(b, 0)) / len(ok) if len(ok) else math.nan
    return out


def _backends_of(frames: Sequence[pd.DataFrame]) -> list[str]:
    names: set[str] = set()
    for f in frames:
        ok = f[f["status"] == "ok"]
        names |= set(ok["backend_id"].astype("object").fillna("(none)").unique())
    return sorted(names)


@dataclass
class Comparison:
    """The error table (index: metric) and the frames it came from."""

    table: pd.DataFrame
    sim_frame: pd.DataFrame
    live_frames: list[pd.DataFrame]
    title: str = "Simulated versus live"
    notes: list[str] = field(default_factory=list)

    def error(self, metric: str) -> float:
        return float(self.table.loc[metric, "rel_error"])

    def spread(self, metric: str) -> float:
        return float(self.table.loc[metric, "live_spread"])

    def plot_cdfs(self, metric: str, ax: Any = None) -> Any:
        """Empirical CDFs of ``metric`` (ttft_s, tpot_s or e2e_s): the sim and each live repeat."""
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for i, (label, df, style) in enumerate(
                [("sim", self.sim_frame, dict(color="C0", lw=2.0))]
                + [(f"live #{k + 1}", f, dict(color="C3", lw=1.0, alpha=0.8)) for k, f in enumerate(self.live_frames)]):
            v = np.sort(pd.to_numeric(df.loc[df["status"] == "ok", metric], errors="coerce").dropna().to_numpy(float))
            if v.size:
                ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=label, **style)
        ax.set_xlabel(metric.replace("_s", " (s)"))
        ax.set_ylabel("fraction of ok requests")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{metric[:-2].upper()}: sim vs live")
        return fig if fig is not None else ax.figure

    def to_markdown(self) -> str:
        t = self.table
        reps = int(t["live_repeats"].iloc[0]) if len(t) else 0
        lines = [f"## {self.title}", "",
                 f"Live value = median of {reps} live repeat(s); rel. error = (sim − live) / live; live spread = "
                 "(max − min) / median over the repeats — the noise floor each error should be read against.", "",
                 "| metric | sim | live | rel. error | live spread | within noise |",
                 "| --- | --- | --- | --- | --- | --- |"]

        def num(x: float) -> str:
            return "n/a" if not np.isfinite(x) else f"{x:.4g}"

        def pct(x: float) -> str:
            return "n/a" if not np.isfinite(x) else f"{x * 100:+.1f} %"

        for name, r in t.iterrows():
            spread = "n/a" if not np.isfinite(r["live_spread"]) else f"{r['live_spread'] * 100:.1f} %"
            within = "n/a" if not np.isfinite(r["live_spread"]) else ("yes" if r["within_noise"] else "no")
            lines.append(f"| {name} | {num(r['sim'])} | {num(r['live'])} | {pct(r['rel_error'])} | {spread} | {within} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def write(self, out_dir: str | Path) -> Path:
        """comparison.md, comparison.csv and cdf_<metric>.png into ``out_dir``; returns the .md path."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(out / "comparison.csv", index_label="metric")
        md = self.to_markdown()
        for m in LATENCY_METRICS:
            fig = self.plot_cdfs(m)
            fig.tight_layout()
            fig.savefig(out / f"cdf_{m[:-2]}.png", dpi=110)
            plt.close(fig)
            md += f"\n![{m} CDF](cdf_{m[:-2]}.png)\n"
        (out / "comparison.md").write_text(md)
        return out / "comparison.md"


def compare(sim_frame: pd.DataFrame, live_frame: pd.DataFrame | None = None, *,
            live_repeats: Sequence[pd.DataFrame] | None = None, sim_duration_s: float | None = None,
            live_durations_s: Sequence[float | None] | None = None, title: str = "Simulated versus live") -> Comparison:
    """Error table of ``sim_frame`` against the live run(s).

    ``live_repeats``: every live repeat of the same workload (``live_frame`` is added to them if it
    is not one of them; either may be omitted, not both). The live value is the median over the
    repeats and ``live_spread`` their (max − min)/median. Durations (for throughput) default to
    each frame's first arrival to last ok completion; ``live_durations_s`` lines up with the
    repeats (``live_frame`` first if it was added).
    """
    repeats: list[pd.DataFrame] = list(live_repeats or [])
    if live_frame is not None and not any(live_frame is r for r in repeats):
        repeats.insert(0, live_frame)
    if not repeats:
        raise ValueError("compare needs live_frame or live_repeats")
    durs = list(live_durations_s) if live_durations_s is not None else [None] * len(repeats)
    if len(durs) != len(repeats):
        raise ValueError(f"live_durations_s has {len(durs)} entries for {len(repeats)} live repeats")
    backends = _backends_of([sim_frame, *repeats])
    sim = metric_values(sim_frame, duration_s=sim_duration_s, backends=backends)
    lives = [metric_values(f, duration_s=d, backends=backends) for f, d in zip(repeats, durs)]
    rows = []
    for name, s in sim.items():
        vals = np.array([lv[name] for lv in lives], dtype=float)
        finite = vals[np.isfinite(vals)]
        live = float(np.median(finite)) if finite.size else math.nan
        spread = (float((finite.max() - finite.min()) / abs(live))
                  if finite.size >= 2 and live != 0 else math.nan)
        rel = (s - live) / abs(live) if np.isfinite(live) and live != 0 else math.nan
        rows.append({"metric": name, "sim": s, "live": live, "rel_error": rel, "abs_error": s - live,
                     "live_spread": spread, "live_repeats": len(repeats),
                     "within_noise": bool(np.isfinite(spread) and np.isfinite(rel) and abs(rel) <= spread),
                     **{f"live_{k + 1}": float(v) for k, v in enumerate(vals)}})
    table = pd.DataFrame(rows).set_index("metric")
    notes = []
    if len(repeats) < 2:
        notes.append("one live run only: no noise floor — run several repeats (--repeats 3).")
    n_sim, n_live = int((sim_frame["status"] == "ok").sum()), [int((f["status"] == "ok").sum()) for f in repeats]
    notes.append(f"ok requests: sim {n_sim}, live {', '.join(map(str, n_live))}.")
    return Comparison(table=table, sim_frame=sim_frame, live_frames=repeats, title=title, notes=notes)


# ---------------------------------------------------------------------- CLI
def _cmd_compare(args: argparse.Namespace) -> int:
    from publicai_lab.live.loadgen import run_live
    from publicai_lab.scenario import load_scenario
    from publicai_lab.sim.run import simulate

    scenario = load_scenario(args.scenario)
    if args.perf_model:
        # every cluster gets the calibrated model (the usual case: one kind of server behind the
        # gateway), inline: the scenario only names files inside data/perf_models
        from publicai_lab.perf import load_perf_model

        coeffs = load_perf_model(args.perf_model).coefficients()
        doc = scenario.model_dump(mode="json")
        for p in doc["partners"]:
            for c in p["clusters"]:
                c["perf_model"] = dict(coeffs)
        scenario = load_scenario(doc, base_dir=Path(args.scenario).resolve().parent)
    seed = scenario.seed if args.seed is None else args.seed
    sim = simulate(scenario, seed=seed, requests=args.requests, progress=False)
    lives = []
    for k in range(args.repeats):
        res = run_live(scenario, args.target, requests=args.requests, seed=seed, progress=not args.quiet,
                       api_keys=args.api_key_file, backend=args.backend,
                       calibrate=args.tokenize_url or not args.no_calibrate, run_id=f"live-{scenario.name}-{k}")
        lives.append(res.requests)
        if not args.quiet:
            print(f"live repeat {k + 1}/{args.repeats}: {len(res.requests)} requests, {res.wall_s:.1f} s wall")
    cmp = compare(sim.requests, live_repeats=lives,
                  title=f"{scenario.name}: simulated versus live at {args.target} ({args.requests or scenario.requests} "
                        f"requests, seed {seed})")
    print(cmp.to_markdown())
    if args.out:
        path = cmp.write(args.out)
        sim.requests.to_parquet(Path(args.out) / "sim_requests.parquet")
        for k, f in enumerate(lives):
            f.to_parquet(Path(args.out) / f"live_requests_{k + 1}.parquet")
        print(f"wrote {path}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``compare``."""
    p = subparsers.add_parser(
        "compare", help="run a scenario in the simulator and live, and tabulate the errors",
        description="Simulate the scenario and replay the same workload (same seed) live through TARGET "
                    "(a gateway or one backend) REPEATS times; write the sim-vs-live error table with the "
                    "live run-to-run spread beside each error, and overlay CDF plots.",
        epilog="Example: publicai-lab compare --scenario scenarios/toy.yaml --target http://127.0.0.1:4000 "
               "--requests 200 --repeats 3 --out out/compare-toy")
    p.add_argument("--scenario", required=True, help="scenario YAML file")
    p.add_argument("--target", required=True, help="base URL of a gateway or backend")
    p.add_argument("--requests", type=int, help="requests per run (default: the scenario's)")
    p.add_argument("--repeats", type=int, default=3, help="live repeats (the noise floor; default 3)")
    p.add_argument("--seed", type=int, help="workload seed (default: the scenario's)")
    p.add_argument("--out", help="write comparison.md/.csv, CDF plots and the request frames here")
    p.add_argument("--perf-model", help="use this calibrated perf model (JSON) for every cluster in the sim")
    p.add_argument("--backend", help="the target is this scenario backend (partner/cluster), not a gateway")
    p.add_argument("--api-key-file", help="tier -> API key(s) file for the load generator")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--no-calibrate", action="store_true", help="do not fit prompt length with /tokenize")
    cal.add_argument("--tokenize-url", help="fit prompt length with this backend's /tokenize (behind a gateway)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_compare)
