"""The simulator's vLLM replica model, driven on the wall clock: the engine behind an emulated backend.

Why not ``simpy.rt.RealtimeEnvironment``: it sleeps inside ``step()``, which blocks the thread;
the HTTP server and the engine would then need two threads and locks. Instead the engine owns a
plain ``simpy.Environment`` whose clock is *pulled forward to wall-clock now* by whoever touches
it (a request arriving, a client going away, a ``/metrics`` scrape, a timer), all on the one
asyncio event loop: no locks, and the replica code runs exactly as in the simulator (continuous
batching, chunked prefill, KV-cache limits, preemption by recompute).

Per-token timing. The replica jumps over stretches of decode steps (see ``sim/replica.py``): it
reports first-token and finish times, not every token. Between those, a decoding sequence's
progress follows from the run's arithmetic step times (:func:`tokens_out`), and the next step
boundary from :func:`next_step_s`; the engine arms one loop timer at the next boundary that a
streaming request cares about, so streamed tokens leave at the modelled step ends (both are
``Replica`` methods, so no replica internals are read here).

Engine time = loop time − start − time spent stalled. A stall (fault knob) freezes the engine's
clock: nothing progresses, requests queue, and every token after it is late by the stall.

Reading order: :class:`RealtimeEngine.submit` → ``_advance`` → ``_notify`` → ``_schedule``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Sequence

import simpy

from publicai_lab.perf import EngineParams
from publicai_lab.sim.replica import Replica, Seq

__all__ = ["RealtimeEngine", "Job", "Histogram", "tokens_out", "next_step_s",
           "TTFT_BUCKETS_S", "E2E_BUCKETS_S", "ITL_BUCKETS_S"]

#: the engine timer never re-arms closer than this to now (guards against spinning)
_MIN_WAKE_S = 20e-6

# vLLM's own histogram buckets (vllm/v1/metrics/loggers.py), so dashboards read alike
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                  7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0)


def tokens_out(replica: Replica, seq: Seq, now_s: float) -> int:
    """Output tokens ``seq`` has produced by ``now_s`` (see ``Replica.tokens_out``)."""
    return replica.tokens_out(seq, now_s)


def next_step_s(replica: Replica, now_s: float) -> float:
    """End of the decode step in progress (see ``Replica.next_step_end_s``)."""
    return replica.next_step_end_s(now_s)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts rendered at scrape time."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        if n <= 0 or value != value:
            return
        for i, b in enumerate(self.bounds):
            if value <= b:
                self.counts[i] += n
                break
        self.sum += value * n
        self.count += n

    def lines(self, name: str, labels: str) -> list[str]:
        out = []
        acc = 0
        for b, c in zip(self.bounds, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels},le="{b}"}} {float(acc)}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(self.count)}')
        out.append(f"{name}_count{{{labels}}} {float(self.count)}")
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        return out


class _ReplicaStats:
    """Counters and histograms of one engine replica (vLLM's ``engine`` label)."""

    __slots__ = ("prompt_tokens", "generation_tokens", "success", "aborted", "ttft", "e2e", "queue",
                 "prefill", "itl", "streams")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = 0
        self.aborted = 0
        self.ttft = Histogram(TTFT_BUCKETS_S)
        self.e2e = Histogram(E2E_BUCKETS_S)
        self.queue = Histogram(E2E_BUCKETS_S)
        self.prefill = Histogram(E2E_BUCKETS_S)    # scheduled to first token, as vLLM's engine stamps it
        self.itl = Histogram(ITL_BUCKETS_S)
        self.streams = 0          # streaming jobs currently on this replica (for the timer)


class Job:
    """One request inside the engine, as the HTTP handler sees it.

    ``wait()`` returns when something happened (new tokens for a stream, done, failed, or any
    external ``wake()`` such as a client disconnect); the handler then reads ``produced()``.
    """

    __slots__ = ("engine", "replica", "index", "seq", "prompt_tokens", "output_tokens", "stream",
                 "arrival_s", "finish_s", "done", "failed", "rejected", "aborted", "seen", "_fut",
                 "_flag")

    def __init__(self, engine: "RealtimeEngine", prompt_tokens: int, output_tokens: int,
                 stream: bool) -> None:
        self.engine = engine
        self.replica: Replica | None = None
        self.index = 0
        self.seq: Seq | None = None
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.stream = stream
        self.arrival_s = math.nan
        self.finish_s = math.nan
        self.done = False          # last token out
        self.failed = False        # lost (engine crash)
        self.rejected = False      # prompt can never fit in the KV cache
        self.aborted = False       # client went away
        self.seen = 0              # tokens the engine last told this job about
        self._fut: asyncio.Future[None] | None = None
        self._flag = False

    @property
    def finished(self) -> bool:
        return self.done or self.failed or self.rejected or self.aborted

    def wake(self) -> None:
        self._flag = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self) -> None:
        if not self._flag:
            self._fut = self.engine.loop.create_future()
            try:
                await self._fut
            finally:
                self._fut = None
        self._flag = False

    def produced(self) -> int:
        """Output tokens out of the engine so far (all of them once done)."""
        if self.done:
            return self.output_tokens
        if self.seq is None or self.replica is None or self.finished:
            return self.seen
        return tokens_out(self.replica, self.seq, self.engine.env.now)

    @property
    def first_token_s(self) -> float:
        return self.seq.first_token_s if self.seq is not None else math.nan


