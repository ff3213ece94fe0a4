"""How far the speed anchor was from the engine, over kept fidelity runs — and what that distance is made of.

    python benchmarks/anchor_distance.py /tmp/runs/*/            # folders written by benchmarks/fidelity.py --out
    python benchmarks/anchor_distance.py --bootstrap 60 RUN...   # and the fit's own noise (needs --calibrate runs)

Reads each run's ``fidelity.csv`` and ``fidelity.md`` (the per-reading anchor factors and the per-repeat
engine inter-token latencies are in the level notes) and prints:

- every judged row that missed, with the anchor's distance from the engine's own speed
  (``engine_drift − anchor``, points; + the engine ran slower than the anchor said) and the error at the
  engine's measured speed;
- the distance's mean per level and its scatter around those means, split into the part all levels of
  a run share (the calibration's reference reading) and the part within a run;
- the two samplings of the host's wandering speed a level takes: the spread of its anchor readings and of
  its repeats' engine latency, and the scatter those alone predict for the distance;
- how fast the speed forgets itself: the calibration's one-group readings' sd and lag-one
  autocorrelation (runs with ``records/calibration_speed_readings.csv``);
- whether the readings' spread predicts the distance (their correlation);
- with ``--bootstrap N`` (runs with ``records/calibration_observations.csv``): the sd, over N resamples of
  the calibration's groups, of the refitted model's price of a decode step at 1 / 2 / 4 / 16 sequences
  relative to the anchor's batch of 8 — the fit's own noise.

docs/fidelity.md §19 is this script's output over the 30 runs kept from sessions 10–16.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: a level's notes in fidelity.md: "- 25%: speed anchors (...): ×0.998 / ×1.010 / …; simulated at …"
_ANCHORS = re.compile(r"^- (\d+)%: speed anchors [^:]*: ((?:×[\d.]+(?: / )?)+);", re.M)
#: "- 25%: engine inter-token latency (vLLM /metrics) per live repeat: 5.89 / 5.39 / 6.19 ms;"
_ITLS = re.compile(r"^- (\d+)%: engine inter-token latency \(vLLM /metrics\) per live repeat: ([\d. /]+) ms", re.M)


def _spread_sd(values: list[float]) -> float:
    """The sd of ``values`` over their mean, per cent (NaN for fewer than two)."""
    x = np.asarray(values, float)
    return float(x.std(ddof=1) / x.mean() * 100) if len(x) > 1 else math.nan


def read_levels(table: pd.DataFrame, md: str) -> pd.DataFrame:
    """One row per level of one run (its ``fidelity.csv`` and ``fidelity.md``): the anchor's distance
    from the engine, the readings' and the repeats' spreads (sd, per cent) and counts, the largest live
    spread of its rows. ``fidelity.csv`` holds the measurements judged (not fidelity_measured_again.csv)."""
    md = md.split("\nMeasured again:")[0]         # the notes of the measurements judged
    readings = {int(m[1]): [float(v) for v in m[2].replace("×", "").split(" / ")] for m in _ANCHORS.finditer(md)}
    itls = {int(m[1]): [float(v) for v in m[2].split(" / ")] for m in _ITLS.finditer(md)}
    rows = []
    for level, g in table.groupby("level"):
        pct = int(round(level * 100))
        first = g.iloc[0]
        rows.append({"level": level, "distance": (first["engine_drift"] - first["anchor"]) * 100,
                     "readings_sd": _spread_sd(readings.get(pct, [])), "readings": len(readings.get(pct, [])),
                     "repeats_sd": _spread_sd(itls.get(pct, [])), "repeats": len(itls.get(pct, [])),
                     "live_spread": g["live_spread"].max() * 100})
    return pd.DataFrame(rows)


def misses(table: pd.DataFrame) -> pd.DataFrame:
    """The judged rows of one run's table that missed their tolerance."""
    bad = table[table["judged"] & ~table["ok"]].copy()
    bad["distance"] = (bad["engine_drift"] - bad["anchor"]) * 100
    return bad[["level", "metric", "rel_error", "live_spread", "distance", "conditioned_error"]]


def split_scatter(levels: pd.DataFrame) -> dict[str, float]:
    """The distance's scatter around its level means, and the parts a run's levels share and do not."""
    d = levels.dropna(subset=["distance"]).copy()
    d["around"] = d["distance"] - d.groupby("level")["distance"].transform("mean")
    run_mean = d.groupby("run")["around"].mean()
    within = d["around"] - d["run"].map(run_mean)
    per_run = d.groupby("run").size().mean()
    within_sd = float(within.std() * math.sqrt(per_run / (per_run - 1)))
    expected = within_sd / math.sqrt(per_run)
    shared = math.sqrt(max(0.0, float(run_mean.std()) ** 2 - expected ** 2))
    return {"sd": float(d["around"].std()), "run_means_sd": float(run_mean.std()),
            "run_means_sd_from_within": expected, "shared_sd": shared, "within_sd": within_sd}


