"""The scenario: one validated description of a federation, its workload and its gateway.

A scenario names the partners and their clusters (hardware, replicas, the model each serves), the
models (geometry, aliases, prices), the network between client regions and cluster regions, the
workload (arrivals, lengths, who asks for what), the gateway's routing policy and retry rules,
SLOs and injected faults. The simulator and the live gateway both start from one.

Reading guide: :func:`load_scenario` is the entry point; :class:`Scenario` is the root model; the
sub-models below it follow the YAML's nesting. Validation happens in two layers:

* pydantic checks each value's type and range (``extra="forbid"`` everywhere, so a typo in a field
  name is an error, not a silently ignored key);
* model validators check what one value cannot: ``gpus >= replicas * tensor_parallel``, ordered
  availability windows, and at the root every cross-reference (models by key or alias, hardware
  names against ``data/hardware.yaml`` merged with the scenario's own ``hardware:``, fault targets,
  fallbacks, routing-policy names, network regions).

Every failure becomes one :class:`~publicai_lab.errors.ScenarioError` whose message is a single
line ``<file>: <field path>: got <value>; <what is allowed>``, e.g.
``toy.yaml: partners[0].clusters[0].gpus: got -2; must be an integer >= 1``.

After loading, the scenario is normalised so its consumers need no lookups of their own: every
model reference (cluster.model, workload.models, gateway.model_fallbacks) is the canonical model
key, every ``ModelSpec.geometry`` is filled, ``hardware`` holds every accelerator a cluster uses,
and trace paths are absolute.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import types
from collections.abc import Mapping
from inspect import isclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from publicai_lab import _data
from publicai_lab.errors import ScenarioError

__all__ = [
    "Scenario", "HardwareSpec", "ModelGeometry", "ModelSpec", "Partner", "Cluster", "Window",
    "EngineConfig", "SpeedJitter", "PerfCoefficients", "Network", "Workload", "ClientRegion", "Tier",
    "PoissonArrivals", "GammaArrivals", "DiurnalArrivals", "TraceArrivals", "Arrivals",
    "FixedLength", "UniformLength", "LognormalLength", "GeometricLength", "EmpiricalLength",
    "TraceLength", "LengthDist", "Gateway", "PolicyRef", "SLO", "Fault",
    "load_scenario", "dump_scenario", "scenario_json_schema", "DEFAULT_DIURNAL_CURVE",
]


# --------------------------------------------------------------------------------------------
# Error plumbing


class _Invalid(ValueError):
    """Raised inside validators: a problem at ``field`` (relative to the validated object)."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"{field}: got {value!r}; {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed


class _Nothing:
    """Stands for a missing value in error messages (``got nothing``)."""

    def __repr__(self) -> str:
        return "nothing"


_NOTHING = _Nothing()
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _key(key: object) -> str:
    """One path step for a mapping key: ``.name`` when it reads well, else ``["odd/key"]``."""
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f".{key}"
    return f"[{key!r}]" if not isinstance(key, str) else f'["{key}"]'


def _join(prefix: str, rel: str) -> str:
    if not prefix:
        return rel.lstrip(".")
    if not rel:
        return prefix
    return prefix + (rel if rel[0] in ".[" else "." + rel)


# --------------------------------------------------------------------------------------------
# Small validated value types

_ISO_3166_ALPHA2 = frozenset(
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR "
    "BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ "
    "EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW "
    "GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY "
    "KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV "
    "MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY "
    "QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG "
    "TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM "
    "ZW".split()
)


def _country(value: object) -> object:
    """ISO 3166-1 alpha-2, upper-cased. YAML 1.1 reads a bare ``NO`` as false: say so."""
    if isinstance(value, bool):
        raise ValueError("YAML read this as a boolean; quote country codes, e.g. 'NO'")
    if isinstance(value, str) and value.upper() in _ISO_3166_ALPHA2:
        return value.upper()
    raise ValueError("must be an ISO 3166-1 alpha-2 country code such as 'CH', 'SG', 'AU'")


def _name(value: str) -> str:
    if not value or "/" in value or value != value.strip():
        raise ValueError("must be a non-empty name without '/' or surrounding spaces")
    return value


Country = Annotated[str, BeforeValidator(_country)]
Name = Annotated[str, AfterValidator(_name)]
PositiveShare = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --------------------------------------------------------------------------------------------
# Hardware and models


class HardwareSpec(_Model):
    """Roofline facts about one accelerator (one 'gpu' of a cluster; one socket for a CPU)."""

    kind: Literal["gpu", "cpu"] = Field("gpu", description="Accelerator class; 'cpu' counts one socket as one gpu.")
    bf16_tflops: float = Field(gt=0, description="Dense BF16 tensor throughput, TFLOP/s.")
    hbm_tb_s: float = Field(gt=0, description="Device memory bandwidth, TB/s.")
    memory_gib: float = Field(gt=0, description="Device memory, GiB.")
    description: str = Field("", description="Free text: part number, where it runs.")


class ModelGeometry(_Model):
    """What the perf model needs about a transformer: size, shape, context and KV footprint."""

    params_b: float = Field(gt=0, description="Total parameters, billions.")
    layers: int = Field(ge=1, description="Decoder layers.")
    hidden_size: int = Field(ge=1, description="Residual stream width.")
    attention_heads: int = Field(ge=1, description="Query heads.")
    kv_heads: int = Field(ge=1, description="Key/value heads (GQA groups).")
    head_dim: int = Field(ge=1, description="Dimension of one attention head.")
    max_context_tokens: int = Field(ge=1, description="Longest prompt + output the model accepts, tokens.")
    vocab_size: int | None = Field(None, ge=1, description="Vocabulary size (for the LM-head cost).")
    bytes_per_param: float = Field(2.0, gt=0, description="Bytes per weight (2 = bf16, 1 = fp8).")
    kv_bytes_per_element: float = Field(2.0, gt=0, description="Bytes per KV-cache element.")

    @model_validator(mode="after")
    def _gqa(self) -> "ModelGeometry":
        if self.attention_heads % self.kv_heads:
            raise _Invalid("kv_heads", self.kv_heads, f"must divide attention_heads = {self.attention_heads}")
        return self

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token occupies across all layers (K and V)."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_element

    @property
    def weights_bytes(self) -> float:
        """Bytes of weights to hold (and to stream once per decode step)."""
        return self.params_b * 1e9 * self.bytes_per_param


class ModelSpec(_Model):
    """A model the federation serves. Its key in ``Scenario.models`` is the full Hub id."""

    spec: str | None = Field(None, description="Name of an entry in data/models.yaml supplying the geometry.")
    geometry: ModelGeometry | None = Field(
        None, description="Inline geometry; wins over `spec`. Always filled after loading.")
    aliases: list[str] = Field(default_factory=list, description="Other ids clients may use (provider ids).")
    price_in_per_mtok_usd: float = Field(0.0, ge=0, description="List price per 1M prompt tokens, USD.")
    price_out_per_mtok_usd: float = Field(0.0, ge=0, description="List price per 1M output tokens, USD.")

    @model_validator(mode="after")
    def _fill_geometry(self) -> "ModelSpec":
        known = _data.model_specs()
        if self.spec is not None and self.spec not in known:
            raise _Invalid("spec", self.spec, f"unknown model spec; known: {', '.join(known) or '(none)'}")
        if self.geometry is None:
            if self.spec is None:
                raise _Invalid("spec", None, "give `spec:` (a name in data/models.yaml: "
                               f"{', '.join(known)}) or an inline `geometry:`")
            try:
                self.geometry = ModelGeometry.model_validate(known[self.spec].get("geometry"))
            except ValidationError as exc:  # the bundled data itself is broken
                raise _Invalid("spec", self.spec, f"data/models.yaml entry is invalid: "
                               f"{exc.errors()[0]['msg']}") from None
        return self


# --------------------------------------------------------------------------------------------
# Clusters


class Window(_Model):
    """A span of simulated time during which a cluster is available."""

    start_s: float = Field(ge=0, description="Start, seconds of simulated time.")
    end_s: float = Field(gt=0, description="End (exclusive), seconds of simulated time.")

    @model_validator(mode="after")
    def _ordered(self) -> "Window":
        if self.end_s <= self.start_s:
            raise _Invalid("end_s", self.end_s, f"must be > start_s = {self.start_s:g}")
        return self


class EngineConfig(_Model):
    """The vLLM engine arguments that shape scheduling and KV capacity."""

    max_num_seqs: int = Field(256, ge=1, description="Max sequences in one batch (vLLM --max-num-seqs).")
    max_num_batched_tokens: int = Field(8192, ge=1, description="Token budget of one step (--max-num-batched-tokens).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of device memory vLLM may use.")
    block_size: int = Field(16, ge=1, description="KV-cache block size, tokens.")
    enable_chunked_prefill: bool = Field(True, description="Split long prefills across steps.")
    kv_cache_tokens: int | None = Field(None, ge=1, description="Override the computed KV capacity, tokens per replica.")


class SpeedJitter(_Model):
    """The engine's speed wandering over seconds: every ``interval_s`` the replica's step times are
    multiplied by exp(x), x an Ornstein–Uhlenbeck process (mean 0, standard deviation ``sd``,
    correlation time ``correlation_s``), one independent path per replica drawn from the scenario's seed
    (and ``path``: the same workload under another path of the speed).

    Why: on a shared host (or a GPU with thermal or power caps, or noisy neighbours) the same
    batch takes ±10 % from one few-second stretch to the next. Near saturation those stretches
    are transient overloads: the queue they leave lengthens the latency tail and makes runs of the
    same load disagree (at 75 % of saturation, sd 10 % over 5 s: p90/p50 1.66 → 1.86, p90 1.4–4.3 s
    between paths; docs/fidelity.md §10). None/0: a constant speed (vLLM on a dedicated GPU)."""

    sd: float = Field(ge=0, le=1, description="Standard deviation of the log of the step-time factor (0.05: ±5 %).")
    correlation_s: float = Field(10.0, gt=0, description="Correlation time of the speed's wandering, s.")
    interval_s: float = Field(1.0, gt=0, description="How often the speed changes (a new draw), s of simulated time.")
    path: int = Field(0, ge=0, description="Which of the seed's paths: another path, the same workload "
                      "(to average a result over several paths of the speed).")


class PerfCoefficients(_Model):
    """Step time of one engine iteration, seconds:
    c0 + c_prefill*prefill_tokens + c_prefill_sq*prefill_tokens^2 + c_decode*decode_seqs + c_ctx*context_tokens."""

    c0_s: float = Field(ge=0, description="Fixed cost of a step, s.")
    c_prefill_s: float = Field(0.0, ge=0, description="Per prefill token, s.")
    c_prefill_sq_s: float = Field(0.0, ge=0, description="Per squared prefill token (attention), s.")
    c_decode_s: float = Field(0.0, ge=0, description="Per decoding sequence in the batch, s.")
    c_ctx_s: float = Field(0.0, ge=0, description="Per context token attended by decoding sequences, s.")
    request_overhead_s: float = Field(0.0, ge=0, description="Latency the server frontend adds to each request "
                                      "before the engine sees it (HTTP, chat template, tokenisation), s; "
                                      "not engine time.")
    frontend_busy_s: float = Field(0.0, ge=0, description="Part of request_overhead_s during which the "
                                   "frontend can take no other request (requests queue for it), s.")
    request_overhead_per_stream_s: float = Field(0.0, ge=0, description="What each other request in flight "
                                                 "at the same server adds to request_overhead_s (its frontend "
                                                 "streams their tokens), s.")


def _perf_model_file(name: str) -> str:
    path = _data.perf_model_path(name)
    if not path.is_file():
        folder = path.parent
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        raise ValueError(f"no perf model file data/perf_models/{name}.json; known: "
                         f"{', '.join(known) or '(none)'}; or give coefficients inline, or null")
    return name


def _perf_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "file"
    if isinstance(value, (dict, PerfCoefficients)):
        return "inline"
    return None


PerfModelRef = Annotated[
    Union[
        Annotated[str, AfterValidator(_perf_model_file), Tag("file")],
        Annotated[PerfCoefficients, Tag("inline")],
    ],
    Discriminator(
        _perf_tag,
        custom_error_type="perf_model_type",
        custom_error_message="must be a perf-model name (data/perf_models/NAME.json), "
                             "inline coefficients (c0_s, ...), or null",
    ),
]


class Cluster(_Model):
    """One deployment: ``replicas`` vLLM engines of one model behind one endpoint (a backend)."""

    name: Name = Field(description="Unique within the partner; the backend id is 'partner/cluster'.")
    region: str = Field(min_length=1, description="Network region (a column of network.rtt_ms).")
    hardware: str = Field(min_length=1, description="Accelerator name: data/hardware.yaml or the scenario's `hardware:`.")
    gpus: int = Field(ge=1, description="Accelerators provisioned (CPU: sockets).")
    replicas: int = Field(1, ge=1, description="vLLM engines (data-parallel copies of the model).")
    tensor_parallel: int = Field(1, ge=1, description="Accelerators per replica.")
    model: str = Field(min_length=1, description="Model served: a key of `models` or one of its aliases.")
    weight: float = Field(1.0, ge=0, description="Routing weight (LiteLLM deployment weight).")
    donated: bool = Field(False, description="Capacity given in kind (marginal cost 0 to Public AI).")
    cost_per_gpu_hour_usd: float = Field(0.0, ge=0, description="Cost or list price per accelerator-hour, USD.")
    availability: list[Window] = Field(default_factory=list, description="When the cluster is up; empty = always.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM engine arguments.")
    perf_model: PerfModelRef | None = Field(
        None, description="Name of data/perf_models/NAME.json, inline coefficients, or null for the roofline prior.")
    speed_jitter: SpeedJitter | None = Field(
        None, description="The engines' speed wandering over seconds (sd of log step-time factor, correlation "
                          "time); null: constant speed.")
    base_url: str | None = Field(None, description="Live OpenAI-compatible endpoint, if any.")
    replica_balancer: Literal["least_loaded", "round_robin"] = Field(
        "least_loaded", description="How the cluster's own load balancer spreads requests over replicas.")

    @model_validator(mode="after")
    def _capacity_and_windows(self) -> "Cluster":
        need = self.replicas * self.tensor_parallel
        if self.gpus < need:
            raise _Invalid("gpus", self.gpus, f"must be >= replicas * tensor_parallel = "
                           f"{self.replicas} * {self.tensor_parallel} = {need}")
        for k in range(1, len(self.availability)):
            prev, cur = self.availability[k - 1], self.availability[k]
            if cur.start_s < prev.end_s:
                raise _Invalid(f"availability[{k}].start_s", cur.start_s, "windows must be in time order "
                               f"without overlap; must be >= previous end_s = {prev.end_s:g}")
        return self


class Partner(_Model):
    """An organisation donating or selling capacity."""

    name: Name = Field(description="Unique partner name.")
    country: Country = Field(description="ISO 3166-1 alpha-2 country where the clusters run (residency).")
    sponsor: str = Field("", description="Who pays for or donates the capacity.")
    clusters: list[Cluster] = Field(min_length=1, description="The partner's deployments.")

    @model_validator(mode="after")
    def _unique_clusters(self) -> "Partner":
        seen: set[str] = set()
        for j, cluster in enumerate(self.clusters):
            if cluster.name in seen:
                raise _Invalid(f"clusters[{j}].name", cluster.name, f"duplicate cluster name in partner {self.name!r}")
            seen.add(cluster.name)
        return self


# --------------------------------------------------------------------------------------------
# Network


class Network(_Model):
    """Round-trip times between where clients are and where clusters are."""

    rtt_ms: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        default_factory=dict, description="client_region -> cluster region -> RTT, ms.")
    default_rtt_ms: float = Field(100.0, ge=0, description="RTT for pairs missing from rtt_ms, ms.")
    hf_router_rtt_ms: float = Field(30.0, ge=0, description="Extra RTT of the Hugging Face router hop, ms.")
    gateway_overhead_ms: float = Field(0.5, ge=0, description="Gateway processing per request, ms.")

    def rtt_s(self, client_region: str, cluster_region: str) -> float:
        """RTT in seconds, falling back to ``default_rtt_ms`` for pairs not listed."""
        return self.rtt_ms.get(client_region, {}).get(cluster_region, self.default_rtt_ms) / 1000.0


