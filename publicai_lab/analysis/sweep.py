"""``sweep(scenario, grid, seeds)``: many simulator runs, one DataFrame.

The grid is a mapping from *dotted scenario paths* to the values to try; every combination (the
cartesian product, in the grid's key order) is run with every seed, and each run is reduced to the
``ALL`` row of its summary (:func:`publicai_lab.analysis.summarize`) plus the configuration columns
and the seed. Row order is fixed — configurations in grid order, seeds innermost — and each run is
deterministic, so the frame is identical whichever executor ran it.

Paths (see :func:`apply_overrides`)::

    "gateway.policy.name"                  a nested field
    "workload.arrivals.rate_per_s"         ... or its shorthand "rate_per_s"
    "partners[0].clusters[1].replicas"     list items by index (gpus follow, see below)
    "policy"                               shorthand for gateway.policy: a name or {name, params}
    "requests", "seed", "horizon_s"        any top-level field

Changing a cluster's ``replicas`` keeps its GPUs per replica: ``gpus`` is rescaled with it unless
the same configuration also sets that cluster's ``gpus`` explicitly.

Executors: local processes by default (``ProcessPoolExecutor``, one worker per core, forkserver
start so that no thread of the caller is forked); or anything with ``submit(fn, *args)`` returning
a future with ``result()`` — a ``concurrent.futures`` executor or a ``dask.distributed.Client``
(a cluster of machines). Each task is the top-level function :func:`run_config`, which takes the
scenario as a plain dict so it pickles cheaply and needs no shared state.
"""

from __future__ import annotations

import copy
import itertools
import json
import multiprocessing
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import pandas as pd

from ..errors import ScenarioError

__all__ = ["sweep", "run_config", "apply_overrides", "scenario_dict", "map_tasks"]

#: shorthands accepted as grid keys, with the path they stand for
SHORTHANDS: dict[str, str] = {
    "policy": "gateway.policy",
    "rate_per_s": "workload.arrivals.rate_per_s",
}

_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def scenario_dict(scenario: Any) -> dict[str, Any]:
    """A scenario (object, YAML path or mapping) as a plain JSON-able dict, validated once."""
    from ..scenario import load_scenario

    return load_scenario(scenario).model_dump(mode="json")


