"""Bring an existing deployment in: a LiteLLM proxy config becomes a scenario skeleton.

Public AI's production gateway is a LiteLLM proxy. Its ``config.yaml`` already says which
deployments serve which model (``model_list``: ``model_name``, ``litellm_params.model`` /
``api_base`` / ``weight`` / ``rpm``) and how the router behaves (``router_settings`` and
``litellm_settings``: ``routing_strategy``, ``num_retries``, ``allowed_fails``, ``cooldown_time``,
``fallbacks``, ``timeout``). :func:`import_litellm` turns exactly that into a scenario dict that
:func:`publicai_lab.load_scenario` accepts, so an operator starts from their real routing instead
of retyping it.

What LiteLLM does not know — the hardware behind an endpoint, how many GPUs, where it runs, the
workload — gets an explicit default, and :func:`write_scenario_yaml` marks every such line with a
``# TODO`` comment so nobody mistakes a placeholder for a fact.

Mapping (LiteLLM -> scenario):

* one ``model_list`` entry (a deployment) -> one partner with one cluster; ``api_base`` ->
  ``base_url``; ``weight`` -> ``weight`` (as in LiteLLM's simple-shuffle, a model group without any
  ``weight`` falls back to ``rpm``, then ``tpm``, as the weights);
* ``model_name`` (what clients ask for) -> a key of ``models``; the provider-stripped
  ``litellm_params.model`` ids become its aliases; the geometry comes from the ``data/models.yaml``
  spec whose hub id or name matches (or ``--model-spec``);
* ``routing_strategy`` -> ``gateway.policy`` (see :data:`ROUTING_STRATEGIES`);
  ``num_retries``, ``allowed_fails``, ``cooldown_time`` -> ``cooldown_s``, ``timeout`` /
  ``request_timeout`` -> ``timeout_s``, ``fallbacks`` -> ``model_fallbacks``;
  ``router_settings`` wins over ``litellm_settings`` when both set a value (the Router reads
  ``router_settings``).

Not modelled: per-deployment ``rpm``/``tpm`` limits (recorded in the description),
``context_window_fallbacks``, ``content_policy_fallbacks``, API keys.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from publicai_lab import _data
from publicai_lab.errors import ScenarioError

__all__ = ["import_litellm", "write_scenario_yaml", "add_cli", "ScenarioSkeleton", "ROUTING_STRATEGIES",
           "DEFAULT_HARDWARE"]

#: LiteLLM ``routing_strategy`` -> (publicai_lab policy, why this is the closest match).
ROUTING_STRATEGIES: dict[str, tuple[str, str]] = {
    "simple-shuffle": ("weighted_shuffle", "LiteLLM simple-shuffle: weighted random choice (exact match)"),
    "shuffle": ("weighted_shuffle", "LiteLLM simple-shuffle: weighted random choice (exact match)"),
    "least-busy": ("least_in_flight", "LiteLLM least-busy counts in-flight requests per deployment (same idea)"),
    "latency-based-routing": ("latency_ewma", "LiteLLM latency-based-routing: lowest recent latency "
                              "(ours is an EWMA of observed latency)"),
    "usage-based-routing": ("least_in_flight", "LiteLLM usage-based-routing picks the deployment with the "
                            "lowest TPM/RPM use this minute; approximated by fewest in-flight requests"),
    "usage-based-routing-v2": ("least_in_flight", "LiteLLM usage-based-routing-v2 (TPM/RPM use, Redis); "
                               "approximated by fewest in-flight requests"),
    "cost-based-routing": ("cost_aware", "LiteLLM cost-based-routing: cheapest deployment first"),
}

#: Accelerator assumed behind every endpoint unless ``--hardware`` says otherwise.
DEFAULT_HARDWARE = "H100-SXM"
DEFAULT_MODEL_SPEC = "llama-3.1-8b"
DEFAULT_COUNTRY = "CH"
DEFAULT_REGION = "default"
DEFAULT_RATE_PER_S = 2.0
DEFAULT_REQUESTS = 1000

#: Leading path segments of ``litellm_params.model`` that name a LiteLLM provider, not the model.
_PROVIDERS = frozenset(
    "openai hosted_vllm vllm huggingface together_ai azure azure_ai bedrock anthropic fireworks_ai groq "
    "ollama ollama_chat deepinfra openrouter text-completion-openai custom_openai litellm_proxy sagemaker "
    "vertex_ai nvidia_nim mistral cohere replicate anyscale perplexity xai cerebras sambanova".split())
_GENERIC_HOST_LABELS = frozenset("api www inference llm llms vllm gateway openai v1 serve serving".split())
_TODO = "TODO: placeholder, not in the LiteLLM config"


class ScenarioSkeleton(dict):  # type: ignore[type-arg]
    """A scenario dict (load_scenario accepts it as is) that also carries YAML comments.

    ``comments`` maps a field path (``partners[0].clusters[0].gpus``) to the comment written at
    the end of that line; ``header`` holds the lines written at the top of the file.
    """

    def __init__(self, *args: Any, comments: dict[str, str] | None = None, header: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.comments: dict[str, str] = dict(comments or {})
        self.header: list[str] = list(header or [])


# --------------------------------------------------------------------------------------------
# Reading and checking the LiteLLM config


class _Reader:
    """Typed getters that raise one-line ScenarioErrors naming the config file and field."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def fail(self, field: str, value: object, allowed: str) -> ScenarioError:
        return ScenarioError.at(self.source, field, value, allowed)

    def mapping(self, value: object, field: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(field, value, "must be a mapping")
        return value

    def string(self, value: object, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, value, "must be a non-empty string")
        return value.strip()

    def number(self, value: object, field: str, *, minimum: float = 0.0, integer: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and integer and float(value) != int(value):
            ok = False
        if not ok or value < minimum:  # type: ignore[operator]
            what = "an integer" if integer else "a number"
            raise self.fail(field, value, f"must be {what} >= {minimum:g}")
        return int(value) if integer else float(value)  # type: ignore[arg-type]


def _load_config(config: "str | os.PathLike[str] | Mapping[str, Any]") -> tuple[Mapping[str, Any], str | None]:
    if isinstance(config, Mapping):
        return config, None
    from publicai_lab.scenario import _read_yaml  # one YAML reader: duplicate keys and syntax errors alike

    label = str(config)
    data = _read_yaml(Path(config), label)
    if not isinstance(data, Mapping):
        raise ScenarioError.at(label, "<root>", data, "must be a LiteLLM proxy config mapping with `model_list`")
    return data, label


def _strip_provider(model: str) -> str:
    """``hosted_vllm/swiss-ai/Apertus-70B`` -> ``swiss-ai/Apertus-70B`` (the Hub id the server serves)."""
    head, sep, rest = model.partition("/")
    return rest if sep and head.lower() in _PROVIDERS and rest else model


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "x"


def _partner_name(api_base: str | None, model_info_id: str | None, index: int) -> str:
    """A readable partner name: LiteLLM's ``model_info.id``, else the endpoint's host, else ``deployment-i``."""
    if model_info_id:
        return _slug(model_info_id)
    if api_base and not api_base.startswith("os.environ/"):
        parsed = urlparse(api_base if "://" in api_base else f"http://{api_base}")
        host = parsed.hostname or ""
        if re.fullmatch(r"[\d.]+|localhost|\[?[0-9a-f:]+\]?", host):
            return _slug(f"{host}-{parsed.port}" if parsed.port else host)
        labels = [label for label in host.split(".")[:-1] or host.split(".") if label not in _GENERIC_HOST_LABELS]
        if labels:
            return _slug(labels[0])
    return f"deployment-{index}"


def _match_spec(names: list[str]) -> str | None:
    """The data/models.yaml spec whose hub id equals one of ``names`` (case-insensitively), else
    whose spec name appears in one of them (longest spec name first), else None."""
    specs = _data.model_specs()
    folded = [n.casefold() for n in names]
    for key, entry in specs.items():
        if str(entry.get("hub_id", "")).casefold() in folded:
            return key
    for key in sorted(specs, key=len, reverse=True):
        if any(key.casefold() in n.replace("_", "-") for n in folded):
            return key
    return None


def _tensor_parallel(spec: str, hardware: str) -> int:
    """Smallest power-of-two TP at which the weights take at most half of the usable memory,
    leaving the other half for KV cache (a placeholder, not a sizing)."""
    geometry = _data.model_specs().get(spec, {}).get("geometry", {})
    hw = _data.hardware_specs().get(hardware)
    if not geometry or not hw:
        return 1
    weights_gib = geometry["params_b"] * 1e9 * geometry.get("bytes_per_param", 2.0) / 2**30
    tp = 1
    while weights_gib > 0.5 * 0.9 * tp * float(hw["memory_gib"]) and tp < 64:
        tp *= 2
    return tp


def _setting(cfg: Mapping[str, Any], r: _Reader, *keys: str) -> tuple[Any, str | None]:
    """First of ``router_settings.KEY`` then ``litellm_settings.KEY`` (for each key in order)."""
    sections = []
    for section in ("router_settings", "litellm_settings"):
        raw = cfg.get(section)
        if raw is not None:
            sections.append((section, r.mapping(raw, section)))
    for key in keys:
        for section, values in sections:
            if values.get(key) is not None:
                return values[key], f"{section}.{key}"
    return None, None


# --------------------------------------------------------------------------------------------
# The import


def import_litellm(config_path_or_dict: "str | os.PathLike[str] | Mapping[str, Any]", *,
                   model_spec: str | None = None, hardware: str | None = None) -> ScenarioSkeleton:
    """Turn a LiteLLM proxy config (a file path or the parsed mapping) into a scenario dict.

    ``model_spec`` forces the data/models.yaml spec used for every model (else matched by hub id or
    name); ``hardware`` the accelerator of every cluster (else :data:`DEFAULT_HARDWARE`). The result
    passes :func:`publicai_lab.load_scenario`; fields LiteLLM cannot know are placeholders listed
    in ``result.comments`` (written as ``# TODO`` by :func:`write_scenario_yaml`). A malformed
    config raises a one-line :class:`ScenarioError` naming the file and the field.
    """
    cfg, source = _load_config(config_path_or_dict)
    r = _Reader(source)
    known_specs = _data.model_specs()
    known_hw = _data.hardware_specs()
    if model_spec is not None and model_spec not in known_specs:
        raise r.fail("--model-spec", model_spec, f"unknown model spec; known: {', '.join(known_specs)}")
    hw_name = hardware or DEFAULT_HARDWARE
    if hw_name not in known_hw:
        raise r.fail("--hardware", hw_name, f"unknown hardware; known: {', '.join(known_hw)}")

    raw_list = cfg.get("model_list")
    if not isinstance(raw_list, list) or not raw_list:
        raise r.fail("model_list", raw_list if raw_list is not None else None,
                     "must be a non-empty list of deployments (model_name, litellm_params)")

    # -- deployments ---------------------------------------------------------------------
    deployments: list[dict[str, Any]] = []
    for i, raw in enumerate(raw_list):
        where = f"model_list[{i}]"
        entry = r.mapping(raw, where)
        name = r.string(entry.get("model_name"), f"{where}.model_name")
        params = r.mapping(entry.get("litellm_params"), f"{where}.litellm_params")
        model = r.string(params.get("model"), f"{where}.litellm_params.model")
        api_base = params.get("api_base")
        if api_base is not None:
            api_base = r.string(api_base, f"{where}.litellm_params.api_base")
        limits = {}
        for key in ("weight", "rpm", "tpm"):
            if params.get(key) is not None:
                limits[key] = r.number(params[key], f"{where}.litellm_params.{key}", integer=key != "weight")
        info = entry.get("model_info")
        info_id = r.mapping(info, f"{where}.model_info").get("id") if info is not None else None
        deployments.append({"index": i, "model_name": name, "model": model, "hub_id": _strip_provider(model),
                            "api_base": api_base, "info_id": str(info_id) if info_id else None, **limits})

    # -- router settings -------------------------------------------------------------------
    strategy, strategy_at = _setting(cfg, r, "routing_strategy")
    strategy = "simple-shuffle" if strategy is None else r.string(strategy, strategy_at or "routing_strategy")
    if strategy not in ROUTING_STRATEGIES:
        raise r.fail(strategy_at or "routing_strategy", strategy,
                     f"unknown routing_strategy; known: {', '.join(ROUTING_STRATEGIES)}")
    policy, policy_why = ROUTING_STRATEGIES[strategy]
    gateway: dict[str, Any] = {"policy": policy}
    settings_at: dict[str, str] = {}
    for ours, theirs, integer in (("num_retries", ("num_retries",), True),
                                  ("allowed_fails", ("allowed_fails",), True),
                                  ("cooldown_s", ("cooldown_time",), False),
                                  ("timeout_s", ("timeout", "request_timeout"), False)):
        value, at = _setting(cfg, r, *theirs)
        if value is not None:
            number = r.number(value, at or theirs[0], integer=integer,
                              minimum=1e-9 if ours == "timeout_s" else 0.0)
            gateway[ours] = number
            settings_at[ours] = at or theirs[0]

    model_names = list(dict.fromkeys(d["model_name"] for d in deployments))
    fallbacks_raw, fallbacks_at = _setting(cfg, r, "fallbacks")
    fallbacks: dict[str, list[str]] = {}
    if fallbacks_raw is not None:
        items = fallbacks_raw if isinstance(fallbacks_raw, list) else [fallbacks_raw]
        for k, item in enumerate(items):
            where = f"{fallbacks_at}[{k}]"
            for src, targets in r.mapping(item, where).items():
                if src not in model_names:
                    raise r.fail(where, src, f"fallback for a model not in model_list; known: {', '.join(model_names)}")
                targets = [targets] if isinstance(targets, str) else targets
                if not isinstance(targets, list):
                    raise r.fail(f"{where}.{src}", targets, "must be a list of model_name values")
                for t in targets:
                    if t not in model_names:
                        raise r.fail(f"{where}.{src}", t, f"fallback target not in model_list; known: "
                                     f"{', '.join(model_names)}")
                fallbacks.setdefault(src, []).extend(t for t in targets if t != src)
    gateway["model_fallbacks"] = fallbacks

    # -- models ---------------------------------------------------------------------------
    comments: dict[str, str] = {}
    models: dict[str, Any] = {}
    spec_of: dict[str, str] = {}
    for name in model_names:
        hub_ids = list(dict.fromkeys(d["hub_id"] for d in deployments if d["model_name"] == name))
        matched = model_spec or _match_spec([name, *hub_ids])
        spec = matched or DEFAULT_MODEL_SPEC
        spec_of[name] = spec
        aliases = [h for h in hub_ids if h != name]
        models[name] = {"spec": spec, "aliases": aliases}
        comments[f"models.{name}.spec"] = (
            "given by --model-spec" if model_spec else
            f"matched from {', '.join([name, *hub_ids])}" if matched else
            f"TODO: no spec in data/models.yaml matches {name!r}; placeholder geometry, set the right one")
        if aliases:
            comments[f"models.{name}.aliases"] = "the served ids (litellm_params.model without the provider)"

    # -- partners: one per deployment -----------------------------------------------------
    partners: list[dict[str, Any]] = []
    used: set[str] = set()
    limits_note: list[str] = []
    for d in deployments:
        group = [g for g in deployments if g["model_name"] == d["model_name"]]
        weight_key = next((k for k in ("weight", "rpm", "tpm") if any(k in g for g in group)), None)
        weight = float(d.get(weight_key, 0.0)) if weight_key else 1.0
        base = _partner_name(d["api_base"], d["info_id"], d["index"])
        pname, n = base, 2
        while pname in used:
            pname, n = f"{base}-{n}", n + 1
        used.add(pname)
        tp = _tensor_parallel(spec_of[d["model_name"]], hw_name)
        cluster = {
            "name": _slug(d["model_name"].rsplit("/", 1)[-1]),
            "region": DEFAULT_REGION,
            "hardware": hw_name,
            "gpus": tp,
            "replicas": 1,
            "tensor_parallel": tp,
            "model": d["model_name"],
            "weight": weight,
            "donated": False,
            "cost_per_gpu_hour_usd": 0.0,
            "base_url": None if not d["api_base"] or d["api_base"].startswith("os.environ/") else d["api_base"],
        }
        partners.append({"name": pname, "country": DEFAULT_COUNTRY, "sponsor": "", "clusters": [cluster]})
        p = f"partners[{len(partners) - 1}]"
        c = f"{p}.clusters[0]"
        comments[f"{p}.name"] = f"deployment model_list[{d['index']}] ({d['model']})"
        comments[f"{p}.country"] = f"{_TODO} (data residency uses it)"
        comments[f"{p}.sponsor"] = _TODO
        comments[f"{c}.region"] = f"{_TODO}; add RTTs under network.rtt_ms"
        comments[f"{c}.hardware"] = ("given by --hardware" if hardware else f"{_TODO}; see data/hardware.yaml")
        comments[f"{c}.gpus"] = _TODO
        comments[f"{c}.replicas"] = _TODO
        comments[f"{c}.tensor_parallel"] = f"{_TODO} (smallest TP where the weights fill <= half the memory)"
        comments[f"{c}.donated"] = _TODO
        comments[f"{c}.cost_per_gpu_hour_usd"] = _TODO
        comments[f"{c}.weight"] = (f"litellm_params.{weight_key}" + (" (no weight in this model group; "
                                   "LiteLLM simple-shuffle uses it instead)" if weight_key != "weight" else "")
                                   if weight_key else "no weight/rpm/tpm: equal weights")
        if cluster["base_url"] is not None:
            comments[f"{c}.base_url"] = "litellm_params.api_base"
        elif d["api_base"]:
            comments[f"{c}.base_url"] = f"TODO: api_base is {d['api_base']!r} (resolved at run time by LiteLLM)"
        for key in ("rpm", "tpm"):
            if key in d:
                limits_note.append(f"{pname} {key}={int(d[key])}")

    # -- gateway comments -------------------------------------------------------------------
    comments["gateway.policy"] = f"{strategy_at or 'routing_strategy (default)'} {strategy}: {policy_why}"
    for ours in ("num_retries", "allowed_fails", "cooldown_s", "timeout_s"):
        comments[f"gateway.{ours}"] = settings_at[ours] if ours in gateway else "not set"
    # LiteLLM's own defaults when a setting is absent: Router num_retries = openai.DEFAULT_MAX_RETRIES
    # (2), litellm.allowed_fails = 3, cooldown DEFAULT_COOLDOWN_TIME_SECONDS = 5, litellm.request_timeout = 6000
    gateway.setdefault("num_retries", 2)
    gateway.setdefault("allowed_fails", 3)
    gateway.setdefault("cooldown_s", 5.0)
    gateway.setdefault("timeout_s", 6000.0)
    for key, why in (("num_retries", "LiteLLM default 2"), ("allowed_fails", "LiteLLM default 3"),
                     ("cooldown_s", "LiteLLM default 5 s"), ("timeout_s", "LiteLLM default 6000 s")):
        if comments[f"gateway.{key}"].startswith("not set"):
            comments[f"gateway.{key}"] = f"not set in the config: {why}"
    comments["gateway.model_fallbacks"] = "fallbacks" if fallbacks else "no fallbacks in the config"

    # -- workload and the rest: pure placeholders ---------------------------------------
    share = 1.0 / len(model_names)
    workload = {
        "arrivals": {"kind": "poisson", "rate_per_s": DEFAULT_RATE_PER_S},
        "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 1.0, "min": 1, "max": 8000},
        "output_tokens": {"kind": "lognormal", "median": 200, "sigma": 0.85, "min": 1, "max": 2000},
        "models": {name: share for name in model_names},
    }
    comments["workload"] = "TODO: LiteLLM knows nothing about the load; every value below is a placeholder"
    comments["workload.arrivals.rate_per_s"] = "TODO: the federation's request rate, req/s"
    comments["workload.prompt_tokens"] = "TODO: placeholder shaped like the Azure 2023 conversation trace"
    comments["workload.output_tokens"] = "TODO: placeholder (chat answers, median ~200 tokens)"
    comments["workload.models"] = "TODO: request mix (equal shares as a placeholder)"
    comments["requests"] = "TODO: run length"
    comments["network.default_rtt_ms"] = "TODO: RTT client -> cluster, ms (no per-region table yet)"

    label = source or "a LiteLLM config dict"
    description = f"Imported from {label} by publicai-lab import-litellm; routing_strategy {strategy}."
    if limits_note:
        description += " Deployment limits not modelled: " + ", ".join(limits_note) + "."
    stem = Path(source).stem if source else "litellm"
    data = ScenarioSkeleton(
        {
            "name": f"{stem}-imported",
            "description": description,
            "seed": 0,
            "requests": DEFAULT_REQUESTS,
            "models": models,
            "partners": partners,
            "network": {"default_rtt_ms": 50.0},
            "workload": workload,
            "gateway": gateway,
        },
        comments=comments,
        header=[f"Scenario skeleton imported from {label} by `publicai-lab import-litellm`.",
                "Lines marked TODO are placeholders for what a LiteLLM config cannot say (hardware, GPUs,",
                "region, country, the workload): replace them before trusting any result.",
                f"Routing: LiteLLM routing_strategy {strategy!r} -> policy {policy!r}."],
    )
    return data


# --------------------------------------------------------------------------------------------
# Commented YAML


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9)
    return text.split("\n...")[0].strip()


def _emit(node: Any, indent: int, path: str, comments: Mapping[str, str], out: list[str], key_line: str) -> None:
    """Write ``key_line`` for ``node`` (with its comment) and, for containers, its children below."""
    pad = " " * indent
    note = comments.get(path)
    suffix = f"  # {note}" if note else ""
    is_scalar_list = isinstance(node, list) and all(not isinstance(x, (dict, list)) for x in node)
    if not isinstance(node, (dict, list)) or is_scalar_list or not node:
        flow = ("[" + ", ".join(_scalar(x) for x in node) + "]") if isinstance(node, list) else \
            "{}" if isinstance(node, dict) else _scalar(node)
        out.append(f"{pad}{key_line} {flow}{suffix}" if key_line else f"{pad}{flow}{suffix}")
        return
    if key_line:
        out.append(f"{pad}{key_line}{suffix}")
        indent += 2
    if isinstance(node, dict):
        for k, v in node.items():
            child = f"{path}.{k}" if path else str(k)
            _emit(v, indent, child, comments, out, f"{_scalar(k)}:")
    else:
        for i, item in enumerate(node):
            child = f"{path}[{i}]"
            if isinstance(item, dict) and item:
                lines: list[str] = []
                _emit(item, indent + 2, child, comments, lines, "")
                first = lines[0]
                lines[0] = " " * indent + "- " + first[indent + 2:]
                out.extend(lines)
            else:
                _emit(item, indent, child, comments, out, "-")


def write_scenario_yaml(d: Mapping[str, Any], path: "str | os.PathLike[str]") -> Path:
    """Write a scenario dict as YAML with comments (header and per-field notes of a
    :class:`ScenarioSkeleton`; a plain dict gets none). The file reads back with load_scenario."""
    comments: Mapping[str, str] = getattr(d, "comments", {})
    header: list[str] = getattr(d, "header", [])
    lines = [f"# {h}" for h in header]
    body: list[str] = []
    for key, value in d.items():
        _emit(value, 0, str(key), comments, body, f"{_scalar(key)}:")
        if isinstance(value, (dict, list)) and value:
            body.append("")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines + ([""] if lines else []) + body).rstrip() + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# CLI