# --------------------------------------------------------------------------------------------
# Workload: arrivals

#: Relative request rate by local hour 0..23: quiet nights, a morning ramp, a working-day plateau
#: with a lunch dip, a tail into the evening (the shape of office-hours chat traffic).
DEFAULT_DIURNAL_CURVE: tuple[float, ...] = (
    0.25, 0.20, 0.17, 0.16, 0.17, 0.22, 0.40, 0.75, 1.20, 1.55, 1.65, 1.60,
    1.40, 1.50, 1.60, 1.55, 1.40, 1.20, 1.00, 0.90, 0.80, 0.65, 0.50, 0.35,
)


class PoissonArrivals(_Model):
    """Exponential inter-arrival times."""

    kind: Literal["poisson"]
    rate_per_s: float = Field(gt=0, description="Mean requests per second, whole federation.")


class GammaArrivals(_Model):
    """Gamma inter-arrival times: cv > 1 is burstier than Poisson, cv < 1 more regular."""

    kind: Literal["gamma"]
    rate_per_s: float = Field(gt=0, description="Mean requests per second.")
    cv: float = Field(gt=0, description="Coefficient of variation of inter-arrival times (1 = Poisson).")


class DiurnalArrivals(_Model):
    """A non-homogeneous Poisson process following a daily curve in each client region's local time."""

    kind: Literal["diurnal"]
    rate_per_s: float = Field(gt=0, description="Daily mean requests per second.")
    curve: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: list(DEFAULT_DIURNAL_CURVE), min_length=24, max_length=24,
        description="24 relative rates for local hours 0..23 (normalised to mean 1).")
    start_hour_utc: float = Field(0.0, ge=0, lt=24, description="UTC hour of day at simulated time 0.")

    @model_validator(mode="after")
    def _not_flat_zero(self) -> "DiurnalArrivals":
        if sum(self.curve) <= 0:
            raise _Invalid("curve", self.curve, "must have at least one positive value")
        return self

    def multiplier(self, t_s: float, utc_offset_h: float = 0.0) -> float:
        """Rate multiplier (curve mean = 1) at simulated time ``t_s`` for a region at ``utc_offset_h``.

        Linear between the hourly points, so the rate has no jumps on the hour.
        """
        hour = (self.start_hour_utc + t_s / 3600.0 + utc_offset_h) % 24.0
        i = int(math.floor(hour)) % 24
        frac = hour - math.floor(hour)
        value = self.curve[i] * (1.0 - frac) + self.curve[(i + 1) % 24] * frac
        return value / (sum(self.curve) / 24.0)


