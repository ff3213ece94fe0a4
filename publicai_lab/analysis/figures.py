"""Matplotlib figures of a run. Each function takes frames, draws, and returns the ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` directly rather than through ``pyplot``: no
global figure registry, no backend switch, nothing shown — the caller saves or displays the
figure (PNG output goes through the Agg renderer). Pass ``ax`` to draw into an existing layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_latency_cdfs", "plot_utilisation", "plot_routing_shares", "METRIC_LABELS"]

#: axis labels, with units, for the latency columns of the record schema
METRIC_LABELS: dict[str, str] = {
    "ttft_s": "time to first token (s)",
    "tpot_s": "time per output token (s)",
    "e2e_s": "end-to-end latency (s)",
    "queue_wait_s": "queue wait (s)",
}
_MISSING = "(none)"


def _color(i: int, n: int) -> tuple[float, float, float, float]:
    """Distinct colours: tab10 up to ten lines, tab20 beyond (the default cycle repeats after 10)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return cmap(i % cmap.N)


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_latency_cdfs(requests: pd.DataFrame, by: str | None = "partner", metric: str = "e2e_s",
                      ax: Axes | None = None) -> Figure:
    """Empirical CDF of ``metric`` over ``ok`` requests, one line per value of ``by``.

    CDFs rather than means: SLOs are about tails, and the whole curve shows where each group's
    tail starts. ``by=None`` draws a single line for the whole run.
    """
    fig, ax = _figure_and_axes(ax, (7.0, 4.5))
    ok = requests[requests["status"] == "ok"]
    if by is None:
        groups = [("all requests", ok[metric])]
    else:
        keys = ok[by].astype("object").where(ok[by].notna(), _MISSING)
        groups = [(str(k), ok.loc[keys == k, metric]) for k in sorted(keys.unique(), key=str)]
    drawn = 0
    groups = list(groups)
    for i, (label, values) in enumerate(groups):
        x = np.sort(values.dropna().to_numpy(dtype="float64"))
        if x.size == 0:
            continue
        x = np.concatenate(([x[0]], x))                  # start the curve at 0
        y = np.arange(0, x.size) / (x.size - 1)
        ax.step(x, y, where="post", label=f"{label} (n={x.size - 1})", color=_color(i, len(groups)))
        drawn += 1
    label = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel(label)
    ax.set_ylabel("share of ok requests ≤ x")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"CDF of {label.split(' (')[0]}" + (f" by {by}" if by else ""))
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="lower right")
    else:
        _empty_note(ax, "no ok requests")
    return fig


def _backend_labels(backends: pd.DataFrame | None) -> dict[str, str]:
    """``backend_id -> 'id (hardware×gpus, model)'`` when the backends frame can tell us."""
    if backends is None or "backend_id" not in backends.columns:
        return {}
    labels = {}
    for _, b in backends.iterrows():
        extra = []
        if "hardware" in b and pd.notna(b["hardware"]):
            extra.append(f"{b['hardware']}×{int(b['gpus'])}" if "gpus" in b and pd.notna(b["gpus"])
                         else str(b["hardware"]))
        if "model" in b and pd.notna(b["model"]):
            extra.append(str(b["model"]))
        labels[str(b["backend_id"])] = f"{b['backend_id']} ({', '.join(extra)})" if extra else str(b["backend_id"])
    return labels


def plot_utilisation(replicas: pd.DataFrame, backends: pd.DataFrame | None = None,
                     ax: Axes | Sequence[Axes] | None = None) -> Figure:
    """Per backend over time: mean KV-cache use across its replicas (top) and the total number of
    running sequences (bottom).

    KV use shows memory pressure (preemptions start near 100 %); running sequences show how much
    batch the backend actually carries. ``ax`` may be a pair of axes, or one axes (KV use solid on
    it, running dashed on a twin y-axis). ``backends``, if given, adds hardware and model to labels.
    """
    twin = isinstance(ax, Axes)
    if ax is None:
        fig = Figure(figsize=(8.0, 6.0), layout="constrained")
        ax_kv, ax_run = fig.subplots(2, 1, sharex=True)
    elif twin:
        fig, ax_kv = ax.figure, ax
        ax_run = ax.twinx()
    else:
        ax_kv, ax_run = ax
        fig = ax_kv.figure
    labels = _backend_labels(backends)
    if replicas is None or replicas.empty:
        _empty_note(ax_kv, "no replica samples")
    else:
        per = (replicas.groupby(["backend_id", "time_s"], sort=True)
               .agg(kv_use=("kv_use", "mean"), running=("running", "sum")).reset_index())
        groups = list(per.groupby("backend_id", sort=True))
        for i, (bid, g) in enumerate(groups):
            color = _color(i, len(groups))
            label = labels.get(str(bid), str(bid))
            ax_kv.plot(g["time_s"], g["kv_use"] * 100.0, color=color, label=label)
            ax_run.plot(g["time_s"], g["running"], color=color, linestyle="--" if twin else "-",
                        label=label)
        if ax is None and len(groups) > 6:
            # many backends: one legend outside the axes so it hides no data
            fig.set_size_inches(12.0, 6.0)
            fig.legend(*ax_kv.get_legend_handles_labels(), loc="outside right upper", fontsize="x-small")
        else:
            ax_kv.legend(fontsize="small", loc="upper left")
    ax_kv.set_ylabel("mean KV-cache use (%)")
    ax_kv.set_ylim(0, 105)
    ax_run.set_ylim(bottom=0)
    ax_run.set_ylabel("running sequences, all replicas" + (" (dashed)" if twin else ""))
    ax_run.set_xlabel("time since start of run (s)")
    if twin:
        ax_kv.set_xlabel("time since start of run (s)")
    ax_kv.set_title("Backend load over time")
    ax_kv.grid(True, alpha=0.3)
    if not twin:
        ax_run.grid(True, alpha=0.3)
    return fig


def plot_routing_shares(requests: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Horizontal bar per backend: its share (%) of the requests that were routed and finished
    ``ok`` or ``failed`` — i.e. what the policy actually sent where."""
    fig, ax = _figure_and_axes(ax, (7.0, 4.0))
    routed = requests[requests["status"].isin(("ok", "failed")) & requests["backend_id"].notna()]
    if routed.empty:
        _empty_note(ax, "no routed requests")
    else:
        counts = routed["backend_id"].astype("object").value_counts().sort_index(ascending=False)
        shares = counts / counts.sum() * 100.0
        bars = ax.barh(list(shares.index), shares.to_numpy(), color="C0")
        ax.bar_label(bars, labels=[f"{s:.1f}% (n={n})" for s, n in zip(shares, counts)],
                     padding=3, fontsize="small")
        ax.set_xlim(0, min(100.0, shares.max() * 1.3 + 5))
    ax.set_xlabel("share of routed requests, ok + failed (%)")
    ax.set_ylabel("backend (partner/cluster)")
    ax.set_title("Routing shares")
    ax.grid(True, axis="x", alpha=0.3)
    return fig
