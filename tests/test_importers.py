"""import-litellm: a LiteLLM proxy config becomes a scenario that validates and simulates.

The Public-AI-like config (three deployments of Apertus-70B with weights 20/20/1, simple-shuffle,
retries 3, allowed fails 1, cooldown 60) is the acceptance case of issue 4; the rest pins the
mapping of LiteLLM's settings and the one-line errors for malformed configs.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import publicai_lab as pl
from publicai_lab.errors import ScenarioError
from publicai_lab.importers import ROUTING_STRATEGIES, add_cli, import_litellm, write_scenario_yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "data" / "litellm" / "publicai-like.yaml"


def _config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: Any, name: str = "litellm.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_publicai_like_config_imports_and_validates() -> None:
    scenario = pl.load_scenario(import_litellm(CONFIG))
    clusters = scenario.clusters()
    assert [p.name for p, _ in clusters] == ["cscs-alps", "aws-zurich", "infomaniak"]
    assert [c.weight for _, c in clusters] == [20.0, 20.0, 1.0]
    assert [c.base_url for _, c in clusters] == [
        "https://cscs.publicai.example/v1", "https://aws-zurich.publicai.example/v1",
        "https://infomaniak.publicai.example/v1"]
    assert {c.model for _, c in clusters} == {"swiss-ai/apertus-70b-instruct"}
    assert scenario.models["swiss-ai/apertus-70b-instruct"].spec == "apertus-70b"
    assert scenario.resolve_model("swiss-ai/Apertus-70B-Instruct-2509") == "swiss-ai/apertus-70b-instruct"
    gw = scenario.gateway
    assert (gw.policy.name, gw.num_retries, gw.allowed_fails, gw.cooldown_s, gw.timeout_s) == (
        "weighted_shuffle", 3, 1, 60.0, 600.0)
    for _, c in clusters:  # the placeholder hardware must hold the 70B weights
        assert c.gpus >= c.replicas * c.tensor_parallel and c.tensor_parallel >= 2


def test_publicai_like_config_simulates_with_litellm_shares() -> None:
    scenario = pl.load_scenario(import_litellm(CONFIG))
    result = pl.simulate(scenario, requests=500, progress=False)
    reqs = result.requests
    assert len(reqs) == 500
    assert (reqs["status"] == "ok").mean() > 0.99
    shares = reqs["backend_id"].astype("object").value_counts(normalize=True)
    expected = {"cscs-alps/apertus-70b-instruct": 20 / 41, "aws-zurich/apertus-70b-instruct": 20 / 41,
                "infomaniak/apertus-70b-instruct": 1 / 41}
    for backend, share in expected.items():
        assert shares.get(backend, 0.0) == pytest.approx(share, abs=0.06), (backend, dict(shares))
    assert shares.get("infomaniak/apertus-70b-instruct", 0.0) < 0.06


def test_written_yaml_reads_back_and_marks_placeholders(tmp_path: Path) -> None:
    skeleton = import_litellm(CONFIG)
    out = write_scenario_yaml(skeleton, tmp_path / "imported.yaml")
    assert pl.load_scenario(out) == pl.load_scenario(skeleton)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Scenario skeleton imported from")
    for field in ("hardware", "gpus", "region", "country", "rate_per_s"):
        lines = [line for line in text.splitlines() if line.strip().lstrip("- ").startswith(f"{field}:")]
        assert lines and all("# TODO" in line for line in lines), field
    assert "# litellm_params.api_base" in text and "# router_settings.cooldown_time" in text


def test_plain_dict_writes_without_comments(tmp_path: Path) -> None:
    data = dict(import_litellm(_config()))
    out = write_scenario_yaml(data, tmp_path / "plain.yaml")
    assert "#" not in out.read_text(encoding="utf-8")
    assert pl.load_scenario(out) == pl.load_scenario(data)


@pytest.mark.parametrize("strategy", sorted(ROUTING_STRATEGIES))
def test_routing_strategies_map_to_policies(strategy: str) -> None:
    cfg = _config()
    cfg["router_settings"]["routing_strategy"] = strategy
    scenario = pl.load_scenario(import_litellm(cfg))
    assert scenario.gateway.policy.name == ROUTING_STRATEGIES[strategy][0]


def test_settings_fallbacks_and_defaults() -> None:
    cfg = _config()
    extra = copy.deepcopy(cfg["model_list"][0])
    extra["model_name"] = "swiss-ai/apertus-8b-instruct"
    extra["litellm_params"]["model"] = "openai/swiss-ai/Apertus-8B-Instruct-2509"
    extra["model_info"]["id"] = "cscs-alps"           # a second deployment on the same partner id
    cfg["model_list"].append(extra)
    del cfg["router_settings"]
    cfg["litellm_settings"].update(num_retries=1, cooldown_time=30,
                                   fallbacks=[{"swiss-ai/apertus-70b-instruct": ["swiss-ai/apertus-8b-instruct"]}])
    scenario = pl.load_scenario(import_litellm(cfg))
    gw = scenario.gateway
    assert gw.policy.name == "weighted_shuffle"       # LiteLLM's default strategy
    assert (gw.num_retries, gw.cooldown_s, gw.timeout_s) == (1, 30.0, 600.0)
    assert gw.allowed_fails == 3                      # LiteLLM's default when unset
    assert gw.model_fallbacks == {"swiss-ai/apertus-70b-instruct": ["swiss-ai/apertus-8b-instruct"]}
    assert [p.name for p in scenario.partners][-1] == "cscs-alps-2"
    assert scenario.models["swiss-ai/apertus-8b-instruct"].spec == "apertus-8b"
    assert scenario.partners[-1].clusters[0].tensor_parallel == 1


def test_litellm_defaults_when_nothing_is_set() -> None:
    cfg = _config()
    del cfg["router_settings"], cfg["litellm_settings"]
    gw = pl.load_scenario(import_litellm(cfg)).gateway
    assert (gw.policy.name, gw.num_retries, gw.allowed_fails, gw.cooldown_s, gw.timeout_s) == (
        "weighted_shuffle", 2, 3, 5.0, 6000.0)


def test_rpm_is_the_weight_when_no_deployment_has_one() -> None:
    cfg = _config()
    for k, entry in enumerate(cfg["model_list"]):
        entry["litellm_params"].pop("weight")
        entry["litellm_params"]["rpm"] = [100, 300, 600][k]
    scenario = pl.load_scenario(import_litellm(cfg))
    assert [c.weight for _, c in scenario.clusters()] == [100.0, 300.0, 600.0]


def test_model_spec_and_hardware_overrides() -> None:
    scenario = pl.load_scenario(import_litellm(CONFIG, model_spec="apertus-8b", hardware="A100-80G"))
    assert scenario.models["swiss-ai/apertus-70b-instruct"].spec == "apertus-8b"
    assert {c.hardware for _, c in scenario.clusters()} == {"A100-80G"}


def test_unknown_model_gets_placeholder_spec_marked_todo() -> None:
    cfg = _config()
    for entry in cfg["model_list"]:
        entry["model_name"] = "acme/secret-model"
        entry["litellm_params"]["model"] = "openai/acme/secret-model"
    skeleton = import_litellm(cfg)
    pl.load_scenario(skeleton)
    assert "TODO" in skeleton.comments["models.acme/secret-model.spec"]


def _broken(mutate: Any) -> dict[str, Any]:
    cfg = _config()
    mutate(cfg)
    return cfg


BAD_CONFIGS = {
    "model_list": lambda c: c.pop("model_list"),
    "model_list[1].litellm_params.model": lambda c: c["model_list"][1]["litellm_params"].pop("model"),
    "model_list[0].model_name": lambda c: c["model_list"][0].update(model_name=""),
    "model_list[2].litellm_params.weight": lambda c: c["model_list"][2]["litellm_params"].update(weight=-1),
    "model_list[0].litellm_params.rpm": lambda c: c["model_list"][0]["litellm_params"].update(rpm="lots"),
    "router_settings.routing_strategy": lambda c: c["router_settings"].update(routing_strategy="telepathy"),
    "router_settings.num_retries": lambda c: c["router_settings"].update(num_retries=1.5),
    "router_settings.cooldown_time": lambda c: c["router_settings"].update(cooldown_time=-60),
    "litellm_settings.fallbacks[0].swiss-ai/apertus-70b-instruct":
        lambda c: c["litellm_settings"].update(fallbacks=[{"swiss-ai/apertus-70b-instruct": ["nope"]}]),
}


@pytest.mark.parametrize("field", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_file_and_field(tmp_path: Path, field: str) -> None:
    path = _write(tmp_path, _broken(BAD_CONFIGS[field]))
    with pytest.raises(ScenarioError) as info:
        import_litellm(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: got "), message
    assert info.value.field == field


def test_unreadable_files_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        import_litellm(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: [\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: line"):
        import_litellm(bad)
    with pytest.raises(ScenarioError, match="--hardware"):
        import_litellm(CONFIG, hardware="abacus")


def test_cli_writes_a_valid_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "scenario.yaml"
    args = parser.parse_args(["import-litellm", str(CONFIG), "--out", str(out), "--hardware", "A100-80G"])
    assert args.func(args) == 0
    assert "3 deployments" in capsys.readouterr().out
    scenario = pl.load_scenario(out)
    assert {c.hardware for _, c in scenario.clusters()} == {"A100-80G"}