def _existing_trace(value: str, info: ValidationInfo) -> str:
    """Resolve a trace path against the scenario's folder and insist the file exists."""
    base = Path((info.context or {}).get("base_dir") or os.getcwd())
    path = Path(value).expanduser()
    resolved = path if path.is_absolute() else (base / path)
    if not resolved.is_file():
        raise ValueError(f"trace file not found (looked for {resolved})")
    return str(resolved.resolve())


TraceFormat = Literal["azure", "csv"]
_TRACE_FORMAT_HELP = ("azure: Azure LLM trace (TIMESTAMP, ContextTokens, GeneratedTokens); "
                      "csv: columns arrival_s, prompt_tokens, output_tokens.")


class TraceArrivals(_Model):
    """Replay arrival times (and optionally lengths) from a file."""

    kind: Literal["trace"]
    path: str = Field(min_length=1, description="Trace file, relative to the scenario file; absolute after loading.")
    format: TraceFormat = Field("csv", description=_TRACE_FORMAT_HELP)
    time_scale: float = Field(1.0, gt=0, description="Multiply inter-arrival gaps by this (0.5 = twice the rate).")
    loop: bool = Field(False, description="Start the trace again when it runs out.")

    _exists = field_validator("path")(_existing_trace)


Arrivals = Annotated[
    Union[PoissonArrivals, GammaArrivals, DiurnalArrivals, TraceArrivals], Field(discriminator="kind")
]


