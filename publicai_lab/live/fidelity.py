"""How close is the calibrated simulator to one live vLLM server? The fidelity table.

The recipe (issue 4's acceptance): measure the live server's saturation throughput, replay the
scenario's workload at fractions of it (25/50/75/90 %) several times live and once in the
simulator (same seed, so the very same requests), and put the simulator's error beside the live
run-to-run spread for E2E p50/p90 and TTFT p50. An error is only judged where the live repeats
agree (spread ≤ ``judge_spread``, 10 %): near saturation a few per cent of rate difference
explodes in the queue and no simulator can be held to a number the real thing does not repeat.

The set-up that makes a CPU vLLM server repeat (measured on the 2-core CI machine, see
``docs/fidelity.md``): the engine core and its worker alone on one core (``VLLMServer(cpus="1",
api_cpus="0")``), the API server, gateway and load generator on the other, a warm-up run first.
With the API server time-sharing the engine's core, step times swung 50 % run to run and the
calibrated simulator was 2–3× too fast (a quarter of that core went to HTTP and detokenising).

    >>> from publicai_lab.live.fidelity import one_server_scenario, fidelity_table  # doctest: +SKIP
    >>> sc = one_server_scenario(load_scenario("scenarios/toy.yaml"), "tiny-llama_cpu_tp1")
    >>> result = fidelity_table(sc, gateway_url, repeats=3)
    >>> print(result.to_markdown())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from publicai_lab.errors import PublicAILabError

__all__ = ["one_server_scenario", "measure_saturation_rps", "fidelity_at", "fidelity_table", "FidelityResult",
           "TOLERANCES", "LEVELS"]

#: relative error allowed per metric (issue 4: E2E p50/p90 within 10 %, TTFT p50 within 15 %)
TOLERANCES: dict[str, float] = {"e2e_p50_s": 0.10, "e2e_p90_s": 0.10, "ttft_p50_s": 0.15}
#: load levels as fractions of the measured saturation throughput
LEVELS: tuple[float, ...] = (0.25, 0.50, 0.75, 0.90)

Log = Callable[[str], None]


def one_server_scenario(scenario: Any, perf_model: Any = None, *, replicas: int = 1) -> Any:
    """``scenario`` cut to its first cluster, with ``replicas`` replica(s) and ``perf_model``.

    ``perf_model``: a ``data/perf_models`` name or path, a coefficients mapping, a
    :class:`~publicai_lab.perf.StepTimeModel`, or None to keep the cluster's. The live side is
    one server; this is the simulated twin it is compared with.
    """
    from publicai_lab.perf import StepTimeModel, load_perf_model
    from publicai_lab.scenario import load_scenario

    if not hasattr(scenario, "partners"):
        scenario = load_scenario(scenario)
    doc = scenario.model_dump(mode="json")
    first_partner = doc["partners"][0]
    cluster = first_partner["clusters"][0]
    first_partner["clusters"] = [cluster]
    doc["partners"] = [first_partner]
    cluster.update(replicas=replicas, gpus=replicas * int(cluster.get("tensor_parallel", 1)))
    if perf_model is not None:
        if isinstance(perf_model, (str, Path)):
            perf_model = load_perf_model(perf_model)
        if isinstance(perf_model, StepTimeModel):
            perf_model = perf_model.coefficients()
        cluster["perf_model"] = dict(perf_model)
    # drop what referred to the clusters that are gone: their regions, fallbacks to other models, faults
    region = cluster["region"]
    doc["network"]["rtt_ms"] = {client: {r: ms for r, ms in row.items() if r == region}
                                for client, row in doc["network"]["rtt_ms"].items()}
    doc["gateway"]["model_fallbacks"] = {}
    doc["faults"] = []
    model = scenario.resolve_model(cluster["model"])
    doc["workload"]["models"] = {model: 1.0}
    return load_scenario(doc)


def _backend_id(scenario: Any) -> str:
    return scenario.backend_id(*scenario.clusters()[0])


def measure_saturation_rps(scenario: Any, target: str, *, requests: int = 300, concurrency: int | None = None,
                           repeats: int = 2, log: Log | None = None) -> float:
    """The live server's saturation throughput for this workload, requests per second.

    A closed loop at ``concurrency`` (default: the cluster's ``max_num_seqs``, a full batch — more
    would only queue) over ``requests`` of the scenario's requests; the median over ``repeats``
    of ok requests / makespan.
    """
    from publicai_lab.analysis.compare import metric_values
    from publicai_lab.live.loadgen import run_live

    cluster = scenario.clusters()[0][1]
    conc = int(concurrency or cluster.engine.max_num_seqs)
    fast = scenario.with_overrides(rate_per_s=1000.0)    # arrivals far faster than service: closed loop
    values = []
    for k in range(repeats):
        res = run_live(fast, target, requests=requests, concurrency_limit=conc, progress=False,
                       run_id=f"saturation-{k}")
        ok = res.requests[res.requests["status"] == "ok"]
        if len(ok) < 0.9 * len(res.requests):
            raise PublicAILabError(f"saturation run {k}: only {len(ok)} of {len(res.requests)} requests ok")
        values.append(metric_values(res.requests)["throughput_rps"])
        if log:
            log(f"saturation run {k + 1}/{repeats}: {values[-1]:.1f} req/s at concurrency {conc}")
    return float(np.median(values))


def fidelity_at(scenario: Any, target: str, rate_rps: float, *, requests: int = 300, repeats: int = 3,
                warmup_requests: int = 50, log: Log | None = None) -> Any:
    """Simulate and replay ``scenario`` at ``rate_rps`` (Poisson): a :class:`~publicai_lab.analysis.compare.Comparison`
    of the simulation against ``repeats`` live runs through ``target`` (a gateway or the server).

    ``warmup_requests`` at the same rate go first, unrecorded: an idle CPU server's first seconds
    at a new load are slower (caches, the hypervisor waking an idle core)."""
    from publicai_lab.analysis.compare import compare
    from publicai_lab.live.loadgen import run_live
    from publicai_lab.sim.run import simulate

    sc = scenario.with_overrides(rate_per_s=float(rate_rps))
    sim = simulate(sc, requests=requests, progress=False)
    if warmup_requests:
        run_live(sc.with_overrides(seed=sc.seed + 1), target, requests=warmup_requests, progress=False,
                 run_id="warmup")
    lives = []
    for k in range(repeats):
        res = run_live(sc, target, requests=requests, progress=False, run_id=f"fidelity-{rate_rps:.1f}-{k}")
        lives.append(res.requests)
        if log:
            ok = res.requests[res.requests["status"] == "ok"]
            log(f"  {rate_rps:.1f} req/s live {k + 1}/{repeats}: {len(ok)}/{len(res.requests)} ok, "
                f"E2E p50 {ok['e2e_s'].median() * 1e3:.0f} ms")
    return compare(sim.requests, live_repeats=lives, title=f"{scenario.name} at {rate_rps:.1f} req/s")


@dataclass
class FidelityResult:
    """The fidelity table: one row per (load level, metric).

    Columns: level (fraction of saturation), rate_rps, metric, sim, live (median of the repeats),
    rel_error, live_spread ((max − min)/median), tolerance, judged (live_spread ≤ judge_spread),
    ok (|rel_error| ≤ tolerance), live_1 … live_k. ``saturation_rps`` is the measured saturation.
    """

    table: pd.DataFrame
    saturation_rps: float
    judge_spread: float = 0.10
    comparisons: dict[float, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every judged row within its tolerance (and at least one row judged)."""
        judged = self.table[self.table["judged"]]
        return bool(len(judged)) and bool(judged["ok"].all())

    def to_markdown(self) -> str:
        lines = [f"Saturation (measured, closed loop at a full batch): {self.saturation_rps:.1f} req/s. "
                 f"Errors are judged where the live repeats agree within {self.judge_spread:.0%}.", "",
                 "| load | req/s | metric | sim ms | live ms (median) | error | live spread | tolerance | verdict |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.table.itertuples(index=False):
            verdict = ("pass" if r.ok else "FAIL") if r.judged else "not judged (live spread > "\
                f"{self.judge_spread:.0%})"
            lines.append(f"| {r.level:.0%} | {r.rate_rps:.1f} | {r.metric} | {r.sim * 1e3:.1f} | {r.live * 1e3:.1f} | "
                         f"{r.rel_error:+.1%} | {r.live_spread:.1%} | ±{r.tolerance:.0%} | {verdict} |")
        return "\n".join(lines) + "\n"


def fidelity_table(scenario: Any, target: str, *, levels: Sequence[float] = LEVELS,
                   saturation_rps: float | None = None, requests: int = 300, repeats: int = 3,
                   tolerances: Mapping[str, float] = TOLERANCES, judge_spread: float = 0.10,
                   warmup_requests: int = 100, log: Log | None = None) -> FidelityResult:
    """Measure saturation (unless given), then :func:`fidelity_at` every level; see the module doc."""
    from publicai_lab.live.loadgen import run_live

    if warmup_requests:
        run_live(scenario, target, requests=warmup_requests, progress=False, run_id="warmup")
    sat = saturation_rps if saturation_rps is not None else measure_saturation_rps(scenario, target, log=log)
    if not (sat > 0 and math.isfinite(sat)):
        raise PublicAILabError(f"saturation: got {sat!r} req/s")
    rows = []
    comparisons = {}
    for level in levels:
        rate = level * sat
        if log:
            log(f"level {level:.0%}: {rate:.1f} req/s")
        cmp = fidelity_at(scenario, target, rate, requests=requests, repeats=repeats, log=log)
        comparisons[level] = cmp
        t = cmp.table
        for metric, tol in tolerances.items():
            row = t.loc[metric]
            spread = float(row["live_spread"])
            err = float(row["rel_error"])
            rows.append({"level": level, "rate_rps": rate, "metric": metric, "sim": float(row["sim"]),
                         "live": float(row["live"]), "rel_error": err, "live_spread": spread, "tolerance": tol,
                         "judged": bool(spread <= judge_spread), "ok": bool(abs(err) <= tol),
                         **{c: float(row[c]) for c in t.columns if c.startswith("live_") and c[5:].isdigit()}})
    return FidelityResult(pd.DataFrame(rows), sat, judge_spread, comparisons)
