"""The command line: simulate writes a report, bad input is one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

import publicai_lab
from publicai_lab import validate_frame
from publicai_lab.cli import main
from conftest import ROOT, SCENARIOS_DIR

BAD_DIR = ROOT / "tests" / "bad_scenarios"


def test_public_api_is_curated():
    for name in publicai_lab.__all__:
        assert hasattr(publicai_lab, name), name
    assert {"load_scenario", "simulate", "policies", "SimResult", "validate_frame"} <= set(publicai_lab.__all__)


def test_simulate_writes_report_and_records(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", str(SCENARIOS_DIR / "toy.yaml"), "--out", str(out), "--requests", "150",
                 "--policy", "round_robin", "--seed", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "req/s" in printed
    for f in ("report.md", "latency_cdf.png", "routing_shares.png", "utilisation.png",
              "requests.parquet", "replicas.parquet", "backends.parquet", "run.json"):
        assert (out / f).exists(), f
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) == 150 and set(df["policy"]) == {"round_robin"}
    meta = json.loads((out / "run.json").read_text())
    assert meta["seed"] == 3
    text = (out / "report.md").read_text()
    assert "round_robin" in text and "| ALL |" in text


def test_report_rebuilds_from_a_run_dir(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", str(SCENARIOS_DIR / "toy.yaml"), "--out", str(out), "--quiet"]) == 0
    again = tmp_path / "again"
    assert main(["report", str(out), "--out", str(again)]) == 0
    assert (again / "report.md").read_text() == (out / "report.md").read_text()


def test_horizon_flag(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", str(SCENARIOS_DIR / "toy.yaml"), "--out", str(out), "--horizon-s", "2",
                 "--quiet"]) == 0
    from publicai_lab.analysis import read_requests
    df = validate_frame(read_requests(out / "requests.parquet"))
    assert df["arrival_s"].max() <= 2.0


def test_schema_prints_json(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "partners" in schema["properties"] and "workload" in schema["properties"]


@pytest.mark.parametrize("bad", sorted(BAD_DIR.glob("*.yaml"))[:14], ids=lambda p: p.stem)
def test_bad_scenario_is_one_line_and_exit_2(bad, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "publicai_lab.cli", "simulate", str(bad), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert bad.name in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_unknown_policy_is_one_line(capsys):
    assert main(["simulate", str(SCENARIOS_DIR / "toy.yaml"), "--out", "/tmp/never", "--policy", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "weighted_shuffle" in err[0]


def test_help_explains_commands():
    proc = subprocess.run([sys.executable, "-m", "publicai_lab.cli", "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0
    for cmd in ("simulate", "report", "schema", "policies", "validate"):
        assert cmd in proc.stdout