# --------------------------------------------------------------------------------------------
# Workload: lengths


class _LengthBase(_Model):
    min: int = Field(1, ge=0, description="Clamp: smallest value drawn, tokens.")
    max: int | None = Field(None, ge=1, description="Clamp: largest value drawn, tokens (null = no clamp).")

    @model_validator(mode="after")
    def _clamps(self) -> "_LengthBase":
        if self.max is not None and self.max < self.min:
            raise _Invalid("max", self.max, f"must be >= min = {self.min}")
        return self


class FixedLength(_LengthBase):
    """Always the same number of tokens."""

    kind: Literal["fixed"]
    value: int = Field(ge=1, description="Tokens.")


class UniformLength(_LengthBase):
    """Uniform integer between low and high inclusive."""

    kind: Literal["uniform"]
    low: int = Field(ge=0, description="Smallest value, tokens.")
    high: int = Field(ge=1, description="Largest value, tokens.")

    @model_validator(mode="after")
    def _order(self) -> "UniformLength":
        if self.high < self.low:
            raise _Invalid("high", self.high, f"must be >= low = {self.low}")
        return self


class LognormalLength(_LengthBase):
    """Log-normal: heavy right tail, the shape of real prompt and output lengths."""

    kind: Literal["lognormal"]
    median: float = Field(gt=0, description="Median, tokens (exp of the log-mean).")
    sigma: float = Field(ge=0, description="Standard deviation of log(tokens).")


class GeometricLength(_LengthBase):
    """Geometric: memoryless stopping, as if every token ended the output with probability 1/mean."""

    kind: Literal["geometric"]
    mean: float = Field(ge=1, description="Mean, tokens.")


class EmpiricalLength(_LengthBase):
    """Draw from listed values (uniformly, or with weights)."""

    kind: Literal["empirical"]
    values: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, description="Possible values, tokens.")
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(None, description="Relative weights (null = equal).")

    @model_validator(mode="after")
    def _weights(self) -> "EmpiricalLength":
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise _Invalid("weights", self.weights, f"must have one weight per value ({len(self.values)})")
            if sum(self.weights) <= 0:
                raise _Invalid("weights", self.weights, "must have a positive sum")
        return self


class TraceLength(_LengthBase):
    """Lengths from a trace: the rows of ``workload.arrivals`` when it is a trace (aligned with
    the arrivals), else resampled uniformly from this distribution's own ``path``."""

    kind: Literal["trace"]
    path: str | None = Field(None, description="Own trace file (relative to the scenario file); "
                                               "null = the arrivals' trace.")
    format: TraceFormat = Field("csv", description=_TRACE_FORMAT_HELP)

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _existing_trace(value, info)