def _cmd_import_litellm(args: argparse.Namespace) -> int:
    from publicai_lab.scenario import load_scenario

    skeleton = import_litellm(args.config, model_spec=args.model_spec, hardware=args.hardware)
    out = write_scenario_yaml(skeleton, args.out)
    scenario = load_scenario(out)  # prove the file is a valid scenario before saying so
    todo = sum(1 for note in skeleton.comments.values() if "TODO" in note)
    print(f"{out}: {len(scenario.partners)} deployments, {len(scenario.models)} model(s), "
          f"policy {scenario.gateway.policy.name}; {todo} TODO placeholders to fill in")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``import-litellm``."""
    p = subparsers.add_parser(
        "import-litellm", help="turn a LiteLLM proxy config into a scenario skeleton",
        description="Read a LiteLLM proxy config.yaml (model_list, router_settings, litellm_settings) and "
                    "write a scenario YAML: one partner per deployment with its api_base and weight, the "
                    "router's strategy, retries, allowed fails, cooldown and fallbacks; what LiteLLM does not "
                    "know (hardware, GPUs, region, country, workload) is a placeholder marked # TODO.",
        epilog="Example: publicai-lab import-litellm data/litellm/publicai-like.yaml --out scenarios/mine.yaml")
    p.add_argument("config", metavar="CONFIG.yaml", help="LiteLLM proxy config file")
    p.add_argument("--out", default="scenario.yaml", help="scenario file to write (default: scenario.yaml)")
    p.add_argument("--model-spec", dest="model_spec", metavar="NAME",
                   help="data/models.yaml spec for every model (default: matched by hub id or name)")
    p.add_argument("--hardware", metavar="NAME",
                   help=f"accelerator of every cluster, from data/hardware.yaml (default: {DEFAULT_HARDWARE})")
    p.set_defaults(func=_cmd_import_litellm)
