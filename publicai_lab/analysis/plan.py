"""``plan(scenario, target_rate_per_s)``: the fewest replicas per cluster that hold the SLO.

The question an operator asks: at R requests per second, how many replicas does each partner
cluster need so that (by default) 99 % of the requests the federation serves meet every SLO —
and what does that cost? The answer is found by search on the simulator.

**What "holds" means.** A configuration holds when, over the pooled requests of all ``seeds``
(common random numbers: every configuration sees the very same arrivals and lengths):

- ``slo_attainment`` (share of *non-rejected* requests that finish ``ok`` within TTFT, TPOT and
  E2E; see ``summary.py``) is at least ``attainment``; and
- the share of rejected requests exceeds the rejections of the *largest* configuration tried by at
  most ``1 - attainment`` — otherwise an admission limit could "meet" the SLO by turning requests
  away; rejections that no capacity avoids (prompts longer than the context) are not held against it.

**The search** (deterministic; each step is one simulation per seed, cached by configuration):

1. *A chain of configurations, one replica at a time.* Scalable clusters start at one replica;
   replica number ``k`` goes to the cluster with the largest ``w / (r + 1)`` (D'Hondt's divisor
   rule; ``w`` = the cluster's replicas in the scenario, so the chain keeps the operator's mix;
   ties to the earlier cluster; a cluster at ``max_replicas`` is skipped). Each configuration on
   the chain contains the previous one, so the chain is ordered replica by replica.
2. *Binary search* on the chain for the first configuration that holds (the largest one is tried
   first: if even it fails the plan is marked infeasible). With more load a configuration can only
   hold less, so the chain point found can only move up: the answer is monotone in the load.
3. *Trim.* From that point, remove replicas one at a time, cluster by cluster — paid clusters
   before donated ones, most expensive replica first — keeping each removal while the SLO still
   holds. The result is locally minimal: taking one more replica away from any scalable cluster
   that has more than one breaks the SLO (those checks are in ``Plan.evaluations``). Trimming can
   shift replicas between clusters as the load grows (55 req/s: 2 fast + 2 slow; 65 req/s: 3 fast
   + 1 slow), so per-cluster counts are not guaranteed monotone; the total is what the tests check.

Clusters not listed in ``clusters`` keep their replicas. A cluster keeps its GPUs per replica.

**Cost** for the planned configuration, per hour of service at the target rate: GPU-hours
(provisioned GPUs), paid USD (non-donated GPUs × ``cost_per_gpu_hour_usd``), USD per 1M tokens
(paid USD / tokens served per hour, prompt + output of the simulated requests), donated GPU-hours and
their value at list price.

Diurnal arrivals: ``rate_per_s`` is the day's mean and a short run covers only the start of the
curve; plan on a Poisson version of the scenario at the peak rate for a conservative answer.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScenarioError
from .html import Document, figure_png
from .summary import meets_slo, slo_thresholds
from .sweep import apply_overrides, map_tasks, scenario_dict

__all__ = ["plan", "Plan", "evaluate_config", "add_cli"]

DEFAULT_REQUESTS = 2000
DEFAULT_SEEDS = (1, 2, 3)
DEFAULT_MAX_REPLICAS = 64


def evaluate_config(data: dict[str, Any], seed: int, requests: int, slo: dict[str, float]) -> dict[str, Any]:
    """One simulation of a configuration (top-level, picklable: an executor task).

    Returns counts to pool across seeds (served, met, rejected, tokens) and per-backend busy and
    available replica-seconds; latency tails are per seed (averaged by the caller)."""
    from ..scenario import load_scenario
    from ..sim import simulate

    result = simulate(load_scenario(data), seed=int(seed), requests=int(requests), progress=False)
    req = result.requests
    served = req["status"] != "rejected"
    ok = req[req["status"] == "ok"]
    met = int(meets_slo(req[served], slo).sum())
    b = result.backends
    return {
        "requests": int(len(req)), "served": int(served.sum()), "met": met,
        "rejected": int((~served).sum()), "ok": int(len(ok)),
        "ok_tokens": float(ok["prompt_tokens"].sum() + ok["output_tokens"].sum()),
        "ttft_p99_s": float(np.percentile(ok["ttft_s"].dropna(), 99)) if len(ok) else math.nan,
        "e2e_p99_s": float(np.percentile(ok["e2e_s"].dropna(), 99)) if len(ok) else math.nan,
        "busy_s": dict(zip(b["backend_id"], map(float, b["busy_s"]))),
        "available_s": dict(zip(b["backend_id"], map(float, b["available_s"]))),
    }


@dataclass
class _Cluster:
    backend_id: str
    path: str                  # dotted path of its replicas field
    base_replicas: int
    gpus_per_replica: float
    tensor_parallel: int
    cost_per_gpu_hour_usd: float
    donated: bool
    partner: str
    scalable: bool
    cap: int

    def gpus(self, replicas: int) -> int:
        return max(replicas * self.tensor_parallel, int(round(replicas * self.gpus_per_replica)))


@dataclass
class Plan:
    """The answer of :func:`plan`: replicas per cluster, their cost, and how the search got there."""

    scenario_name: str
    target_rate_per_s: float
    slo: dict[str, float]
    attainment_target: float
    requests: int
    seeds: tuple[int, ...]
    feasible: bool
    replicas: dict[str, int]                  # backend id -> planned replicas (every cluster)
    base_replicas: dict[str, int]             # as in the scenario
    scalable: list[str]
    attainment: float                         # achieved, pooled over seeds
    base_attainment: float                    # the scenario's own replicas at the target rate
    clusters: pd.DataFrame                    # per cluster: replicas, GPUs, cost, utilisation
    cost: dict[str, float]
    evaluations: pd.DataFrame                 # every configuration simulated, in search order
    minus_one: dict[str, float]               # backend id -> attainment with one replica fewer
    scenario_data: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def total_replicas(self) -> int:
        return int(sum(self.replicas.values()))

    @property
    def scenario(self) -> Any:
        """The planned scenario (replicas and GPUs set, arrival rate at the target)."""
        from ..scenario import load_scenario
        return load_scenario(self.scenario_data)

    def figure(self) -> Any:
        """SLO attainment versus total replicas for every configuration the search simulated."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.0, 4.0))
        ev = self.evaluations
        chain = ev[ev["phase"].isin(["chain", "bound"])].sort_values("total_replicas")
        ax.plot(chain["total_replicas"], chain["attainment"] * 100, "o-", color="#1f77b4",
                label="replica chain (binary search)")
        trim = ev[ev["phase"] == "trim"]
        if len(trim):
            ax.plot(trim["total_replicas"], trim["attainment"] * 100, "x", color="#7f7f7f",
                    label="trim trials (one replica fewer)")
        base = ev[ev["phase"] == "scenario"]
        if len(base):
            ax.plot(base["total_replicas"], base["attainment"] * 100, "s", color="#2ca02c",
                    label="scenario as given")
        if self.feasible:
            ax.plot([self.total_replicas], [self.attainment * 100], "*", ms=16, color="#d62728",
                    label=f"plan: {self.total_replicas} replicas")
        ax.axhline(self.attainment_target * 100, ls="--", color="#d62728", lw=1,
                   label=f"target {self.attainment_target:.1%}")
        if self.feasible and len(chain):               # the largest bound squashes the curve: zoom in
            ax.set_xlim(float(ev["total_replicas"].min()) - 0.5, max(2 * self.total_replicas + 0.5,
                        float(ev.loc[ev["phase"] != "bound", "total_replicas"].max()) + 0.5))
        ax.set_xlabel("replicas (all clusters)")
        ax.set_ylabel("SLO attainment (%)")
        lo = float(np.nanmin(ev["attainment"])) * 100 if len(ev) else 0.0
        ax.set_ylim(max(0.0, min(lo, self.attainment_target * 100) - 5), 100.5)
        ax.set_title(f"{self.scenario_name} at {self.target_rate_per_s:g} req/s")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        return fig

    def _document(self) -> Document:
        d = Document(f"Capacity plan: {self.scenario_name} at {self.target_rate_per_s:g} req/s")
        slo = ", ".join(f"{k.removesuffix('_s').upper()} ≤ {v:g} s" for k, v in self.slo.items())
        verdict = ("The plan below holds the SLO." if self.feasible else
                   "**Infeasible**: even the largest configuration tried misses the SLO; the table "
                   "shows that configuration.")
        d.paragraph(f"Target: {self.attainment_target:.1%} of served requests within {slo}, at "
                    f"{self.target_rate_per_s:g} req/s; {self.requests} simulated requests × seeds "
                    f"{', '.join(map(str, self.seeds))}. {verdict}")
        d.bullets([
            f"replicas: {self.total_replicas} (scenario: {sum(self.base_replicas.values())}); "
            f"SLO attainment {self.attainment:.2%} (scenario as given: {self.base_attainment:.2%})",
            f"GPUs: {self.cost['gpus']:g} → {self.cost['gpu_hours_per_day']:,.0f} GPU-hours per day, "
            f"of which donated {self.cost['donated_gpu_hours_per_day']:,.0f}",
            f"paid: {self.cost['paid_usd_per_hour']:,.2f} USD/hour; "
            f"{_usd(self.cost['usd_per_mtok'])} USD per 1M tokens "
            f"({self.cost['tokens_per_s']:,.0f} tokens/s)",
            f"donated capacity at list price: {self.cost['donated_value_usd_per_hour']:,.2f} USD/hour "
            f"(all-in {_usd(self.cost['all_in_usd_per_mtok'])} USD per 1M tokens)",
        ])
        d.heading("Replicas per cluster")
        cols = ["backend_id", "scalable", "base_replicas", "replicas", "gpus", "donated",
                "gpu_hours_per_day", "paid_usd_per_hour", "utilisation", "minus_one_attainment"]
        rows = []
        for r in self.clusters[cols].itertuples(index=False):
            rows.append([r.backend_id, "yes" if r.scalable else "no", str(r.base_replicas), str(r.replicas),
                         str(r.gpus), "yes" if r.donated else "no", f"{r.gpu_hours_per_day:,.0f}",
                         f"{r.paid_usd_per_hour:,.2f}", _pct(r.utilisation), _pct(r.minus_one_attainment)])
        d.table(["cluster", "scalable", "scenario", "planned", "GPUs", "donated", "GPU-h/day",
                 "paid USD/h", "utilisation", "attainment with one fewer"], rows)
        d.figure("attainment_vs_replicas.png", figure_png(self.figure()),
                 "SLO attainment versus replicas: the replica chain searched, the trim trials, the plan.")
        d.heading("Search")
        d.paragraph("A chain of configurations adds one replica at a time (D'Hondt rule over the "
                    "scenario's mix); binary search finds the first that holds; then replicas are "
                    "removed one by one (paid and expensive first) while the SLO holds. Every "
                    "configuration simulated, in order:")
        ev_rows = [[str(i), r.phase, r.config, f"{r.total_replicas}", _pct(r.attainment),
                    _pct(r.rejected_share), "yes" if r.holds else "no", f"{r.e2e_p99_s:.3f}"]
                   for i, r in enumerate(self.evaluations.itertuples(index=False))]
        d.table(["#", "phase", "replicas", "total", "attainment", "rejected", "holds", "E2E p99 (s)"], ev_rows)
        return d

    def to_markdown(self) -> str:
        return self._document().to_markdown()

    def to_html(self) -> str:
        return self._document().to_html()

    def write(self, out_dir: str | Path) -> Path:
        """Write ``plan.html`` (standalone, figures embedded), ``plan.md`` + PNG,
        ``evaluations.csv`` and ``plan.json``; return the HTML path."""
        out = Path(out_dir)
        _, page = self._document().write(out, "plan")
        self.evaluations.to_csv(out / "evaluations.csv", index=False)
        facts = {"scenario": self.scenario_name, "target_rate_per_s": self.target_rate_per_s,
                 "slo": self.slo, "attainment_target": self.attainment_target, "feasible": self.feasible,
                 "replicas": self.replicas, "attainment": self.attainment, "cost": self.cost,
                 "requests": self.requests, "seeds": list(self.seeds)}
        (out / "plan.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return page


def _pct(v: float) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.1%}"