def bootstrap_shape(run: Path, resamples: int, seed: int = 0) -> dict[str, float] | None:
    """The sd (per cent) over ``resamples`` refits of the run's calibration, resampled by group, of the
    model's decode step at 1 / 2 / 4 / 16 sequences over its step at the anchor's batch of 8."""
    from publicai_lab.live.anchor import ANCHOR_SHAPE
    from publicai_lab.live.calibrate import fit_observations

    path = run / "records" / "calibration_observations.csv"
    if not path.exists():
        return None
    obs = pd.read_csv(path)
    groups = obs.groupby(["prompt_tokens", "output_tokens", "concurrency", "repeat"]).ngroup().to_numpy()
    context = ANCHOR_SHAPE["prompt_tokens"] + ANCHOR_SHAPE["output_tokens"] / 2

    def ratios(frame: pd.DataFrame) -> np.ndarray:
        model, _, _ = fit_observations(frame, overhead_column=False)
        anchor = model.step_s(0, 8, 8 * context)
        return np.array([model.step_s(0, b, b * context) / anchor for b in (1, 2, 4, 16)])

    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    by_group = {g: obs[groups == g] for g in ids}
    samples = np.array([ratios(pd.concat([by_group[g] for g in rng.choice(ids, len(ids))]))
                        for _ in range(resamples)])
    full = ratios(obs)
    return {f"batch {b}": float(sd) for b, sd in zip((1, 2, 4, 16), samples.std(axis=0) / full * 100)}


def calibration_wander(run: Path) -> tuple[float, float, float] | None:
    """The calibration's one-group anchor readings (``records/calibration_speed_readings.csv``): their
    sd (per cent of their median), lag-one autocorrelation and mean spacing in seconds."""
    path = run / "records" / "calibration_speed_readings.csv"
    if not path.exists():
        return None
    r = pd.read_csv(path)
    x = r["decode_step_s"].to_numpy(float)
    x = x / np.median(x)
    return float(x.std(ddof=1) * 100), float(np.corrcoef(x[:-1], x[1:])[0, 1]), float(np.diff(r["at_s"]).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("runs", nargs="+", help="folders written by benchmarks/fidelity.py --out (fidelity.csv and .md)")
    ap.add_argument("--bootstrap", type=int, default=0, metavar="N",
                    help="refit each run's calibration on N resamples of its groups (default 0: skip)")
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs if (Path(r) / "fidelity.csv").exists() and (Path(r) / "fidelity.md").exists()]
    if not runs:
        ap.error("no run folder with fidelity.csv and fidelity.md among: " + " ".join(args.runs))
    if args.bootstrap < 0:
        ap.error(f"--bootstrap must be >= 0; got {args.bootstrap}")
    names = [f"{r.parent.name}/{r.name}" for r in runs]
    tables = [pd.read_csv(r / "fidelity.csv") for r in runs]
    levels = pd.concat([read_levels(t, (r / "fidelity.md").read_text()).assign(run=n)
                        for r, t, n in zip(runs, tables, names)], ignore_index=True)
    missed = pd.concat([misses(t).assign(run=n) for t, n in zip(tables, names)], ignore_index=True)
    missed = missed[["run", *missed.columns[:-1]]]
    judged = sum(int(t["judged"].sum()) for t in tables)
    pd.set_option("display.width", 200)
    print(f"{len(runs)} runs, {len(levels)} levels, {judged} judged rows, {len(missed)} missed")
    if len(missed):
        print(missed.round(3).to_string(index=False))
    print("\nanchor − engine (points), mean per level:")
    print(levels.groupby("level")["distance"].agg(["mean", "std", "count"]).round(2).to_string())
    s = split_scatter(levels)
    print(f"\naround the level means: sd {s['sd']:.2f} points; the runs' means scatter {s['run_means_sd']:.2f} "
          f"where the within-run scatter alone gives {s['run_means_sd_from_within']:.2f}: shared by a run's levels "
          f"{s['shared_sd']:.2f}, within a run {s['within_sd']:.2f}")
    r_sd, n_r = levels["readings_sd"], levels["readings"].replace(0, np.nan)
    i_sd, n_i = levels["repeats_sd"], levels["repeats"].replace(0, np.nan)
    se_readings = float(np.sqrt(np.nanmean(r_sd ** 2 / n_r)))
    se_repeats = float(np.sqrt(np.nanmean(i_sd ** 2 / n_i)))
    print(f"a level's anchor readings differ by {np.nanmean(r_sd):.2f} % (sd, mean; median {np.nanmedian(r_sd):.2f}), "
          f"their pooled factor ±{se_readings:.2f} points; its repeats' engine latency by "
          f"{np.sqrt(np.nanmean(i_sd ** 2)):.2f} % (rms), their median ±{se_repeats:.2f}: the two samplings alone "
          f"put the distance {math.hypot(se_readings, se_repeats):.2f} points apart (sd)")
    wander = [w for w in (calibration_wander(r) for r in runs) if w is not None]
    if wander:
        sd, lag1, gap_s = np.array(wander).T
        print(f"the calibrations' one-group readings, {np.mean(gap_s):.1f} s apart ({len(wander)} runs): sd "
              f"{sd.min():.1f} … {sd.max():.1f} %, lag-one autocorrelation {lag1.min():+.2f} … {lag1.max():+.2f} "
              f"(median {np.median(lag1):+.2f})")
    ok = levels.dropna(subset=["distance", "readings_sd"])
    print(f"correlation of |distance| with the readings' spread {ok['distance'].abs().corr(ok['readings_sd']):.2f}, "
          f"with the live spread {ok['distance'].abs().corr(ok['live_spread']):.2f} ({len(ok)} levels)")
    if args.bootstrap:
        shapes = {n: bootstrap_shape(r, args.bootstrap) for r, n in zip(runs, names)}
        shapes = {n: v for n, v in shapes.items() if v is not None}
        if shapes:
            frame = pd.DataFrame(shapes).T
            print(f"\nthe fit's own noise: sd (%) of the decode step at a batch over the anchor's batch of 8, "
                  f"{args.bootstrap} resamples of the calibration's groups, mean over {len(frame)} runs:")
            print(frame.mean().round(2).to_string())
        else:
            print("\n--bootstrap: no run with records/calibration_observations.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