class RealtimeEngine:
    """``replicas`` simulated vLLM engines (one SimPy clock) advanced to wall-clock now.

    Must be used from one asyncio event loop (``start(loop)`` binds it). ``min_tick_s`` > 0
    coalesces token wake-ups (tokens then leave in bursts at most every ``min_tick_s``): use it
    when one process emulates many busy backends and per-step wake-ups cost too much CPU.
    """

    def __init__(self, params: EngineParams, *, replicas: int = 1, name: str = "emulated",
                 balancer: str = "least_loaded", min_tick_s: float = 0.0) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.params = params
        self.name = name
        self.balancer = balancer
        self.min_tick_s = float(min_tick_s)
        self.env = simpy.Environment()
        self.replicas = [Replica(self.env, params, name=f"{name}/{i}", on_finish=self._on_finish,
                                 on_reject=self._on_reject, scrape_interval_s=1e9)
                         for i in range(replicas)]
        self.stats = [_ReplicaStats() for _ in range(replicas)]
        self._rr = -1
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._t0 = 0.0
        self._offset_s = 0.0            # engine seconds lost to stalls
        self._frozen_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf       # engine time the armed timer targets
        self._unstall: asyncio.TimerHandle | None = None
        self._last_wake_s = -math.inf
        self._streams: set[Job] = set()
        self.jobs_in = 0

    # ------------------------------------------------------------------ clock
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self._t0 = self.loop.time()

    def now(self) -> float:
        """Engine time: wall seconds since start, minus time spent stalled."""
        t = self._frozen_at if self._frozen_at is not None else self.loop.time()
        return t - self._t0 - self._offset_s

    def _advance(self, at_least_s: float = 0.0) -> float:
        """Run every SimPy event due by now; the clock never goes backwards."""
        t = max(self.now(), at_least_s)
        env = self.env
        while env.peek() <= t:
            env.step()
        if t > env._now:                # SimPy has no public "advance to": set the clock directly
            env._now = t
        return env._now

    @property
    def stalled(self) -> bool:
        return self._frozen_at is not None

    # ------------------------------------------------------------------ work in / out
    def submit(self, prompt_tokens: int, output_tokens: int, *, stream: bool) -> Job:
        """A request reaches the engine (after the API server's checks)."""
        job = Job(self, max(1, int(prompt_tokens)), max(1, int(output_tokens)), stream)
        now = self._advance()
        self.jobs_in += 1
        replica, index = self._pick()
        job.replica, job.index = replica, index
        job.arrival_s = now
        if stream:
            self._streams.add(job)
            self.stats[index].streams += 1
        job.seq = replica.add(job, job.prompt_tokens, job.output_tokens)
        self._notify(now)
        self._schedule(now)
        return job

    def abort(self, job: Job) -> None:
        """The client went away: vLLM frees the sequence at the next step."""
        if job.finished or job.seq is None or job.replica is None:
            return
        now = self._advance()
        produced = job.produced()
        job.aborted = True
        job.replica.abort(job.seq)
        st = self.stats[job.index]
        st.aborted += 1
        st.generation_tokens += produced
        if job.seq.first_token_s == job.seq.first_token_s:
            st.prompt_tokens += job.prompt_tokens
        self._drop_stream(job)
        self._schedule(now)

    def fail_all(self) -> list[Job]:
        """The engine dies: every request is lost (their handlers are woken to see ``failed``)."""
        self._advance()
        lost: list[Job] = []
        for r in self.replicas:
            for job in r.fail_all():
                if isinstance(job, Job):
                    lost.append(job)
        for job in lost + list(self._streams):
            job.failed = True
            self._drop_stream(job)
            job.wake()
        self._cancel_timer()
        return lost

    def close(self) -> None:
        self._cancel_timer()
        if self._unstall is not None:
            self._unstall.cancel()
            self._unstall = None

    def stall(self, duration_s: float) -> None:
        """Freeze the engine for ``duration_s`` wall seconds (a hung engine: queued, not lost)."""
        if self.stalled or duration_s <= 0:
            return
        self._advance()
        self._frozen_at = self.loop.time()
        self._cancel_timer()
        self._unstall = self.loop.call_later(duration_s, self._on_unstall)

    def _on_unstall(self) -> None:
        self._unstall = None
        if self._frozen_at is None:
            return
        self._offset_s += self.loop.time() - self._frozen_at
        self._frozen_at = None
        now = self._advance()
        self._notify(now)
        self._schedule(now)

    # ------------------------------------------------------------------ replica callbacks
    def _on_finish(self, seq: Seq, t: float) -> None:
        job = seq.req
        if not isinstance(job, Job) or job.finished:
            return
        job.done = True
        job.finish_s = t
        st = self.stats[job.index]
        st.success += 1
        st.prompt_tokens += job.prompt_tokens
        st.generation_tokens += job.output_tokens
        first = seq.first_token_s
        st.ttft.observe(first - job.arrival_s)
        st.e2e.observe(t - job.arrival_s)
        st.queue.observe(seq.admitted_s - job.arrival_s)
        st.prefill.observe(first - seq.admitted_s)
        if job.output_tokens > 1:
            st.itl.observe((t - first) / (job.output_tokens - 1), job.output_tokens - 1)
        self._drop_stream(job)
        job.wake()

    def _on_reject(self, seq: Seq, t: float) -> None:
        job = seq.req
        if not isinstance(job, Job) or job.finished:
            return
        job.rejected = True
        self._drop_stream(job)
        job.wake()

    def _drop_stream(self, job: Job) -> None:
        if job in self._streams:
            self._streams.discard(job)
            self.stats[job.index].streams -= 1

    # ------------------------------------------------------------------ wake-ups
    def _pick(self) -> tuple[Replica, int]:
        reps = self.replicas
        if len(reps) == 1:
            return reps[0], 0
        if self.balancer == "round_robin":
            self._rr = (self._rr + 1) % len(reps)
            return reps[self._rr], self._rr
        best = 0
        best_load = reps[0].load
        for i in range(1, len(reps)):
            load = reps[i].load
            if load < best_load:
                best, best_load = i, load
        return reps[best], best

    def _notify(self, now: float) -> None:
        """Wake every stream that has tokens it has not been told about."""
        for job in self._streams:
            assert job.replica is not None and job.seq is not None
            n = tokens_out(job.replica, job.seq, now)
            if n > job.seen:
                job.seen = n
                job.wake()

    def _schedule(self, now: float) -> None:
        """Arm the one engine timer at the next moment something observable happens."""
        if self.stalled:
            return
        nxt = self.env.peek()
        if self._streams:
            for r, st in zip(self.replicas, self.stats):
                if st.streams:
                    b = next_step_s(r, now)
                    if b < nxt:
                        nxt = b
        if nxt == math.inf:
            self._cancel_timer()
            return
        if self.min_tick_s > 0.0:
            nxt = max(nxt, self._last_wake_s + self.min_tick_s)
        nxt = max(nxt, now + _MIN_WAKE_S)
        if self._timer is not None:
            if abs(self._timer_at - nxt) < 1e-7:
                return
            self._timer.cancel()
        self._timer_at = nxt
        self._timer = self.loop.call_at(self._t0 + self._offset_s + nxt, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _on_timer(self) -> None:
        target = self._timer_at
        self._timer = None
        self._timer_at = math.inf
        if self.stalled:
            return
        # the loop may fire a timer up to its clock resolution early: treat the target as reached
        now = self._advance(target)
        self._last_wake_s = now
        self._notify(now)
        self._schedule(now)

    # ------------------------------------------------------------------ gauges
    def gauges(self) -> list[tuple[int, int, float]]:
        """Per replica (running, waiting, kv_use 0..1) right now."""
        now = self._advance()
        self._notify(now)
        self._schedule(now)
        return [(len(r.running), len(r.waiting), r.kv_use()) for r in self.replicas]

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {"replicas": len(self.replicas), "max_num_seqs": p.max_num_seqs,
                "max_num_batched_tokens": p.max_num_batched_tokens, "block_size": p.block_size,
                "kv_cache_tokens": p.kv_blocks * p.block_size, "perf": p.perf.coefficients()}