def _usd(v: float) -> str:
    return "–" if not math.isfinite(v) else (f"{v:,.2f}" if v == 0 or abs(v) >= 1 else f"{v:.3g}")


class _Search:
    """Evaluations cached by configuration; pooled over seeds."""

    def __init__(self, data: dict[str, Any], clusters: list[_Cluster], seeds: tuple[int, ...],
                 requests: int, slo: dict[str, float], attainment: float, executor: Any) -> None:
        self.data, self.clusters, self.seeds = data, clusters, seeds
        self.requests, self.slo, self.target, self.executor = requests, slo, attainment, executor
        self.cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self.order: list[tuple[str, tuple[int, ...]]] = []
        self.base_rejected = 0.0

    def config_data(self, config: tuple[int, ...]) -> dict[str, Any]:
        return apply_overrides(self.data, {c.path: n for c, n in zip(self.clusters, config)})

    def evaluate(self, config: tuple[int, ...], phase: str) -> dict[str, Any]:
        if config not in self.cache:
            data = self.config_data(config)
            runs = map_tasks(evaluate_config, [(data, s, self.requests, self.slo) for s in self.seeds],
                             executor=self.executor, progress=False)
            pooled = {k: sum(r[k] for r in runs) for k in ("requests", "served", "met", "rejected", "ok", "ok_tokens")}
            pooled["attainment"] = pooled["met"] / pooled["served"] if pooled["served"] else math.nan
            pooled["rejected_share"] = pooled["rejected"] / pooled["requests"] if pooled["requests"] else math.nan
            pooled["ttft_p99_s"] = float(np.nanmean([r["ttft_p99_s"] for r in runs]))
            pooled["e2e_p99_s"] = float(np.nanmean([r["e2e_p99_s"] for r in runs]))
            busy = {b: sum(r["busy_s"][b] for r in runs) for b in runs[0]["busy_s"]}
            avail = {b: sum(r["available_s"][b] for r in runs) for b in runs[0]["available_s"]}
            pooled["utilisation"] = {b: busy[b] / avail[b] if avail[b] > 0 else math.nan for b in busy}
            self.cache[config] = pooled
            self.order.append((phase, config))
        return self.cache[config]

    def holds(self, config: tuple[int, ...], phase: str) -> bool:
        ev = self.evaluate(config, phase)
        return bool(ev["served"] > 0 and ev["attainment"] >= self.target
                    and ev["rejected_share"] <= self.base_rejected + (1.0 - self.target) + 1e-12)