LengthDist = Annotated[
    Union[FixedLength, UniformLength, LognormalLength, GeometricLength, EmpiricalLength, TraceLength],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------------------------
# Workload


class ClientRegion(_Model):
    """Where a share of the requests comes from."""

    share: float = Field(gt=0, description="Relative share of requests (normalised over regions).")
    utc_offset_h: float = Field(0.0, ge=-12, le=14, description="Local time offset, hours (shifts the diurnal curve).")
    residency: list[Country] = Field(
        default_factory=list, description="ISO-2 countries allowed to serve these requests; empty = any.")


class Tier(_Model):
    """An API-key tier with its per-key rate limit."""

    share: float = Field(gt=0, description="Relative share of requests.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute allowed per key (null = unlimited).")
    users: int = Field(100, ge=1, description="Distinct API keys in this tier sharing its traffic uniformly.")


class Workload(_Model):
    """Who asks for what, when, and how long prompts and outputs are."""

    arrivals: Arrivals = Field(description="Arrival process (kind: poisson | gamma | diurnal | trace).")
    prompt_tokens: LengthDist = Field(description="Prompt length distribution.")
    output_tokens: LengthDist = Field(description="Output length distribution.")
    client_regions: dict[str, ClientRegion] = Field(
        default_factory=lambda: {"default": ClientRegion(share=1.0)}, min_length=1,
        description="Client regions by name (rows of network.rtt_ms).")
    models: dict[str, PositiveShare] = Field(
        min_length=1, description="Relative share of requests per model (keys or aliases; canonical after load).")
    tiers: dict[str, Tier] = Field(
        default_factory=lambda: {"free": Tier(share=1.0)}, min_length=1, description="API-key tiers by name.")
    channels: dict[Literal["direct", "huggingface"], PositiveShare] = Field(
        default_factory=lambda: {"direct": 1.0}, min_length=1,
        description="Share of requests per entry path (huggingface adds the HF router hop).")


# --------------------------------------------------------------------------------------------
# Gateway, SLOs, faults


def _policy_shorthand(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class PolicyRef(_Model):
    """A routing policy by registry name, with its keyword parameters."""

    name: str = Field(min_length=1, description="Name in publicai_lab.policies.available().")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the policy.")


class Gateway(_Model):
    """The global load balancer: routing policy, health checks, retries, fallbacks (LiteLLM-like)."""

    policy: Annotated[PolicyRef, BeforeValidator(_policy_shorthand)] = Field(
        default_factory=lambda: PolicyRef(name="weighted_shuffle"),
        description="Routing policy (a name, or {name, params}).")
    scrape_interval_s: float = Field(5.0, gt=0, description="How often engine gauges are scraped, s.")
    health_check_interval_s: float = Field(5.0, gt=0, description="How often backends are health-checked, s.")
    num_retries: int = Field(3, ge=0, description="Retries after a failed attempt.")
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout, s.")
    allowed_fails: int = Field(1, ge=0, description="Failures a backend may have before it is cooled down.")
    cooldown_s: float = Field(60.0, ge=0, description="How long a failing backend is taken out of rotation, s.")
    model_fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="model -> models to try, in order, when it cannot be served.")
    retry_on_outage: bool = Field(True, description="Retry on another backend when one is down.")
    max_in_flight_per_replica: int | None = Field(
        None, ge=1, description="Admission limit per replica (null = none).")


class SLO(_Model):
    """Latency targets a request must meet to count as good."""

    ttft_s: float = Field(2.0, gt=0, description="Time to first token, s.")
    tpot_s: float = Field(0.1, gt=0, description="Time per output token after the first, s.")
    e2e_s: float = Field(60.0, gt=0, description="End-to-end latency, s.")


class Fault(_Model):
    """An injected event on one backend."""

    kind: Literal["outage", "slowdown", "withdraw"] = Field(
        description="outage: backend down; slowdown: steps take `factor` times longer; withdraw: replicas removed.")
    cluster: str = Field(min_length=1, description="Backend id 'partner/cluster'.")
    at_s: float = Field(ge=0, description="When it starts, s of simulated time.")
    duration_s: float | None = Field(None, gt=0, description="How long it lasts (null = to the end).")
    factor: float = Field(1.0, ge=1, description="Slowdown factor (> 1 for kind: slowdown).")
    replicas: int | None = Field(None, ge=1, description="Replicas withdrawn (null = all; kind: withdraw).")

    @model_validator(mode="after")
    def _factor(self) -> "Fault":
        if self.kind == "slowdown" and self.factor <= 1:
            raise _Invalid("factor", self.factor, "must be > 1 for kind: slowdown")
        return self


# --------------------------------------------------------------------------------------------
# The scenario


class Scenario(_Model):
    """A federation, its workload and its gateway: everything one run needs besides the code."""

    name: str = Field(min_length=1, description="Short name (defaults to the file's stem).")
    description: str = Field("", description="Free text.")
    seed: int = Field(0, ge=0, description="Master seed; every random stream derives from it.")
    horizon_s: float | None = Field(None, gt=0, description="Stop arrivals after this much simulated time, s.")
    requests: int | None = Field(None, ge=1, description="Stop after this many arrivals.")
    hardware: dict[str, HardwareSpec] = Field(
        default_factory=dict, description="Extra or overriding accelerators; after load, every one a cluster uses.")
    models: dict[str, ModelSpec] = Field(min_length=1, description="Models by full Hub id.")
    partners: list[Partner] = Field(min_length=1, description="Partners and their clusters.")
    network: Network = Field(default_factory=Network, description="RTTs and fixed overheads.")
    workload: Workload = Field(description="Arrivals, lengths, regions, models, tiers, channels.")
    gateway: Gateway = Field(default_factory=Gateway, description="Routing policy and retry rules.")
    slo: SLO = Field(default_factory=SLO, description="Latency targets.")
    faults: list[Fault] = Field(default_factory=list, description="Injected outages, slowdowns, withdrawals.")

    _source: str | None = PrivateAttr(default=None)

    # -- cross-field checks and normalisation ------------------------------------------------

    @model_validator(mode="after")
    def _cross_check(self) -> "Scenario":
        if self.horizon_s is None and self.requests is None:
            raise _Invalid("requests", None, "set `requests` or `horizon_s` (or both) so the run ends")
        self._check_models()
        self._check_partners()
        self._check_workload()
        self._check_network()
        self._check_gateway()
        self._check_faults()
        return self

    def _check_models(self) -> None:
        owner: dict[str, str] = {}
        for key, spec in self.models.items():
            for j, alias in enumerate([key, *spec.aliases]):
                where = f"models{_key(key)}" + ("" if j == 0 else f".aliases[{j - 1}]")
                if alias in owner and owner[alias] != key:
                    raise _Invalid(where, alias, f"already names model {owner[alias]!r}; aliases must be unique")
                owner[alias] = key

    def _canonical(self, name: str, where: str) -> str:
        try:
            return self.resolve_model(name)
        except ScenarioError:
            raise _Invalid(where, name, f"unknown model; known: {', '.join(self.models)} "
                           "(or one of their aliases)") from None

    def _check_partners(self) -> None:
        known_hw = _data.hardware_specs()
        seen: set[str] = set()
        for i, partner in enumerate(self.partners):
            if partner.name in seen:
                raise _Invalid(f"partners[{i}].name", partner.name, "duplicate partner name")
            seen.add(partner.name)
            for j, cluster in enumerate(partner.clusters):
                where = f"partners[{i}].clusters[{j}]"
                if cluster.hardware not in self.hardware:
                    if cluster.hardware not in known_hw:
                        names = sorted(set(known_hw) | set(self.hardware))
                        raise _Invalid(f"{where}.hardware", cluster.hardware,
                                       f"unknown hardware; known: {', '.join(names)}")
                    try:
                        self.hardware[cluster.hardware] = HardwareSpec.model_validate(known_hw[cluster.hardware])
                    except ValidationError as exc:
                        raise _Invalid(f"{where}.hardware", cluster.hardware, "data/hardware.yaml entry is "
                                       f"invalid: {exc.errors()[0]['msg']}") from None
                cluster.model = self._canonical(cluster.model, f"{where}.model")

    def _check_workload(self) -> None:
        wl = self.workload
        for field in ("prompt_tokens", "output_tokens"):
            dist = getattr(wl, field)
            if dist.kind == "trace" and dist.path is None and wl.arrivals.kind != "trace":
                raise _Invalid(f"workload.{field}.path", None, "a trace length needs its own `path` "
                               f"or workload.arrivals.kind: trace (it is {wl.arrivals.kind!r})")
        canonical: dict[str, float] = {}
        for name, share in wl.models.items():
            key = self._canonical(name, f"workload.models{_key(name)}")
            if key in canonical:
                raise _Invalid(f"workload.models{_key(name)}", name, f"names model {key!r} a second time")
            canonical[key] = share
        wl.models = canonical

    def _check_network(self) -> None:
        regions = sorted({c.region for _, c in self.clusters()})
        for client, row in self.network.rtt_ms.items():
            if client not in self.workload.client_regions:
                raise _Invalid(f"network.rtt_ms{_key(client)}", client,
                               f"unknown client region; known: {', '.join(self.workload.client_regions)}")
            for region in row:
                if region not in regions:
                    raise _Invalid(f"network.rtt_ms{_key(client)}{_key(region)}", region,
                                   f"unknown cluster region; known: {', '.join(regions)}")

    def _check_gateway(self) -> None:
        names = _available_policies()
        policy = self.gateway.policy.name
        if names is not None and policy not in names:
            raise _Invalid("gateway.policy.name", policy, f"unknown routing policy; known: {', '.join(sorted(names))}")
        fallbacks: dict[str, list[str]] = {}
        for name, targets in self.gateway.model_fallbacks.items():
            where = f"gateway.model_fallbacks{_key(name)}"
            key = self._canonical(name, where)
            resolved = [self._canonical(t, f"{where}[{k}]") for k, t in enumerate(targets)]
            if key in resolved:
                raise _Invalid(f"{where}[{resolved.index(key)}]", targets[resolved.index(key)],
                               "a model cannot fall back to itself")
            fallbacks[key] = resolved
        self.gateway.model_fallbacks = fallbacks

    def _check_faults(self) -> None:
        backends = {self.backend_id(p, c): c for p, c in self.clusters()}
        for k, fault in enumerate(self.faults):
            cluster = backends.get(fault.cluster)
            if cluster is None:
                raise _Invalid(f"faults[{k}].cluster", fault.cluster,
                               f"unknown backend; known: {', '.join(backends)}")
            if fault.replicas is not None and fault.replicas > cluster.replicas:
                raise _Invalid(f"faults[{k}].replicas", fault.replicas,
                               f"must be <= the cluster's replicas ({cluster.replicas})")

    # -- queries -----------------------------------------------------------------------------

    @property
    def source(self) -> str | None:
        """The file this scenario was loaded from (None for a dict)."""
        return self._source

    def clusters(self) -> list[tuple[Partner, Cluster]]:
        """Every (partner, cluster) pair in file order."""
        return [(p, c) for p in self.partners for c in p.clusters]

    @staticmethod
    def backend_id(partner: Partner, cluster: Cluster) -> str:
        """The id the gateway, faults and records use for a cluster: ``partner/cluster``."""
        return f"{partner.name}/{cluster.name}"

    def backend(self, backend_id: str) -> tuple[Partner, Cluster]:
        """The (partner, cluster) behind a backend id."""
        for partner, cluster in self.clusters():
            if self.backend_id(partner, cluster) == backend_id:
                return partner, cluster
        raise ScenarioError.at(self.source, "backend", backend_id, "unknown backend; known: "
                               + ", ".join(self.backend_id(p, c) for p, c in self.clusters()))

    def resolve_model(self, name: str) -> str:
        """Canonical model key for a key or alias (exact first, then case-insensitive)."""
        if name in self.models:
            return name
        for key, spec in self.models.items():
            if name in spec.aliases:
                return key
        folded = name.casefold()
        for key, spec in self.models.items():
            if folded == key.casefold() or folded in (a.casefold() for a in spec.aliases):
                return key
        raise ScenarioError.at(self.source, "model", name, f"unknown model; known: {', '.join(self.models)}")

    def hardware_of(self, cluster: Cluster) -> HardwareSpec:
        """The accelerator spec a cluster runs on."""
        return self.hardware[cluster.hardware]

    def geometry_of(self, model: str) -> ModelGeometry:
        """Geometry of a model by key or alias."""
        geometry = self.models[self.resolve_model(model)].geometry
        assert geometry is not None  # filled by validation
        return geometry

    def with_overrides(self, **changes: Any) -> "Scenario":
        """A validated copy with some settings changed.

        Any top-level field (``seed=``, ``requests=``, ``horizon_s=``, ``name=`` ...) plus the
        shortcuts ``policy=`` (a name, ``{name, params}`` or a PolicyRef) and ``rate_per_s=``
        (the arrival rate, for arrival kinds that have one).
        """
        data = self.model_dump(mode="python")
        for key, value in changes.items():
            if key == "policy":
                data["gateway"]["policy"] = value.model_dump() if isinstance(value, PolicyRef) else value
            elif key == "rate_per_s":
                if "rate_per_s" not in data["workload"]["arrivals"]:
                    raise ScenarioError.at(self.source, "workload.arrivals.rate_per_s", value,
                                           f"arrivals of kind {self.workload.arrivals.kind!r} have no rate")
                data["workload"]["arrivals"]["rate_per_s"] = value
            elif key in type(self).model_fields:
                data[key] = value.model_dump() if isinstance(value, BaseModel) else value
            else:
                allowed = ", ".join([*type(self).model_fields, "policy", "rate_per_s"])
                raise ScenarioError.at(self.source, key, value, f"unknown override; allowed: {allowed}")
        return _validate(data, source=self.source, base_dir=None)

    def __eq__(self, other: object) -> bool:
        """Equal when every field is equal (where it was loaded from does not matter)."""
        if not isinstance(other, Scenario):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in type(self).model_fields)

    __hash__ = None  # type: ignore[assignment]


