"""sweep(): grid paths, row order, and identical frames on every executor (local processes, Dask)."""

from __future__ import annotations

import pandas as pd
import pytest

from publicai_lab.analysis.sweep import apply_overrides, scenario_dict, sweep
from publicai_lab.errors import ScenarioError
from scenario_factory import two_partners

pytestmark = pytest.mark.usefixtures("cpu_alone")    # process pools: one such module at a time

GRID = {"policy": ["round_robin", "least_in_flight"], "workload.arrivals.rate_per_s": [20.0, 60.0]}
SEEDS = [1, 2, 3]


@pytest.fixture(scope="module")
def scenario() -> dict:
    return two_partners(requests=150)


def test_apply_overrides_paths_and_gpus_follow_replicas(scenario: dict) -> None:
    data = scenario_dict(scenario)
    out = apply_overrides(data, {"gateway.policy.name": "least_kv", "rate_per_s": 7.0,
                                 "partners[1].clusters[0].replicas": 3, "requests": 10,
                                 "gateway.policy.params.alpha": 1})
    assert out["gateway"]["policy"] == {"name": "least_kv", "params": {"alpha": 1}}
    assert out["workload"]["arrivals"]["rate_per_s"] == 7.0
    assert out["partners"][1]["clusters"][0]["replicas"] == 3
    assert out["partners"][1]["clusters"][0]["gpus"] == 3          # GPUs per replica kept
    assert out["requests"] == 10
    assert data["partners"][1]["clusters"][0]["replicas"] == 1      # the input is not modified
    assert apply_overrides(data, {"policy": "round_robin"})["gateway"]["policy"]["name"] == "round_robin"
    with pytest.raises(ScenarioError, match="unknown key 'polcy'"):
        apply_overrides(data, {"gateway.polcy.name": "x"})
    with pytest.raises(ScenarioError, match=r"no item \[5\]"):
        apply_overrides(data, {"partners[5].clusters[0].replicas": 2})


def test_sweep_rows_in_grid_order_and_inline_runs(scenario: dict) -> None:
    df = sweep(scenario, {"policy": ["round_robin"], "rate_per_s": [10.0, 30.0]}, seeds=[4, 5],
               executor="inline", progress=False, metrics=["requests", "ok", "e2e_p50_s"])
    assert list(df.columns) == ["config", "policy", "rate_per_s", "seed", "requests", "ok", "e2e_p50_s"]
    assert df["config"].tolist() == [0, 0, 1, 1] and df["seed"].tolist() == [4, 5, 4, 5]
    assert df["rate_per_s"].tolist() == [10.0, 10.0, 30.0, 30.0]
    assert df["requests"].dtype == "int64" and (df["requests"] == 150).all()
    with pytest.raises(ScenarioError):
        sweep(scenario, {"policy": ["no_such_policy"]}, seeds=[1], executor="inline", progress=False)


def test_sweep_same_frame_local_processes_and_dask(scenario: dict) -> None:
    distributed = pytest.importorskip("distributed")
    local = sweep(scenario, GRID, seeds=SEEDS, progress=False)              # ProcessPoolExecutor
    assert len(local) == 12
    assert local["config"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert local["seed"].tolist() == SEEDS * 4
    # the four configurations really differ, and seeds differ within one
    assert local.groupby("config")["e2e_p50_s"].mean().nunique() == 4
    assert local[local["config"] == 0]["e2e_p50_s"].nunique() == 3
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        on_dask = sweep(scenario, GRID, seeds=SEEDS, executor=client, progress=False)
    pd.testing.assert_frame_equal(local, on_dask)
