"""What a request arriving mid-decode costs a live engine, against what the perf model says.

The calibration times closed groups: all requests arrive together, then decode together. A replay's
requests arrive one by one while others decode, so each prompt is prefilled in a mixed step beside
the running decodes (vLLM's chunked prefill), and the engine admits, schedules and finishes a request
while the batch runs. The simulator prices such a step with the same perf model
(:meth:`~publicai_lab.perf.step_time.StepTimeModel.step_s` with prompt tokens and decoding
sequences together). This module measures whether the engine agrees: a background group of
``batch`` streamed requests decodes, and every ``gap_s`` one request of two output tokens arrives;
the background's extra decode time per arrival, against quiet rounds of the same group, is set
beside the model's price of that arrival (its prompt tokens in one step, then one step with one more
sequence decoding), the model taken at the quiet rounds' own speed — so the host's drift since the
model was fitted does not count, only the shape of the step.

Measured on the small model (docs/fidelity.md §17): 150-token arrivals cost the engine 19.8–22.1 ms
against the model's 21.2–22.4 (six runs, −11.9 … +1.6 %); 16-token ones 2.7 and 4.1 ms against 2.5
and 2.4 (se 0.3, 0.9); prompts of 100–200 tokens drawn anew each time (a new step shape at nearly
every arrival) 20.7 and 23.0 ms against 21.6 and 21.9. The mixed step is priced right: it is not
where a light replay's engine runs slower than the speed anchor's closed groups.

    >>> from publicai_lab.live.arrivals import measure_arrival_cost
    >>> measure_arrival_cost("http://127.0.0.1:8000", "publicai-lab/small-llama", perf)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from publicai_lab.errors import PublicAILabError

__all__ = ["MODES", "BACKGROUND", "ArrivalCost", "arrival_rounds", "arrival_cost_table", "measure_arrival_cost"]

#: the arriving requests' prompt tokens by mode: None, no arrivals (the quiet reference, always run);
#: an int, that many; a (low, high) pair, drawn uniformly anew for every arrival
MODES: dict[str, Any] = {"quiet": None, "short": 16, "fixed": 150, "varied": (100, 200)}
#: the background group: four sequences decoding for about 1.6 s on the small model
BACKGROUND: dict[str, int] = {"batch": 4, "prompt_tokens": 144, "output_tokens": 320}


@dataclass
class ArrivalCost:
    """The rounds (one row per background group) and, per arriving mode, the extra decode time per
    arrival measured against the quiet rounds beside the model's price (:func:`arrival_cost_table`)."""

    rounds: pd.DataFrame
    table: pd.DataFrame

    def to_markdown(self) -> str:
        """The table, one line per mode."""
        lines = [f"Quiet rounds ran ×{self.table.attrs.get('speed', float('nan')):.3f} the perf model's step; "
                 "the model's prices below are taken at that speed."]
        for mode, r in self.table.iterrows():
            lines.append(f"- {mode} ({r['prompt_tokens']:.0f}-token prompts, {r['arrivals_per_round']:.0f} arrivals a "
                         f"round, {int(r['rounds'])} rounds): {r['measured_ms']:.2f} ms per arrival (se "
                         f"{r['se_ms']:.2f}), the model {r['model_ms']:.2f} ms: {r['measured_ms'] - r['model_ms']:+.2f} ms "
                         f"({r['rel_error']:+.1%})")
        return "\n".join(lines)