def _chain(clusters: list[_Cluster]) -> list[tuple[int, ...]]:
    """Configurations from the smallest (scalable clusters at one replica) to the largest, one
    replica more at each step, by D'Hondt's rule on the scenario's replica mix."""
    current = [1 if c.scalable else c.base_replicas for c in clusters]
    chain = [tuple(current)]
    while True:
        best, best_q = None, -1.0
        for i, c in enumerate(clusters):
            if c.scalable and current[i] < c.cap:
                q = c.base_replicas / (current[i] + 1)
                if q > best_q:
                    best, best_q = i, q
        if best is None:
            return chain
        current[best] += 1
        chain.append(tuple(current))


def _trim_order(clusters: list[_Cluster]) -> list[int]:
    """Paid before donated, then the most expensive replica (USD/hour), then most GPUs, then order."""
    idx = [i for i, c in enumerate(clusters) if c.scalable]
    return sorted(idx, key=lambda i: (clusters[i].donated,
                                      -clusters[i].gpus_per_replica * clusters[i].cost_per_gpu_hour_usd,
                                      -clusters[i].gpus_per_replica, i))


def plan(scenario: Any, target_rate_per_s: float, *, slo: Mapping[str, float] | Any = None,
         attainment: float = 0.99, clusters: Sequence[str] | None = None,
         requests: int = DEFAULT_REQUESTS, seeds: Sequence[int] = DEFAULT_SEEDS,
         max_replicas: int | Mapping[str, int] = DEFAULT_MAX_REPLICAS, policy: str | None = None,
         executor: Any = None) -> Plan:
    """The fewest replicas per cluster that hold the SLO at ``target_rate_per_s`` (see the module
    docstring for the search and what "holds" means).

    ``slo``: thresholds overriding the scenario's (a partial dict is fine); ``clusters``: backend
    ids ("partner/cluster") that may scale, default all; ``max_replicas``: cap per cluster (an int
    or a mapping by backend id); ``executor``: None runs in this process, else seeds run in
    parallel on it (a ``concurrent.futures`` executor or a ``dask.distributed.Client``).
    """
    from ..scenario import load_scenario

    if not 0.0 < attainment <= 1.0:
        raise ScenarioError(f"attainment must be in (0, 1], got {attainment!r}")
    if not (target_rate_per_s > 0 and math.isfinite(target_rate_per_s)):
        raise ScenarioError(f"target_rate_per_s must be a positive number, got {target_rate_per_s!r}")
    seeds_t = tuple(int(s) for s in seeds)
    if not seeds_t or requests < 1:
        raise ScenarioError("plan needs at least one seed and one request")
    sc = load_scenario(scenario)
    overrides: dict[str, Any] = {"rate_per_s": float(target_rate_per_s)}
    if policy is not None:
        overrides["policy"] = policy
    if "rate_per_s" not in type(sc.workload.arrivals).model_fields:
        raise ScenarioError(f"plan: arrivals of kind {sc.workload.arrivals.kind!r} have no rate to set")
    data = apply_overrides(scenario_dict(sc), overrides)
    thresholds = slo_thresholds(sc.slo)
    if slo is not None:
        given = slo if isinstance(slo, Mapping) else {k: getattr(slo, k, None) for k in thresholds}
        thresholds.update({k: float(v) for k, v in given.items() if v is not None})
        unknown = set(given) - set(thresholds)
        if unknown:
            raise ScenarioError(f"plan: unknown SLO keys {sorted(unknown)}; allowed: {sorted(thresholds)}")
    data["slo"] = dict(thresholds)
    sc = load_scenario(data)

    ids = [sc.backend_id(p, c) for p, c in sc.clusters()]
    wanted = set(ids) if clusters is None else set(clusters)
    unknown_ids = wanted - set(ids)
    if unknown_ids:
        raise ScenarioError(f"plan: unknown clusters {sorted(unknown_ids)}; backends: {', '.join(ids)}")
    infos: list[_Cluster] = []
    for pi, p in enumerate(sc.partners):
        for ci, c in enumerate(p.clusters):
            bid = sc.backend_id(p, c)
            cap = max_replicas.get(bid, DEFAULT_MAX_REPLICAS) if isinstance(max_replicas, Mapping) else max_replicas
            infos.append(_Cluster(bid, f"partners[{pi}].clusters[{ci}].replicas", c.replicas,
                                  c.gpus / c.replicas, c.tensor_parallel, float(c.cost_per_gpu_hour_usd),
                                  bool(c.donated), p.name, bid in wanted, max(int(cap), 1)))
    search = _Search(data, infos, seeds_t, int(requests), thresholds, attainment,
                     "inline" if executor is None else executor)

    chain = _chain(infos)
    largest = chain[-1]
    search.base_rejected = search.evaluate(largest, "bound")["rejected_share"]
    feasible = search.holds(largest, "bound")
    if not feasible:
        best = largest
    else:
        lo, hi = 0, len(chain) - 1                 # invariant: chain[hi] holds
        if search.holds(chain[lo], "bound"):
            hi = lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if search.holds(chain[mid], "chain"):
                hi = mid
            else:
                lo = mid
        # a little of the curve around the answer, for the figure
        for k in range(max(0, hi - 2), min(len(chain), hi + 3)):
            search.evaluate(chain[k], "chain")
        best = chain[hi]
        changed = True
        while changed:                            # trim: one replica at a time while it holds
            changed = False
            for i in _trim_order(infos):
                while best[i] > 1:
                    trial = best[:i] + (best[i] - 1,) + best[i + 1:]
                    if not search.holds(trial, "trim"):
                        break
                    best, changed = trial, True
    base_config = tuple(c.base_replicas for c in infos)
    base_ev = search.evaluate(base_config, "scenario")
    final = search.evaluate(best, "trim")

    minus_one: dict[str, float] = {}
    if feasible:
        for i, c in enumerate(infos):
            if c.scalable and best[i] > 1:
                trial = best[:i] + (best[i] - 1,) + best[i + 1:]
                minus_one[c.backend_id] = search.evaluate(trial, "trim")["attainment"]

    tokens_per_request = final["ok_tokens"] / final["ok"] if final["ok"] else math.nan
    tokens_per_s = target_rate_per_s * tokens_per_request
    rows = []
    for i, c in enumerate(infos):
        gpus = c.gpus(best[i])
        rows.append({"backend_id": c.backend_id, "partner": c.partner, "scalable": c.scalable,
                     "base_replicas": c.base_replicas, "replicas": best[i], "gpus": gpus,
                     "donated": c.donated, "cost_per_gpu_hour_usd": c.cost_per_gpu_hour_usd,
                     "gpu_hours_per_day": gpus * 24.0,
                     "paid_usd_per_hour": 0.0 if c.donated else gpus * c.cost_per_gpu_hour_usd,
                     "donated_value_usd_per_hour": gpus * c.cost_per_gpu_hour_usd if c.donated else 0.0,
                     "utilisation": final["utilisation"].get(c.backend_id, math.nan),
                     "minus_one_attainment": minus_one.get(c.backend_id, math.nan)})
    table = pd.DataFrame(rows)
    paid = float(table["paid_usd_per_hour"].sum())
    donated_value = float(table["donated_value_usd_per_hour"].sum())
    per_mtok = (lambda usd: usd / (tokens_per_s * 3600.0) * 1e6 if tokens_per_s > 0 else math.nan)
    cost = {"gpus": float(table["gpus"].sum()), "gpu_hours_per_day": float(table["gpu_hours_per_day"].sum()),
            "donated_gpu_hours_per_day": float(table.loc[table["donated"], "gpu_hours_per_day"].sum()),
            "paid_usd_per_hour": paid, "donated_value_usd_per_hour": donated_value,
            "tokens_per_s": float(tokens_per_s), "usd_per_mtok": float(per_mtok(paid)),
            "all_in_usd_per_mtok": float(per_mtok(paid + donated_value))}

    ev_rows = []
    for phase, config in search.order:
        ev = search.cache[config]
        ev_rows.append({"phase": phase, "config": " ".join(map(str, config)),
                        "total_replicas": int(sum(config)), "attainment": ev["attainment"],
                        "rejected_share": ev["rejected_share"], "holds": search.holds(config, phase),
                        "ttft_p99_s": ev["ttft_p99_s"], "e2e_p99_s": ev["e2e_p99_s"],
                        **{f"replicas[{c.backend_id}]": n for c, n in zip(infos, config)}})
    return Plan(scenario_name=sc.name, target_rate_per_s=float(target_rate_per_s), slo=thresholds,
                attainment_target=float(attainment), requests=int(requests), seeds=seeds_t,
                feasible=feasible, replicas={c.backend_id: n for c, n in zip(infos, best)},
                base_replicas={c.backend_id: c.base_replicas for c in infos},
                scalable=[c.backend_id for c in infos if c.scalable], attainment=final["attainment"],
                base_attainment=base_ev["attainment"], clusters=table, cost=cost,
                evaluations=pd.DataFrame(ev_rows), minus_one=minus_one,
                scenario_data=search.config_data(best))


