"""A run report on disk: ``report.md`` + figures + the data it was built from.

``write_report`` writes everything needed to rebuild the report later — the frames as Parquet and
the run facts as ``run.json`` — so ``report_from_dir`` (behind ``publicai-lab report``) can
regenerate an identical ``report.md`` from a run directory without re-running anything.
``report.md`` holds no timestamps or absolute paths, so the same data always gives the same bytes.

Run directory layout::

    report.md            latency_cdf.png   utilisation.png (only with replica samples)
    routing_shares.png   requests.parquet  replicas.parquet / backends.parquet (when given)
    run.json             {"title", "scenario", "policy", "seed", "duration_s", "slo", "prices",
                          "extra_markdown"}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import PublicAILabError
from ..records import DTYPES, validate_frame
from .figures import plot_latency_cdfs, plot_routing_shares, plot_utilisation
from .summary import UNROUTED, _price_pair, slo_thresholds, summarize

__all__ = ["write_report", "report_from_dir", "read_requests", "markdown_table"]

REPORT_FILE = "report.md"
RUN_FILE = "run.json"
REQUESTS_FILE = "requests.parquet"
REPLICAS_FILE = "replicas.parquet"
BACKENDS_FILE = "backends.parquet"
_DPI = 110

# (column, header, formatter) for each report table; formatters get a non-NaN float
_Fmt = Callable[[float], str]
_int: _Fmt = lambda v: f"{int(v):d}"
_pct: _Fmt = lambda v: f"{v * 100:.1f} %"
_s3: _Fmt = lambda v: f"{v:.3f}"
_ms: _Fmt = lambda v: f"{v * 1000:.1f}"
_f2: _Fmt = lambda v: f"{v:,.2f}"
_f1: _Fmt = lambda v: f"{v:,.1f}"
_usd: _Fmt = lambda v: f"{v:,.2f}" if v == 0 or abs(v) >= 1 else f"{v:.3g}"  # keep small sums visible

_TRAFFIC = [("requests", "requests", _int), ("ok", "ok", _int), ("rejected", "rejected", _int),
            ("failed", "failed", _int), ("timeout", "timeout", _int),
            ("incomplete", "incomplete", _int), ("throughput_rps", "throughput (req/s)", _s3),
            ("output_tokens_per_s", "output (tok/s)", _f1), ("goodput_rps", "goodput (req/s)", _s3),
            ("slo_attainment", "SLO attainment", _pct)]
_LATENCY = ([(f"ttft_p{q}_s", f"TTFT p{q} (s)", _s3) for q in (50, 90, 99)]
            + [(f"tpot_p{q}_s", f"TPOT p{q} (ms)", _ms) for q in (50, 90, 99)]
            + [(f"e2e_p{q}_s", f"E2E p{q} (s)", _s3) for q in (50, 90, 99)])
_COST = [("utilisation", "utilisation", _pct), ("gpu_hours", "GPU-hours", _f2),
         ("donated_gpu_hours", "donated GPU-hours", _f2), ("cost_usd", "cost (USD)", _usd),
         ("cost_per_mtok_usd", "cost per 1M tok (USD)", _usd),
         ("list_price_usd", "list-price value (USD)", _usd)]

_FIGURE_NOTES = {
    "latency_cdf.png": ("End-to-end latency CDF by partner",
                        "each line is one partner's ok requests; the further left and the steeper, "
                        "the faster — read the tail where a line approaches 1.0 against the E2E SLO."),
    "utilisation.png": ("Backend load over time",
                        "top: mean KV-cache use across each backend's replicas (near 100 % means "
                        "preemption and queueing); bottom: sequences running on the backend."),
    "routing_shares.png": ("Routing shares",
                           "what share of the routed requests (ok + failed) the policy sent to each "
                           "backend; compare with the backends' capacity and weights."),
}


def markdown_table(df: pd.DataFrame, spec: list[tuple[str, str, _Fmt]], index_header: str) -> str:
    """A GitHub-Markdown table of the ``spec`` columns present in ``df``; NaN prints as ``–``."""
    cols = [(c, h, f) for c, h, f in spec if c in df.columns]
    lines = ["| " + " | ".join([index_header] + [h for _, h, _ in cols]) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(cols)) + "|"]
    for idx, row in df.iterrows():
        cells = [str(idx)]
        for c, _, fmt in cols:
            v = row[c]
            cells.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt(float(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Plain JSON types for run.json (numpy scalars, tuples, NaN -> null)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def _run_facts(requests: pd.DataFrame, backends: pd.DataFrame | None, *, scenario_name: str | None,
               policy: str | None, seed: int | None, duration_s: float | None,
               slo: dict[str, float]) -> str:
    def distinct(col: str) -> str:
        vals = sorted(str(v) for v in requests[col].dropna().unique())
        return ", ".join(vals) if vals else "–"

    if duration_s is not None:
        duration = f"{duration_s:,.1f} s"
    elif len(requests):
        span = float(requests["arrival_s"].max() - requests["arrival_s"].min())
        duration = f"{span:,.1f} s (span of arrivals)"
    else:
        duration = "–"
    facts = [
        ("Scenario", scenario_name or "–"),
        ("Policy", policy or distinct("policy")),
        ("Seed", "–" if seed is None else str(seed)),
        ("Duration", duration),
        ("Requests", f"{len(requests):,}"),
        ("Source", distinct("source")),
        ("Run id", distinct("run_id")),
        ("Backends", "–" if backends is None else f"{len(backends)}"),
        ("SLO", f"TTFT ≤ {_fmt_num(slo['ttft_s'])} s, TPOT ≤ {_fmt_num(slo['tpot_s'])} s, "
                f"E2E ≤ {_fmt_num(slo['e2e_s'])} s"),
    ]
    return "\n".join(f"- **{k}:** {v}" for k, v in facts)


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})


def write_report(out_dir: str | Path, requests: pd.DataFrame, replicas: pd.DataFrame | None = None,
                 backends: pd.DataFrame | None = None, *, title: str,
                 scenario_name: str | None = None, policy: str | None = None,
                 seed: int | None = None, slo: Any = None, duration_s: float | None = None,
                 prices: Mapping[str, Any] | None = None, extra_markdown: str = "") -> Path:
    """Write report, figures, Parquet data and ``run.json`` into ``out_dir``; return ``report.md``'s path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = slo_thresholds(slo)
    summary = summarize(requests, backends, slo=thresholds, duration_s=duration_s, prices=prices)

    figures = {"latency_cdf.png": plot_latency_cdfs(requests, by="partner", metric="e2e_s"),
               "routing_shares.png": plot_routing_shares(requests)}
    if replicas is not None and not replicas.empty:
        figures["utilisation.png"] = plot_utilisation(replicas, backends)
    elif (out / "utilisation.png").exists():
        (out / "utilisation.png").unlink()          # stale figure from an earlier report
    for name, fig in figures.items():
        _save(fig, out / name)

    parts = [f"# {title}", "", "## Run", "",
             _run_facts(requests, backends, scenario_name=scenario_name, policy=policy, seed=seed,
                        duration_s=duration_s, slo=thresholds), "",
             "## Traffic and SLO", "",
             "Rates count ok requests over the run duration; goodput counts those within every SLO; "
             "SLO attainment is over all non-rejected requests.", "",
             markdown_table(summary, _TRAFFIC, "partner"), "",
             "## Latency (ok requests)", "",
             markdown_table(summary, _LATENCY, "partner"), ""]
    if backends is not None or prices is not None:
        parts += ["## Capacity and cost", "",
                  "Cost counts paid GPU-hours only (donated capacity is free to Public AI); cost per "
                  "1M tokens is over prompt + output tokens of ok requests.", "",
                  markdown_table(summary.drop(index=UNROUTED, errors="ignore"), _COST, "partner"),
                  ""]
    parts += ["## Figures", ""]
    for name in ("latency_cdf.png", "utilisation.png", "routing_shares.png"):
        if name in figures:
            caption, how = _FIGURE_NOTES[name]
            parts += [f"![{caption}]({name})", "", f"*How to read this:* {how}", ""]
    if extra_markdown:
        parts += [extra_markdown.rstrip("\n"), ""]
    report = out / REPORT_FILE
    report.write_text("\n".join(parts), encoding="utf-8")

    requests.to_parquet(out / REQUESTS_FILE, index=False)
    for frame, name in ((replicas, REPLICAS_FILE), (backends, BACKENDS_FILE)):
        if frame is not None:
            frame.to_parquet(out / name, index=False)
        elif (out / name).exists():
            (out / name).unlink()
    meta = {"title": title, "scenario": scenario_name, "policy": policy, "seed": seed,
            "duration_s": duration_s, "slo": thresholds,
            "prices": None if prices is None else {m: list(_price_pair(p)) for m, p in prices.items()},
            "extra_markdown": extra_markdown}
    (out / RUN_FILE).write_text(json.dumps(_jsonable(meta), indent=2, sort_keys=True) + "\n",
                                encoding="utf-8")
    return report