async def arrival_rounds(client: Any, perf: Any, *, rounds: int, gap_s: float,
                         modes: Mapping[str, Any] = MODES, seed: int = 0,
                         background: Mapping[str, int] | None = None,
                         on_round: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """``rounds`` background groups per mode through ``client`` (calibrate's ``_Client``), the modes'
    order rotating round by round; the quiet mode is always run. One row per group: its decode
    interval (``decode_s``, from the last first token to the first last token, and the ``tokens``
    each request made in it), the ``arrivals`` inside it and the model's price of them
    (``model_extra_s``) and of a quiet step (``model_step_s``). ``background``: keys of
    :data:`BACKGROUND` to change (fewer ``output_tokens`` for a quicker, noisier look)."""
    if rounds < 1 or not gap_s > 0:
        raise PublicAILabError(f"arrival_rounds: rounds must be >= 1 and gap_s > 0; got {rounds}, {gap_s}")
    if set(background or {}) - set(BACKGROUND):
        raise PublicAILabError(f"arrival_rounds: background keys are {sorted(BACKGROUND)}; got {sorted(background or {})}")
    names = ["quiet"] + [m for m in modes if m != "quiet" and modes[m] is not None]
    shape = {**BACKGROUND, **(background or {})}
    batch, prompt_tokens, output_tokens = (int(shape[k]) for k in ("batch", "prompt_tokens", "output_tokens"))
    pool = np.asarray(await client.token_pool())
    rng = np.random.default_rng(seed)

    def ids(n: int) -> list[int]:
        return [int(i) for i in rng.choice(pool, size=n)]

    async def arrive(spec: Any, t0: float, done: asyncio.Event, arrivals: list[tuple[float, int]],
                     pending: list[asyncio.Task]) -> None:
        while True:
            await asyncio.sleep(gap_s)
            if done.is_set():
                return
            n = int(rng.integers(spec[0], spec[1] + 1)) if isinstance(spec, tuple) else int(spec)
            arrivals.append((time.perf_counter() - t0, n))
            pending.append(asyncio.create_task(client.stream(ids(n), 2, time.perf_counter())))

    for _ in range(3):       # warm-up: the first groups after a pause run slow
        await asyncio.gather(*(client.stream(ids(prompt_tokens), output_tokens, time.perf_counter())
                               for _ in range(batch)))
    context = batch * (prompt_tokens + output_tokens / 2)
    quiet_step = perf.step_s(0, batch, context)
    rows = []
    for r in range(rounds):
        for mode in names[r % len(names):] + names[:r % len(names)]:
            spec = None if mode == "quiet" else modes[mode]
            done, arrivals, pending = asyncio.Event(), [], []
            t0 = time.perf_counter()
            injector = asyncio.create_task(arrive(spec, t0, done, arrivals, pending)) if spec is not None else None
            traces = await asyncio.gather(*(client.stream(ids(prompt_tokens), output_tokens, t0)
                                            for _ in range(batch)))
            done.set()
            if injector is not None:
                await injector
            await asyncio.gather(*pending)
            start = max(t.times_s[0] for t in traces)
            end = min(t.times_s[-1] for t in traces)
            tokens = float(np.mean([np.interp(end, t.times_s, t.cum_tokens) - np.interp(start, t.times_s, t.cum_tokens)
                                    for t in traces]))
            inside = [n for at_s, n in arrivals if start <= at_s <= end]
            # an arrival: its prompt tokens in one step, then one step with one more sequence decoding
            model_extra_s = sum(perf.step_s(n, batch, context) - quiet_step
                                + perf.step_s(0, batch + 1, context + n) - quiet_step for n in inside)
            row = {"round": r, "mode": mode, "decode_s": end - start, "tokens": tokens,
                   "step_s": (end - start) / tokens if tokens > 0 else float("nan"), "arrivals": len(inside),
                   "prompt_tokens": float(np.mean(inside)) if inside else 0.0,
                   "model_step_s": quiet_step, "model_extra_s": model_extra_s}
            rows.append(row)
            if on_round:
                on_round(row)
            await asyncio.sleep(0.3)
    return pd.DataFrame(rows)


def arrival_cost_table(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per arriving mode: the background's extra decode time per arrival (its decode interval minus
    the same round's quiet step times its tokens), its standard error over the rounds, and the
    model's price at the quiet rounds' speed (``attrs["speed"]``: their step over the model's)."""
    quiet = rounds[rounds["mode"] == "quiet"].set_index("round")
    speed = float((quiet["step_s"] / quiet["model_step_s"]).median())
    out = []
    for mode, g in rounds[rounds["mode"] != "quiet"].groupby("mode", sort=False):
        # the same round's quiet group (an inner merge: a round without one is left out)
        g = g.merge(quiet[["step_s"]].rename(columns={"step_s": "step_s_quiet"}), left_on="round", right_index=True)
        g = g[g["arrivals"] > 0]
        if g.empty:
            continue
        per_ms = 1e3 * (g["decode_s"] - g["step_s_quiet"] * g["tokens"]) / g["arrivals"]
        model_ms = 1e3 * speed * g["model_extra_s"] / g["arrivals"]
        out.append({"mode": mode, "prompt_tokens": float(g["prompt_tokens"].mean()),
                    "arrivals_per_round": float(g["arrivals"].mean()), "rounds": len(g),
                    "measured_ms": float(per_ms.mean()), "se_ms": float(per_ms.std() / np.sqrt(len(g))),
                    "model_ms": float(model_ms.mean()),
                    "rel_error": float(per_ms.mean() / model_ms.mean() - 1)})
    table = pd.DataFrame(out).set_index("mode") if out else pd.DataFrame()
    table.attrs["speed"] = speed
    return table


def measure_arrival_cost(target: str, model: str, perf: Any, *, rounds: int = 14, gap_s: float = 0.08,
                         modes: Mapping[str, Any] = MODES, seed: int = 0, api_key: str | None = None,
                         background: Mapping[str, int] | None = None,
                         on_round: Callable[[dict[str, Any]], None] | None = None) -> ArrivalCost:
    """:func:`arrival_rounds` against the vLLM server at ``target`` (serving ``model``), priced by
    ``perf``, and its :func:`arrival_cost_table`. Run with nothing else on the engine."""
    from publicai_lab.live._sync import run_sync
    from publicai_lab.live.calibrate import _open_client

    async def run() -> pd.DataFrame:
        async with _open_client(target, model, api_key=api_key) as client:
            return await arrival_rounds(client, perf, rounds=rounds, gap_s=gap_s, modes=modes, seed=seed,
                                        background=background, on_round=on_round)

    rows = run_sync(run, name="arrival-cost")
    return ArrivalCost(rows, arrival_cost_table(rows))