# ---------------------------------------------------------------------------------------- CLI

def _cmd_plan(args: argparse.Namespace) -> int:
    slo = {k: v for k, v in (("ttft_s", args.slo_ttft_s), ("tpot_s", args.slo_tpot_s),
                             ("e2e_s", args.slo_e2e_s)) if v is not None}
    executor: Any = None
    if args.workers and args.workers > 1:
        from .sweep import _default_executor
        executor = _default_executor(args.workers)
    try:
        result = plan(args.scenario, args.target_rate, slo=slo or None, attainment=args.attainment,
                      clusters=args.clusters, requests=args.requests,
                      seeds=[int(s) for s in args.seeds.split(",") if s.strip()],
                      max_replicas=args.max_replicas, policy=args.policy, executor=executor)
    finally:
        if executor is not None:
            executor.shutdown()
    page = result.write(args.out)
    status = "holds" if result.feasible else "INFEASIBLE"
    print(f"plan for {result.scenario_name} at {result.target_rate_per_s:g} req/s: {status}; "
          f"{result.total_replicas} replicas, attainment {result.attainment:.2%}")
    for bid, n in result.replicas.items():
        print(f"  {bid:40s} {result.base_replicas[bid]:3d} -> {n:3d}")
    print(f"{result.cost['gpu_hours_per_day']:,.0f} GPU-hours/day "
          f"({result.cost['donated_gpu_hours_per_day']:,.0f} donated), "
          f"{result.cost['paid_usd_per_hour']:,.2f} USD/hour paid, {_usd(result.cost['usd_per_mtok'])} USD per 1M tokens")
    print(f"report: {page}")
    return 0 if result.feasible else 1


