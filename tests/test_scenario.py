"""Scenario loading, normalisation, round trips, and one-line errors for malformed files.

Every file in tests/bad_scenarios/ is a complete scenario with exactly one defect; its first
line says what the error must contain: ``# expect: <field path>: got <value repr>``.
"""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path

import pytest

from publicai_lab import _data
from publicai_lab.errors import ScenarioError
from publicai_lab.scenario import (
    DEFAULT_DIURNAL_CURVE,
    DiurnalArrivals,
    PerfCoefficients,
    Scenario,
    dump_scenario,
    load_scenario,
    scenario_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
BAD = Path(__file__).resolve().parent / "bad_scenarios"
SHIPPED = ["publicai-2025", "toy", "swiss-singapore"]
BAD_FILES = sorted(BAD.glob("*.yaml"))

APERTUS_8B = "swiss-ai/Apertus-8B-Instruct-2509"
APERTUS_70B = "swiss-ai/Apertus-70B-Instruct-2509"
QWEN_SL = "aisingapore/Qwen-SEA-LION-v4-32B-IT"
GEMMA_SL = "aisingapore/Gemma-SEA-LION-v4-27B-IT"
OLMO = "allenai/Olmo-3-7B-Instruct"


def _policies_available() -> bool:
    try:
        module = importlib.import_module("publicai_lab.policies")
    except ImportError:
        return False
    return hasattr(module, "available")


def _minimal() -> dict:
    """A small valid scenario as a dict."""
    return {
        "name": "mini",
        "requests": 10,
        "models": {APERTUS_8B: {"spec": "apertus-8b", "aliases": ["swiss-ai/apertus-8b-instruct"]}},
        "partners": [{"name": "p", "country": "ch", "clusters": [
            {"name": "c", "region": "ch", "hardware": "H100-SXM", "gpus": 2, "replicas": 2,
             "model": "swiss-ai/apertus-8b-instruct"}]}],
        "workload": {
            "arrivals": {"kind": "poisson", "rate_per_s": 1.0},
            "prompt_tokens": {"kind": "fixed", "value": 100},
            "output_tokens": {"kind": "fixed", "value": 10},
            "models": {"swiss-ai/apertus-8b-instruct": 1.0},
        },
    }


# --------------------------------------------------------------------------------------------
# shipped scenarios


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_loads_and_is_normalised(name: str) -> None:
    s = load_scenario(SCENARIOS / f"{name}.yaml")
    assert s.name == name
    assert s.source == str(SCENARIOS / f"{name}.yaml")
    assert s.horizon_s is not None or s.requests is not None
    for key, spec in s.models.items():
        assert spec.geometry is not None, key
    for partner, cluster in s.clusters():
        assert cluster.model in s.models  # canonical keys after loading
        assert cluster.hardware in s.hardware
        assert s.hardware_of(cluster).bf16_tflops > 0
        assert cluster.gpus >= cluster.replicas * cluster.tensor_parallel
        assert s.backend_id(partner, cluster) == f"{partner.name}/{cluster.name}"
        assert s.backend(s.backend_id(partner, cluster)) == (partner, cluster)
    assert set(s.workload.models) <= set(s.models)
    for src, targets in s.gateway.model_fallbacks.items():
        assert src in s.models and set(targets) <= set(s.models)
    if _policies_available():
        from publicai_lab.policies import available
        assert s.gateway.policy.name in set(available())


@pytest.mark.parametrize("name", SHIPPED)
def test_dump_then_load_round_trips(name: str, tmp_path: Path) -> None:
    s = load_scenario(SCENARIOS / f"{name}.yaml")
    out = dump_scenario(s, tmp_path / "sub" / f"{name}.yaml")
    again = load_scenario(out)
    assert again == s
    assert again.source == str(out)
    assert again.model_dump() == s.model_dump()


def test_publicai_2025_encodes_the_public_facts() -> None:
    s = load_scenario(SCENARIOS / "publicai-2025.yaml")
    assert (s.seed, s.requests) == (42, 20000)
    gw = s.gateway
    assert gw.policy.name == "weighted_shuffle"
    assert (gw.num_retries, gw.allowed_fails, gw.cooldown_s) == (3, 1, 60)
    assert gw.model_fallbacks[APERTUS_70B] == [QWEN_SL]
    assert gw.model_fallbacks[APERTUS_8B] == [OLMO]
    assert gw.model_fallbacks[GEMMA_SL] == [APERTUS_70B]
    assert gw.model_fallbacks[QWEN_SL] == [APERTUS_70B]
    prices = {k: (m.price_in_per_mtok_usd, m.price_out_per_mtok_usd) for k, m in s.models.items()}
    assert prices[APERTUS_8B] == (0.10, 0.20)
    assert prices[APERTUS_70B] == (0.82, 2.92)
    assert prices[GEMMA_SL] == (0.20, 0.40)
    assert prices[QWEN_SL] == (0.25, 0.50)
    assert prices[OLMO] == (0.10, 0.20)
    tiers = s.workload.tiers
    assert {n: t.rpm for n, t in tiers.items()} == {"free": 100, "plus": 200, "pro": 300, "enterprise": 10000}
    assert set(s.workload.channels) == {"direct", "huggingface"}
    assert s.workload.arrivals.kind == "diurnal"
    assert 10 <= s.workload.arrivals.rate_per_s <= 30
    by_partner: dict[str, list] = {}
    for partner, cluster in s.clusters():
        by_partner.setdefault(partner.name, []).append(cluster)
        assert cluster.perf_model is None
        assert cluster.engine.max_num_seqs == 256 and cluster.engine.max_num_batched_tokens == 8192
    assert all(c.weight == 20 for c in by_partner["cscs"] if c.model.startswith("swiss-ai/Apertus"))
    assert [(c.model, c.weight) for c in by_partner["infomaniak"]] == [(APERTUS_70B, 1)]
    assert all(c.weight == 20 and s.hardware_of(c).kind == "cpu" for c in by_partner["intel"])
    aws = by_partner["aws"]
    assert [(c.hardware, c.gpus, c.replicas, c.tensor_parallel, c.model) for c in aws] == [
        ("A100-80G", 24, 3, 8, APERTUS_70B)]
    countries = {p.country for p in s.partners}
    assert {"CH", "SG", "AU", "PL", "AT"} <= countries
    assert 10 <= len(s.clusters()) <= 20
    assert sum(c.replicas for _, c in s.clusters()) < 60
    regions = set(s.workload.client_regions)
    assert len(regions) >= 4
    for client in regions:  # every client region has an RTT to every cluster region
        assert set(s.network.rtt_ms[client]) == {c.region for _, c in s.clusters()}


def test_publicai_2025_marks_assumptions() -> None:
    text = (SCENARIOS / "publicai-2025.yaml").read_text()
    assert text.count("# assumption") >= 40


def test_swiss_singapore_residency_and_time_zones() -> None:
    s = load_scenario(SCENARIOS / "swiss-singapore.yaml")
    regions = s.workload.client_regions
    assert [r.residency for r in regions.values()] == [["CH"], []]
    assert sorted(r.utc_offset_h for r in regions.values()) == [1, 8]
    assert s.gateway.policy.name == "nearest_region"
    assert {p.country for p in s.partners} == {"CH", "SG"}


def test_toy_is_small_with_an_inline_perf_model() -> None:
    s = load_scenario(SCENARIOS / "toy.yaml")
    [(partner, cluster)] = s.clusters()
    assert cluster.replicas == 2
    assert isinstance(cluster.perf_model, PerfCoefficients)
    assert cluster.perf_model.c0_s == pytest.approx(0.0025)
    assert s.requests is not None and s.requests <= 1000
    assert s.gateway.policy.name == "least_in_flight"
    assert s.hardware["dev-cpu"].kind == "cpu"  # the scenario's own hardware entry


# --------------------------------------------------------------------------------------------
# models, aliases, geometry


def test_aliases_resolve_to_canonical_keys() -> None:
    s = load_scenario(SCENARIOS / "publicai-2025.yaml")
    assert s.resolve_model("swiss-ai/apertus-8b-instruct") == APERTUS_8B
    assert s.resolve_model("swiss-ai/apertus-70b-instruct") == APERTUS_70B
    assert s.resolve_model(APERTUS_70B) == APERTUS_70B
    assert s.resolve_model("SWISS-AI/APERTUS-8B-INSTRUCT-2509") == APERTUS_8B
    with pytest.raises(ScenarioError) as info:
        s.resolve_model("gpt-5")
    assert "model: got 'gpt-5'; unknown model" in str(info.value)
    assert "\n" not in str(info.value)


def test_alias_references_are_canonicalised_everywhere() -> None:
    d = _minimal()
    d["models"]["allenai/Olmo-3-7B-Instruct"] = {"spec": "olmo-3-7b", "aliases": ["olmo"]}
    d["gateway"] = {"model_fallbacks": {"swiss-ai/apertus-8b-instruct": ["olmo"]}}
    s = load_scenario(d)
    assert s.partners[0].clusters[0].model == APERTUS_8B
    assert s.workload.models == {APERTUS_8B: 1.0}
    assert s.gateway.model_fallbacks == {APERTUS_8B: [OLMO]}


def test_duplicate_alias_is_rejected() -> None:
    d = _minimal()
    d["models"][OLMO] = {"spec": "olmo-3-7b", "aliases": ["swiss-ai/apertus-8b-instruct"]}
    with pytest.raises(ScenarioError, match=r"models\[\"allenai/Olmo-3-7B-Instruct\"\]\.aliases\[0\]"):
        load_scenario(d)


def test_geometry_from_spec_and_its_properties() -> None:
    s = load_scenario(_minimal())
    g = s.geometry_of("swiss-ai/apertus-8b-instruct")
    assert (g.layers, g.hidden_size, g.attention_heads, g.kv_heads, g.head_dim) == (32, 4096, 32, 8, 128)
    assert g.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert 15e9 < g.weights_bytes < 17e9


def test_inline_geometry_without_spec() -> None:
    d = _minimal()
    d["models"][APERTUS_8B] = {"geometry": {
        "params_b": 1.0, "layers": 4, "hidden_size": 256, "attention_heads": 4, "kv_heads": 2,
        "head_dim": 64, "max_context_tokens": 4096}}
    d["partners"][0]["clusters"][0]["model"] = APERTUS_8B
    d["workload"]["models"] = {APERTUS_8B: 1.0}
    s = load_scenario(d)
    assert s.models[APERTUS_8B].geometry is not None
    assert s.models[APERTUS_8B].geometry.kv_heads == 2


def test_every_bundled_model_spec_is_valid() -> None:
    from publicai_lab.scenario import ModelGeometry
    specs = _data.model_specs()
    for name in ["apertus-8b", "apertus-70b", "qwen-sea-lion-v4-32b", "gemma-sea-lion-v4-27b",
                 "olmo-3-7b", "llama-3.1-8b", "tiny-llama"]:
        assert name in specs
        ModelGeometry.model_validate(specs[name]["geometry"])
    assert specs["apertus-70b"]["geometry"]["layers"] == 80
    tiny = specs["tiny-llama"]["geometry"]
    assert (tiny["hidden_size"], tiny["attention_heads"], tiny["kv_heads"], tiny["head_dim"]) == (128, 2, 1, 64)


def test_the_locally_built_models_are_described_as_built() -> None:
    """data/models.yaml's tiny-llama and small-llama say what live/tiny_model.py builds."""
    from publicai_lab.live.tiny_model import GEOMETRIES, SERVED_MODEL_NAMES
    specs = _data.model_specs()
    for size, built in GEOMETRIES.items():
        spec = specs[f"{size}-llama"]
        assert spec["hub_id"] == SERVED_MODEL_NAMES[size]
        g = spec["geometry"]
        assert (g["layers"], g["hidden_size"], g["attention_heads"], g["kv_heads"], g["head_dim"],
                g["vocab_size"], g["max_context_tokens"]) == (
            built["num_hidden_layers"], built["hidden_size"], built["num_attention_heads"],
            built["num_key_value_heads"], built["head_dim"], built["vocab_size"], built["max_position_embeddings"])
        h, f, layers = built["hidden_size"], built["intermediate_size"], built["num_hidden_layers"]
        kv = built["num_key_value_heads"] * built["head_dim"]
        params = layers * (2 * h * h + 2 * h * kv + 3 * h * f) + built["vocab_size"] * h
        assert abs(g["params_b"] * 1e9 - params) / params < 0.25, (size, params)


def test_every_bundled_hardware_spec_is_valid() -> None:
    from publicai_lab.scenario import HardwareSpec
    hw = {k: HardwareSpec.model_validate(v) for k, v in _data.hardware_specs().items()}
    assert (hw["H100-SXM"].bf16_tflops, hw["H100-SXM"].hbm_tb_s, hw["H100-SXM"].memory_gib) == (989, 3.35, 80)
    assert (hw["A100-80G"].bf16_tflops, hw["A100-80G"].hbm_tb_s, hw["A100-80G"].memory_gib) == (312, 2.0, 80)
    assert (hw["GH200"].bf16_tflops, hw["GH200"].hbm_tb_s, hw["GH200"].memory_gib) == (989, 4.0, 96)
    assert {"L40S", "MI300X"} <= set(hw)
    assert any(h.kind == "cpu" for h in hw.values())


def test_scenario_hardware_overrides_the_data_file() -> None:
    d = _minimal()
    d["hardware"] = {"H100-SXM": {"bf16_tflops": 1.0, "hbm_tb_s": 1.0, "memory_gib": 1.0}}
    s = load_scenario(d)
    assert s.hardware["H100-SXM"].bf16_tflops == 1.0


def test_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert (_data.DATA_DIR / "models.yaml").is_file()
    monkeypatch.setenv("PUBLICAI_LAB_DATA", str(tmp_path))
    assert _data.data_dir() == tmp_path
    assert _data.model_specs() == {}


# --------------------------------------------------------------------------------------------
# API: overrides, schema, dicts, perf models, traces


def test_with_overrides_copies_and_validates() -> None:
    s = load_scenario(SCENARIOS / "toy.yaml")
    t = s.with_overrides(seed=3, requests=50, horizon_s=10.0, policy="round_robin", rate_per_s=5.0)
    assert (t.seed, t.requests, t.horizon_s, t.gateway.policy.name) == (3, 50, 10.0, "round_robin")
    assert t.workload.arrivals.rate_per_s == 5.0
    assert t.source == s.source
    assert (s.seed, s.requests, s.gateway.policy.name) == (7, 300, "least_in_flight")
    assert s.with_overrides() == s
    with pytest.raises(ScenarioError, match=r"requests: got 0; must be an integer >= 1"):
        s.with_overrides(requests=0)
    with pytest.raises(ScenarioError, match="unknown override"):
        s.with_overrides(speed=2)


def test_json_schema_is_a_dict_with_properties() -> None:
    schema = scenario_json_schema()
    assert isinstance(schema, dict)
    assert {"partners", "models", "workload", "gateway"} <= set(schema["properties"])
    assert "Cluster" in schema["$defs"]
    assert schema["$defs"]["Cluster"]["properties"]["gpus"]["description"]


def test_dict_source_has_no_file_and_errors_have_no_prefix() -> None:
    s = load_scenario(_minimal())
    assert s.source is None
    assert s.partners[0].country == "CH"  # upper-cased
    d = _minimal()
    d["partners"][0]["clusters"][0]["replicas"] = 0
    with pytest.raises(ScenarioError) as info:
        load_scenario(d)
    assert str(info.value) == "partners[0].clusters[0].replicas: got 0; must be an integer >= 1"
    assert info.value.field == "partners[0].clusters[0].replicas" and info.value.value == 0


def test_named_perf_model_file_is_accepted() -> None:
    names = sorted(p.stem for p in (_data.data_dir() / "perf_models").glob("*.json"))
    if not names:
        pytest.skip("no perf model files in data/perf_models yet")
    d = _minimal()
    d["partners"][0]["clusters"][0]["perf_model"] = names[0]
    assert load_scenario(d).partners[0].clusters[0].perf_model == names[0]


def test_trace_paths_resolve_against_the_file_and_survive_a_dump(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    trace = tmp_path / "traces" / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,20,6\n")
    d = _minimal()
    d["workload"]["arrivals"] = {"kind": "trace", "path": "traces/t.csv", "format": "csv"}
    d["workload"]["prompt_tokens"] = {"kind": "trace"}
    d["workload"]["output_tokens"] = {"kind": "trace", "max": 100}
    import yaml
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    s = load_scenario(tmp_path / "s.yaml")
    assert Path(s.workload.arrivals.path) == trace.resolve()
    out = dump_scenario(s, tmp_path / "elsewhere" / "copy.yaml")
    assert "../traces/t.csv" in out.read_text()
    assert load_scenario(out) == s


def test_trace_lengths_need_trace_arrivals_or_a_path() -> None:
    d = _minimal()
    d["workload"]["prompt_tokens"] = {"kind": "trace"}
    with pytest.raises(ScenarioError, match=r"workload\.prompt_tokens\.path: got None"):
        load_scenario(d)


def test_diurnal_multiplier_averages_one_and_shifts_with_the_offset() -> None:
    arrivals = DiurnalArrivals(kind="diurnal", rate_per_s=1.0)
    assert list(arrivals.curve) == list(DEFAULT_DIURNAL_CURVE)
    samples = [arrivals.multiplier(t) for t in range(0, 86400, 60)]
    assert math.isclose(sum(samples) / len(samples), 1.0, rel_tol=1e-3)
    assert arrivals.multiplier(3600 * 2, utc_offset_h=8) == pytest.approx(arrivals.multiplier(3600 * 10))
    assert arrivals.multiplier(3600 * 11) > 1.5 > 0.3 > arrivals.multiplier(3600 * 3)


def test_scenario_equality_ignores_source_but_not_fields() -> None:
    a = load_scenario(SCENARIOS / "toy.yaml")
    b = load_scenario(a.model_dump())
    assert a == b and a.source != b.source
    assert a != a.with_overrides(seed=8)
    assert a != "toy"


# --------------------------------------------------------------------------------------------
# malformed files


def test_there_are_enough_bad_scenarios() -> None:
    assert len(BAD_FILES) >= 14


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_scenario_raises_one_line_error(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <path>: got <value>'"
    expected = first[len("# expect: "):].strip()
    if path.stem == "policy_unknown" and not _policies_available():
        pytest.skip("publicai_lab.policies is not importable yet: policy names are not checked")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    assert expected in message, f"{message!r} lacks {expected!r}"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(missing)
    message = str(info.value)
    assert message.startswith(f"{missing}: <file>: got ")
    assert message.endswith("no such file") and "\n" not in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ScenarioError, match=r"list\.yaml: <root>: got \[1, 2\]; must be a mapping"):
        load_scenario(f)
    f.write_text("")
    with pytest.raises(ScenarioError, match=r"<root>: got None"):
        load_scenario(f)


def test_first_error_wins_and_input_is_not_mutated() -> None:
    d = _minimal()
    d["partners"][0]["clusters"][0]["gpus"] = -1
    d["workload"]["arrivals"]["rate_per_s"] = -1
    before = copy.deepcopy(d)
    with pytest.raises(ScenarioError, match=r"^partners\[0\]\.clusters\[0\]\.gpus: got -1"):
        load_scenario(d)
    assert d == before


def test_scenario_is_constructible_directly() -> None:
    s = Scenario.model_validate(_minimal())
    assert s.partners[0].clusters[0].model == APERTUS_8B