def _available_policies() -> set[str] | None:
    """Registered policy names, or None while publicai_lab.policies is not importable."""
    try:
        module = importlib.import_module("publicai_lab.policies")
    except ImportError:
        return None
    available = getattr(module, "available", None)
    if available is None:
        return None
    return set(available())


# --------------------------------------------------------------------------------------------
# Turning pydantic's errors into one line


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    """Remove Annotated and Optional wrappers; return the core type and the collected metadata."""
    meta: list[Any] = []
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            args = get_args(tp)
            meta.extend(args[1:])
            tp = args[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp, meta


def _union_tags(tp: Any) -> dict[str, Any] | None:
    """Tag -> member type for a tagged union (``kind`` literals or ``Tag`` metadata), else None."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    tags: dict[str, Any] = {}
    for member in get_args(tp):
        core, meta = _strip(member)
        for item in meta:
            if isinstance(item, Tag):
                tags[item.tag] = core
        if isclass(core) and issubclass(core, BaseModel) and "kind" in core.model_fields:
            for literal in get_args(core.model_fields["kind"].annotation):
                tags.setdefault(literal, core)
    return tags or None


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any, Any, list[Any]]:
    """Follow a pydantic error location through the Scenario types.

    Returns the readable path (union tags dropped), the model owning the last field, the last
    type reached and the constraint metadata collected on the way to it.
    """
    tp: Any = Scenario
    path = ""
    owner: Any = None
    meta: list[Any] = []
    key_tp: Any = Any
    for item in loc:
        if item == "[key]":  # the error is about a mapping key, not its value
            tp, meta = key_tp, []
            continue
        core, more = _strip(tp)
        tags = _union_tags(core)
        if tags is not None and isinstance(item, str) and item in tags:
            tp = tags[item]
            continue
        if isclass(core) and issubclass(core, BaseModel) and isinstance(item, str):
            owner = core
            path = _join(path, item)
            field: FieldInfo | None = core.model_fields.get(item)
            tp = field.annotation if field is not None else Any
            meta = list(field.metadata) if field is not None else []
            continue
        origin, args = get_origin(core), get_args(core)
        if isinstance(item, int):
            path += f"[{item}]"
        else:
            path += _key(item) if path else str(item)
        key_tp = args[0] if origin is dict and args else Any
        tp = args[0] if origin in (list, tuple) and args else args[1] if origin is dict and args else Any
        meta = []
    core, more = _strip(tp)
    return path, owner, tp, meta + more


def _describe(tp: Any, meta: list[Any]) -> str | None:
    """'must be an integer >= 1' and the like, from a type and its constraints."""
    core, more = _strip(tp)
    meta = meta + more
    meta = [c for m in meta for c in (m.metadata if isinstance(m, FieldInfo) else [m])]
    nullable = type(None) in get_args(tp) if get_origin(tp) in (Union, types.UnionType) else False
    if get_origin(core) is Literal:
        what = "one of: " + ", ".join(str(v) for v in get_args(core))
    elif core is bool:
        what = "true or false"
    elif core is int:
        what = "an integer"
    elif core is float:
        what = "a number"
    elif core is str:
        what = "a string"
    elif get_origin(core) is list:
        what = "a list"
    elif get_origin(core) is dict:
        what = "a mapping"
    elif isclass(core) and issubclass(core, BaseModel):
        what = "a mapping with fields: " + ", ".join(core.model_fields)
    else:
        return None
    bounds = []
    min_len = next((m.min_length for m in meta if isinstance(m, annotated_types.MinLen)), 0)
    max_len = next((m.max_length for m in meta if isinstance(m, annotated_types.MaxLen)), None)
    for m in meta:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if isinstance(m, getattr(annotated_types, attr.capitalize())):
                bounds.append(f"{sym} {getattr(m, attr):g}")
    if core is str and min_len == 1 and max_len is None:
        what = "a non-empty string"
    elif min_len and min_len == max_len:
        bounds.append(f"with exactly {min_len} entries")
    else:
        if min_len:
            bounds.append(f"with at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
        if max_len is not None:
            bounds.append(f"with at most {max_len} entries")
    text = "must be " + what + ("" if not bounds else " " + " and ".join(bounds))
    return text + (" or null" if nullable else "")


def _convert(exc: ValidationError, source: str | None) -> ScenarioError:
    """The first pydantic error as a one-line ScenarioError."""
    err = exc.errors(include_url=False)[0]
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    path, owner, tp, meta = _walk(loc)
    value: object = err.get("input", _NOTHING)
    inner = ctx.get("error")
    if isinstance(inner, _Invalid):
        return ScenarioError.at(source, _join(path, inner.field), inner.value, inner.allowed)
    if kind == "extra_forbidden":
        allowed = ", ".join(owner.model_fields) if owner is not None else "?"
        return ScenarioError.at(source, path, value, f"unknown field; allowed: {allowed}")
    if kind == "missing":
        described = _describe(tp, meta)
        return ScenarioError.at(source, path, _NOTHING, "required field missing"
                                + (f"; {described}" if described else ""))
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = str(ctx.get("discriminator", "kind")).strip("'")
        tags = _union_tags(_strip(tp)[0]) or {}
        got = ctx.get("tag", _NOTHING) if kind == "union_tag_invalid" else _NOTHING
        what = "unknown" if kind == "union_tag_invalid" else "missing"
        return ScenarioError.at(source, _join(path, field), got, f"{what} {field}; allowed: {', '.join(tags)}")
    if kind in ("value_error", "assertion_error"):
        message = str(inner) if inner is not None else err["msg"]
        return ScenarioError.at(source, path, value, message)
    described = _describe(tp, meta) if not kind.startswith("perf_model") else None
    return ScenarioError.at(source, path, value, described or err["msg"][:1].lower() + err["msg"][1:])


# --------------------------------------------------------------------------------------------
# Loading and dumping


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise _DuplicateKey(key, key_node.start_mark.line + 1)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(key, line)
        self.key = key
        self.line = line


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError.at(label, "<file>", str(path), "no such file") from None
    except IsADirectoryError:
        raise ScenarioError.at(label, "<file>", str(path), "is a directory, not a scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError.at(label, "<file>", str(path), f"cannot read: {exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ScenarioError.at(label, f"line {exc.line}", exc.key, "duplicate key in the same mapping") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is None:
            raise ScenarioError.at(label, "<yaml>", None, f"invalid YAML: {problem}") from None
        lines = text.splitlines()
        shown = lines[mark.line].strip() if mark.line < len(lines) else ""
        raise ScenarioError.at(label, f"line {mark.line + 1} column {mark.column + 1}", shown,
                               f"invalid YAML: {problem}") from None


def _validate(data: Mapping[str, Any], *, source: str | None, base_dir: Path | None) -> Scenario:
    context = {"base_dir": str(base_dir) if base_dir is not None else None}
    try:
        scenario = Scenario.model_validate(dict(data), context=context)
    except ValidationError as exc:
        raise _convert(exc, source) from None
    except _Invalid as exc:  # raised outside pydantic's wrapping (should not happen; kept safe)
        raise ScenarioError.at(source, exc.field, exc.value, exc.allowed) from None
    scenario._source = source
    return scenario


def load_scenario(source: "str | os.PathLike[str] | Mapping[str, Any] | Scenario", *,
                  base_dir: "str | os.PathLike[str] | None" = None) -> Scenario:
    """Read and validate a scenario from a YAML file path or a mapping.

    Relative trace paths resolve against the file's folder (or ``base_dir``, or the current
    directory for a mapping). A file without ``name:`` is named after its stem. Every problem
    raises :class:`ScenarioError` with a one-line message naming file, field path and value.
    """
    if isinstance(source, Scenario):
        return source
    if isinstance(source, Mapping):
        return _validate(source, source=None, base_dir=Path(base_dir) if base_dir else None)
    path = Path(source)
    label = str(source)
    data = _read_yaml(path, label)
    if not isinstance(data, dict):
        raise ScenarioError.at(label, "<root>", data, "must be a mapping of scenario fields "
                               f"({', '.join(Scenario.model_fields)})")
    data.setdefault("name", path.stem)
    return _validate(data, source=label, base_dir=Path(base_dir) if base_dir else path.resolve().parent)


def dump_scenario(scenario: Scenario, path: "str | os.PathLike[str]") -> Path:
    """Write a scenario as YAML that :func:`load_scenario` reads back to an equal scenario.

    The dump is self-contained (geometry and hardware written out); a trace path is written
    relative to the new file's folder when it can be.
    """
    out = Path(path)
    data = scenario.model_dump(mode="json")
    workload = data["workload"]
    for section in (workload["arrivals"], workload["prompt_tokens"], workload["output_tokens"]):
        if section["kind"] == "trace" and section.get("path"):
            try:
                section["path"] = os.path.relpath(section["path"], out.resolve().parent)
            except ValueError:  # another drive on Windows: keep it absolute
                pass
    header = f"# scenario {scenario.name!r} written by publicai_lab.dump_scenario"
    if scenario.source:
        header += f" from {scenario.source}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100),
                   encoding="utf-8")
    return out


def scenario_json_schema() -> dict[str, Any]:
    """JSON Schema of the scenario format (for editors and docs)."""
    return Scenario.model_json_schema()