def add_cli(subparsers: Any) -> None:
    """Register ``publicai-lab plan``."""
    p = subparsers.add_parser(
        "plan", help="fewest replicas per cluster that hold the SLO at a target load",
        description="Search the simulator for the fewest replicas per cluster that keep the SLO at "
                    "--target-rate; write plan.html (standalone), plan.md, the figure and the "
                    "evaluations to --out. Exit status 1 when no configuration up to --max-replicas holds.")
    p.add_argument("--scenario", required=True, help="scenario YAML file")
    p.add_argument("--target-rate", type=float, required=True, dest="target_rate",
                   help="arrival rate to plan for, requests per second")
    p.add_argument("--slo-ttft-s", type=float, dest="slo_ttft_s", help="TTFT SLO, s (default: the scenario's)")
    p.add_argument("--slo-tpot-s", type=float, dest="slo_tpot_s", help="TPOT SLO, s (default: the scenario's)")
    p.add_argument("--slo-e2e-s", type=float, dest="slo_e2e_s", help="E2E SLO, s (default: the scenario's)")
    p.add_argument("--attainment", type=float, default=0.99,
                   help="share of served requests that must meet every SLO (default 0.99)")
    p.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                   help=f"simulated requests per seed and configuration (default {DEFAULT_REQUESTS})")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated seeds")
    p.add_argument("--clusters", nargs="+", metavar="PARTNER/CLUSTER",
                   help="backend ids that may scale (default: all)")
    p.add_argument("--max-replicas", type=int, default=DEFAULT_MAX_REPLICAS, dest="max_replicas",
                   help=f"cap per cluster (default {DEFAULT_MAX_REPLICAS})")
    p.add_argument("--policy", help="routing policy (default: the scenario's)")
    p.add_argument("--workers", type=int, default=0, help="run seeds in this many local processes")
    p.add_argument("--out", default="out/plan", help="output directory (default out/plan)")
    p.set_defaults(func=_cmd_plan)