def read_requests(path: str | Path) -> pd.DataFrame:
    """Read a requests Parquet file and re-pin the schema dtypes (files written by other pandas or
    pyarrow versions, or by the live side, may carry ``object`` strings)."""
    df = pd.read_parquet(path)
    missing = [c for c in DTYPES if c not in df.columns]
    if missing:
        raise PublicAILabError(f"{path}: not a requests file, missing columns {missing}")
    df = df[list(DTYPES)]
    return df.astype({c: ("str" if t == "str" else t) for c, t in DTYPES.items()})


def report_from_dir(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Rebuild the report of a run directory written by :func:`write_report` (``run.json`` plus
    Parquet frames) into ``out_dir`` (default: the run directory itself)."""
    run = Path(run_dir)
    for needed in (REQUESTS_FILE, RUN_FILE):
        if not (run / needed).is_file():
            raise PublicAILabError(f"{run}: no {needed} here; expected a directory written by write_report")
    try:
        meta = json.loads((run / RUN_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PublicAILabError(f"{run / RUN_FILE}: not valid JSON ({exc})") from exc
    requests = read_requests(run / REQUESTS_FILE)
    try:
        validate_frame(requests)
    except ValueError as exc:
        raise PublicAILabError(f"{run / REQUESTS_FILE}: {exc}") from exc
    replicas = pd.read_parquet(run / REPLICAS_FILE) if (run / REPLICAS_FILE).is_file() else None
    backends = pd.read_parquet(run / BACKENDS_FILE) if (run / BACKENDS_FILE).is_file() else None
    prices = meta.get("prices")
    return write_report(run if out_dir is None else out_dir, requests, replicas, backends,
                        title=meta.get("title") or run.name, scenario_name=meta.get("scenario"),
                        policy=meta.get("policy"), seed=meta.get("seed"), slo=meta.get("slo"),
                        duration_s=meta.get("duration_s"),
                        prices=None if prices is None else {m: tuple(p) for m, p in prices.items()},
                        extra_markdown=meta.get("extra_markdown", ""))