def _parse_path(path: str) -> list[str | int]:
    """``"partners[0].clusters[1].replicas"`` -> ``["partners", 0, "clusters", 1, "replicas"]``."""
    parts: list[str | int] = []
    pos = 0
    for m in _TOKEN.finditer(path):
        gap = path[pos:m.start()]
        if gap not in ("", "."):
            raise ScenarioError(f"sweep path {path!r}: cannot parse near {gap!r}")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts or path[pos:] not in ("",):
        raise ScenarioError(f"sweep path {path!r}: cannot parse")
    return parts


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    parts = _parse_path(SHORTHANDS.get(path, path))
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(str(p) for p in parts[:i + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                raise ScenarioError(f"sweep path {path!r}: no item [{part}] at {where!r}")
        elif not isinstance(node, dict):
            raise ScenarioError(f"sweep path {path!r}: {where!r} is not a mapping")
        elif part not in node and not (last and parts[i - 1:i] == ["params"]):
            allowed = ", ".join(map(str, node)) if node else "nothing"
            raise ScenarioError(f"sweep path {path!r}: unknown key {part!r}; allowed here: {allowed}")
        if last:
            if path == "policy" and isinstance(value, str):
                value = {"name": value, "params": {}}
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the scenario dict with ``overrides`` (path -> value) applied; not yet validated.

    A cluster whose ``replicas`` changes keeps its GPUs per replica (``gpus`` scales with it),
    unless ``overrides`` sets that cluster's ``gpus`` too.
    """
    out = copy.deepcopy(dict(data))
    for path, value in overrides.items():
        _set(out, path, value)
    for path, value in overrides.items():
        parts = _parse_path(SHORTHANDS.get(path, path))
        if parts[-1] != "replicas" or len(parts) < 2:
            continue
        gpus_path = re.sub(r"replicas$", "gpus", path)
        if gpus_path in overrides:
            continue
        old = data
        for p in parts[:-1]:
            old = old[p]                                        # type: ignore[index]
        if not isinstance(old, Mapping) or "gpus" not in old:
            continue
        per_replica = float(old["gpus"]) / max(int(old["replicas"]), 1)
        tp = int(old.get("tensor_parallel", 1))
        _set(out, gpus_path, max(int(value) * tp, int(round(int(value) * per_replica))))
    return out


def _column_value(value: Any) -> Any:
    """Configuration values as frame cells: mappings and lists as sorted JSON, scalars unchanged."""
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def run_config(data: dict[str, Any], overrides: dict[str, Any], seed: int,
               requests: int | None = None, horizon_s: float | None = None,
               metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """One sweep task: apply ``overrides`` to the scenario dict, simulate with ``seed``, and return
    the ``ALL`` row of the summary as a dict (only ``metrics`` if given). Top-level and pure so
    any executor — local processes or Dask workers — can run it."""
    from ..scenario import load_scenario
    from ..sim import simulate

    scenario = load_scenario(apply_overrides(data, overrides))
    result = simulate(scenario, seed=int(seed), requests=requests, horizon_s=horizon_s, progress=False)
    summary = result.summary()
    columns = list(summary.columns)
    if metrics is not None:
        missing = [m for m in metrics if m not in columns]
        if missing:
            raise ScenarioError(f"unknown sweep metrics {missing}; summary columns: {columns}")
        columns = list(metrics)
    # column by column so that counts stay integers (a row Series would make them floats)
    values = {c: summary.at["ALL", c] for c in columns}
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}


def _default_executor(max_workers: int | None = None) -> ProcessPoolExecutor:
    """One worker per core; forkserver so that no thread of the caller (tqdm, Dask) is forked."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=max_workers or os.cpu_count() or 1,
                               mp_context=multiprocessing.get_context(method))


def _completed(futures: list[Any]) -> Iterable[Any]:
    """Futures as they finish, for the progress bar (stdlib or Dask); in order otherwise."""
    if not futures:
        return []
    mod = type(futures[0]).__module__
    if mod.startswith("concurrent.futures"):
        from concurrent.futures import as_completed
        return as_completed(futures)
    if mod.startswith("distributed"):
        from distributed import as_completed as dask_as_completed
        return dask_as_completed(futures)
    return futures


def map_tasks(fn: Any, arg_tuples: Sequence[tuple[Any, ...]], *, executor: Any = None,
              progress: bool | None = None, desc: str = "sweep") -> list[Any]:
    """Run ``fn(*args)`` for each tuple on ``executor`` (default: local processes) and return the
    results **in input order**. ``"inline"`` runs them in this process, one after another."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(arg_tuples), desc=desc, unit="run")
    try:
        if executor == "inline":
            out = []
            for args in arg_tuples:
                out.append(fn(*args))
                if bar is not None:
                    bar.update(1)
            return out
        own = executor is None
        ex = _default_executor() if own else executor
        try:
            futures = [ex.submit(fn, *args) for args in arg_tuples]
            for _ in _completed(futures):
                if bar is not None:
                    bar.update(1)
            return [f.result() for f in futures]
        finally:
            if own:
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()


def sweep(scenario: Any, grid: Mapping[str, Sequence[Any]] | None = None, seeds: Sequence[int] = (0,),
          executor: Executor | Any = None, progress: bool | None = None,
          metrics: Sequence[str] | None = None, *, requests: int | None = None,
          horizon_s: float | None = None) -> pd.DataFrame:
    """Simulate every combination of ``grid`` values with every seed; one row per run.

    Columns: ``config`` (index of the combination), one column per grid key (its value; mappings
    as JSON), ``seed``, then the summary's ``ALL`` row (or only ``metrics``). ``requests`` /
    ``horizon_s`` override the scenario's run length for every run. ``executor``: None for local
    processes, ``"inline"`` for this process, or any object with ``submit`` (e.g. a
    ``dask.distributed.Client``). ``progress``: None shows a bar only on a terminal.
    """
    grid = dict(grid or {})
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ScenarioError(f"sweep grid[{key!r}] must be a list of values, got {values!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ScenarioError("sweep needs at least one seed")
    data = scenario_dict(scenario)
    keys = list(grid)
    combos = list(itertools.product(*(list(grid[k]) for k in keys)))
    # validate every configuration here, before any task leaves the process: a typo fails fast
    from ..scenario import load_scenario
    for combo in combos:
        load_scenario(apply_overrides(data, dict(zip(keys, combo))))
    metrics_t = tuple(metrics) if metrics is not None else None
    tasks: list[tuple[Any, ...]] = []
    meta: list[dict[str, Any]] = []
    for i, combo in enumerate(combos):
        overrides = dict(zip(keys, combo))
        for seed in seeds:
            tasks.append((data, overrides, seed, requests, horizon_s, metrics_t))
            meta.append({"config": i, **{k: _column_value(v) for k, v in overrides.items()}, "seed": seed})
    rows = map_tasks(run_config, tasks, executor=executor, progress=progress, desc="sweep")
    frame = pd.DataFrame([{**m, **r} for m, r in zip(meta, rows)])
    frame["config"] = frame["config"].astype("int64")
    frame["seed"] = frame["seed"].astype("int64")
    return frame
