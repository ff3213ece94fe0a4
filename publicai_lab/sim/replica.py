"""One vLLM engine (a replica) with v1 scheduler semantics, advanced event to event.

What it models, as vLLM v1 does it:
- a FCFS waiting queue and a running set of at most ``max_num_seqs`` sequences;
- each step has a token budget ``max_num_batched_tokens``: every decoding sequence takes one
  token, then partially prefilled sequences continue their prompt, then waiting sequences are
  admitted in order (chunked prefill splits a long prompt over several steps);
- a paged KV cache of ``kv_blocks`` blocks of ``block_size`` tokens; when a running sequence
  needs a block and none is free, the most recently admitted sequence is preempted: its blocks
  are freed and it goes back to the head of the queue to be recomputed (prompt + what it had
  generated) — preemption by recompute;
- the step's duration comes from the perf model (``perf/step_time.py``).

How it stays fast (the simulator's budget is ~50 µs of CPU per request): it never steps token by
token. When only decoding sequences run, step i of the stretch takes ``a + b·i`` seconds (context
grows by one token per sequence per step), so the time of k steps is an arithmetic sum and the
replica jumps straight to the next event: a completion, a KV-cache exhaustion, or — when an
arrival could be admitted — the end of the step in progress. Per-sequence progress is implicit:
a decoding sequence has produced ``generated + (steps - join_step)`` tokens, where ``steps`` is the
replica's step counter, so a jump of k steps is O(1) however many sequences are running.

Reading order for newcomers: ``add`` (work arrives) → ``_boundary`` (what to run next) →
``_start_mixed_step`` / ``_start_decode_run`` → their ``_on_*_end`` callbacks.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any, Callable

import simpy

from publicai_lab.perf import EngineParams
from publicai_lab.sim.events import at

__all__ = ["Replica", "Seq"]

WAITING, PREFILL, DECODE, GONE = 0, 1, 2, 3
IDLE, STEP, RUN = 0, 1, 2


class Seq:
    """One request inside one replica. ``req`` is the owner's handle, passed back on callbacks."""

    __slots__ = ("req", "prompt_tokens", "output_tokens", "prefill_target", "computed", "generated",
                 "join_step", "done_step", "order", "state", "arrived_s", "admitted_s",
                 "first_token_s", "aborted", "preemptions")

    def __init__(self, req: Any, prompt_tokens: int, output_tokens: int, now: float) -> None:
        self.req = req
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.prefill_target = prompt_tokens   # tokens to (re)compute before the next token
        self.computed = 0                     # of prefill_target, computed so far
        self.generated = 0                    # output tokens produced before joining decode
        self.join_step = 0
        self.done_step = 0
        self.order = -1                       # admission order (preemption victim = highest)
        self.state = WAITING
        self.arrived_s = now
        self.admitted_s = math.nan
        self.first_token_s = math.nan
        self.aborted = False
        self.preemptions = 0


FinishCallback = Callable[[Seq, float], None]
RejectCallback = Callable[[Seq, float], None]


class Replica:
    """A simulated vLLM engine. ``on_finish(seq, t)`` is called when a sequence's last token is out."""

    def __init__(self, env: simpy.Environment, params: EngineParams, *, name: str,
                 on_finish: FinishCallback, on_reject: RejectCallback, scrape_interval_s: float = 5.0,
                 samples: list[tuple] | None = None, sample_key: tuple = ()) -> None:
        self.env = env
        self.name = name
        self.params = params
        p = params.perf
        self._c0, self._cp, self._cpp, self._cd, self._cc = (
            p.c0_s, p.c_prefill_s, p.c_prefill_sq_s, p.c_decode_s, p.c_ctx_s)
        self.max_num_seqs = params.max_num_seqs
        self.max_batched = params.max_num_batched_tokens
        self.bs = params.block_size
        self.kv_blocks = params.kv_blocks
        self.chunked = params.enable_chunked_prefill
        self.on_finish = on_finish
        self.on_reject = on_reject
        self.slowdown = 1.0                   # a slowdown fault's factor (sim/faults.py)
        self.jitter = 1.0                     # the speed's wandering over seconds (sim/jitter.py)

        self.waiting: deque[Seq] = deque()
        self.running: dict[int, Seq] = {}     # admission order -> seq (prefilling and decoding)
        self.prefilling: list[Seq] = []
        self.n_decode = 0
        self.ctx_a = 0                        # Σ(prefill_target + 1 - join_step) over decoding seqs:
        #                                       context of the decode step after step s = ctx_a + n·s
        self.prefill_kv = 0                   # Σ computed over prefilling seqs
        self.heap: list[tuple[int, int, Seq]] = []
        self.steps = 0
        self._next_order = 0
        self._pending_aborts = 0

        self.mode = IDLE
        self._token = 0
        self._run_start_s = 0.0
        self._run_k = 0
        self._run_a = 0.0
        self._run_b = 0.0
        self._run_f = 1.0                     # speed factor the current decode run was timed with
        self._chunks: list[tuple[Seq, int]] = []

        self.up = True
        self.busy_s = 0.0
        self._busy_since = 0.0
        self.preemptions = 0

        # lazily sampled gauges: the value at the last scrape boundary, and the time series
        self._interval = scrape_interval_s
        self._epoch = -1
        self._scraped = (0, 0, 0.0)
        self._samples = samples
        self._sample_key = sample_key

    # ------------------------------------------------------------------ gauges
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def load(self) -> int:
        """Sequences held (running + waiting): what a cluster-local balancer compares."""
        return len(self.running) + len(self.waiting)

    def kv_use(self) -> float:
        """KV-cache use 0..1, from token counts (+ half a block per sequence for the partial block)."""
        if not self.running:
            return 0.0
        tokens = self.ctx_a + self.n_decode * self.steps + self.prefill_kv
        return min(1.0, (tokens / self.bs + 0.5 * len(self.running)) / self.kv_blocks)

    def _touch(self, now: float) -> None:
        """Call before any state change: freezes the gauges seen at the last scrape boundary."""
        epoch = int(now / self._interval)
        if epoch > self._epoch:
            self._scraped = (len(self.running), len(self.waiting), self.kv_use())
            self._epoch = epoch
            if self._samples is not None:
                self._samples.append((epoch * self._interval, *self._sample_key, *self._scraped))

    def scraped(self, now: float) -> tuple[int, int, float]:
        """(running, waiting, kv_use) as the last metrics scrape at or before ``now`` saw them."""
        if int(now / self._interval) > self._epoch:
            return (len(self.running), len(self.waiting), self.kv_use())
        return self._scraped

    def tokens_out(self, seq: Seq, now: float) -> int:
        """Output tokens ``seq`` has produced by ``now`` (a sequence still in this replica).

        For streaming on a real-time clock (live/emulator_engine.py): inside a decode run the
        run's finished steps are not yet in ``self.steps``, so count them from the run's start.
        """
        if seq.state != DECODE:
            return min(seq.generated, seq.output_tokens)
        n = seq.generated + self.steps - seq.join_step
        if self.mode == RUN:
            n += min(self._run_k, self._steps_done_by(now - self._run_start_s + 1e-9))
        return min(n, seq.output_tokens)

    def next_step_end_s(self, now: float) -> float:
        """When the decode step in progress ends (inf outside a decode run); mixed steps and
        run ends are SimPy events already."""
        if self.mode != RUN:
            return math.inf
        done = self._steps_done_by(now - self._run_start_s + 1e-9)
        if done >= self._run_k:
            return math.inf
        return self._run_start_s + self._run_time(done + 1)

    # ------------------------------------------------------------------ inputs
    def add(self, req: Any, prompt_tokens: int, output_tokens: int) -> Seq:
        """A request reaches this engine. Returns its sequence handle (for ``abort``)."""
        now = self.env.now
        self._touch(now)
        seq = Seq(req, prompt_tokens, output_tokens, now)
        self.waiting.append(seq)
        if self.mode == IDLE:
            self._set_busy(now)
            self._boundary(now)
        elif self.mode == RUN and len(self.running) < self.max_num_seqs:
            self._truncate_run(now)
        return seq

    def abort(self, seq: Seq) -> None:
        """Drop a sequence (client timeout or disconnect); vLLM frees it at the next step."""
        if seq.state == GONE or seq.aborted:
            return
        now = self.env.now
        self._touch(now)
        if seq.state == WAITING:
            self.waiting.remove(seq)
            seq.state = GONE
            return
        seq.aborted = True
        self._pending_aborts += 1
        if self.mode == RUN:
            self._truncate_run(now)

    def fail_all(self) -> list[Any]:
        """The engine dies: every sequence is lost. Returns the owners' handles, running first."""
        now = self.env.now
        self._touch(now)
        lost = [s for s in self.running.values()] + list(self.waiting)
        for s in lost:
            s.state = GONE
        self.waiting.clear()
        self.running.clear()
        self.prefilling.clear()
        self.heap.clear()
        self.n_decode = self.ctx_a = self.prefill_kv = 0
        self._pending_aborts = 0
        self._token += 1
        if self.mode != IDLE:
            self.busy_s += now - self._busy_since
        self.mode = IDLE
        return [s.req for s in lost if not s.aborted]

    # ------------------------------------------------------------------ scheduling
    def _set_busy(self, now: float) -> None:
        self._busy_since = now

    def _go_idle(self, now: float) -> None:
        self.busy_s += now - self._busy_since
        self.mode = IDLE

    def _boundary(self, now: float) -> None:
        """At a step boundary with nothing in flight: choose the next step or stretch of steps."""
        if self._pending_aborts:
            self._drop_aborted()
        if not self.running and not self.waiting:
            self._go_idle(now)
            return
        if self.prefilling or (self.waiting and len(self.running) < self.max_num_seqs):
            if self._start_mixed_step(now):
                return
        if self.n_decode:
            self._start_decode_run(now)
            return
        # only waiting sequences that cannot be admitted: impossible unless the cache is too small
        if self.waiting and not self.running:
            seq = self.waiting.popleft()
            seq.state = GONE
            self._touch(now)
            self.on_reject(seq, now)   # its prompt alone is larger than the whole KV cache
            self._boundary(now)
            return
        self._go_idle(now)

    def _drop_aborted(self) -> None:
        for order, seq in list(self.running.items()):
            if seq.aborted:
                self._remove_running(seq)
        self._pending_aborts = 0

    def _remove_running(self, seq: Seq) -> None:
        del self.running[seq.order]
        if seq.state == DECODE:
            self.n_decode -= 1
            self.ctx_a -= seq.prefill_target + 1 - seq.join_step
        elif seq.state == PREFILL:
            self.prefilling.remove(seq)
            self.prefill_kv -= seq.computed
        seq.state = GONE

    def _exact_blocks(self, decode_ahead: int, extra: dict[int, int] | None = None) -> int:
        """Blocks needed if every decoding sequence holds ``decode_ahead`` more tokens and each
        sequence in ``extra`` (order -> tokens) grows by that many."""
        bs = self.bs
        s = self.steps
        total = 0
        for seq in self.running.values():
            if seq.state == DECODE:
                total += -(-(seq.prefill_target + s - seq.join_step + decode_ahead) // bs)
            else:
                add = extra.get(seq.order, 0) if extra else 0
                total += -(-(seq.computed + add) // bs)
        return total

    def _preempt_one(self, now: float) -> bool:
        """Preempt the most recently admitted running sequence (recompute). False if none."""
        if not self.running:
            return False
        order = next(reversed(self.running))
        seq = self.running[order]
        produced = seq.generated + (self.steps - seq.join_step if seq.state == DECODE else 0)
        self._remove_running(seq)
        seq.state = WAITING
        seq.generated = produced
        seq.prefill_target = seq.prompt_tokens + produced
        seq.computed = 0
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)
        return True

    def _start_mixed_step(self, now: float) -> bool:
        """Compose one step with prefill work (v1 order: decodes, partial prefills, new admissions)."""
        budget = self.max_batched - self.n_decode
        bs = self.bs
        # make room for every decoding sequence's next token first (preempting if the cache is full)
        while self.n_decode and self._kv_tight(self.n_decode) and self._exact_blocks(1) > self.kv_blocks:
            self._preempt_one(now)
        chunks: list[tuple[Seq, int]] = []
        new_tokens = self.n_decode
        extra: dict[int, int] = {}
        for seq in self.prefilling:
            if budget <= 0:
                break
            c = min(seq.prefill_target - seq.computed, budget)
            if self._kv_tight(new_tokens + c + len(self.running)):
                extra[seq.order] = c
                if self._exact_blocks(1, extra) > self.kv_blocks:
                    del extra[seq.order]
                    break
            chunks.append((seq, c))
            extra[seq.order] = c
            budget -= c
            new_tokens += c
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            c = min(seq.prefill_target, budget)
            if c < seq.prefill_target and not self.chunked:
                break
            need_blocks = -(-c // bs)
            if self._kv_tight(new_tokens + c + len(self.running) + 1):
                if self._exact_blocks(1, extra) + need_blocks > self.kv_blocks:
                    break
            self.waiting.popleft()
            seq.state = PREFILL
            seq.order = self._next_order
            self._next_order += 1
            self.running[seq.order] = seq
            self.prefilling.append(seq)
            if seq.admitted_s != seq.admitted_s:   # NaN: first admission
                seq.admitted_s = now
            chunks.append((seq, c))
            extra[seq.order] = c
            budget -= c
            new_tokens += c
        if not chunks:
            return False
        prefill = 0
        prefill_sq = 0
        ctx = self.ctx_a + self.n_decode * self.steps
        for seq, c in chunks:
            prefill += c
            done = seq.computed
            prefill_sq += (done + c) * (done + c) - done * done
            ctx += done
        dt = self.slowdown * self.jitter * (self._c0 + self._cp * prefill + self._cpp * prefill_sq
                              + self._cd * self.n_decode + self._cc * ctx)
        self._chunks = chunks
        self.mode = STEP
        self._token += 1
        at(self.env, dt, self._on_mixed_step_end, self._token)
        return True

    def _kv_tight(self, new_tokens: int) -> bool:
        """Cheap upper bound: could ``new_tokens`` more tokens overflow the cache? (then check exactly)"""
        tokens = self.ctx_a + self.n_decode * self.steps + self.prefill_kv + new_tokens
        return tokens / self.bs + len(self.running) + 1 > self.kv_blocks

    def _on_mixed_step_end(self, ev: simpy.Event) -> None:
        if ev._value != self._token:
            return
        now = self.env.now
        self._touch(now)
        self.steps += 1
        steps = self.steps
        for seq, c in self._chunks:
            if seq.state != PREFILL:
                continue
            seq.computed += c
            self.prefill_kv += c
            if seq.computed >= seq.prefill_target:
                self.prefilling.remove(seq)
                self.prefill_kv -= seq.computed
                seq.generated += 1
                if seq.first_token_s != seq.first_token_s:
                    seq.first_token_s = now
                if seq.generated >= seq.output_tokens or seq.aborted:
                    del self.running[seq.order]
                    seq.state = GONE
                    if seq.aborted:
                        self._pending_aborts -= 1
                    else:
                        self.on_finish(seq, now)
                    continue
                seq.state = DECODE
                seq.join_step = steps
                seq.done_step = steps + seq.output_tokens - seq.generated
                self.n_decode += 1
                self.ctx_a += seq.prefill_target + 1 - steps
                heapq.heappush(self.heap, (seq.done_step, seq.order, seq))
        self._chunks = []
        self._complete_due(now)
        self._boundary(now)

    def _complete_due(self, now: float) -> None:
        heap = self.heap
        steps = self.steps
        while heap and heap[0][0] <= steps:
            done_step, order, seq = heapq.heappop(heap)
            if seq.state != DECODE or seq.order != order or seq.done_step != done_step:
                continue   # stale entry (preempted or aborted since)
            del self.running[order]
            self.n_decode -= 1
            self.ctx_a -= seq.prefill_target + 1 - seq.join_step
            seq.state = GONE
            if seq.aborted:
                self._pending_aborts -= 1
            else:
                self.on_finish(seq, now)

    def _clean_heap_top(self) -> None:
        heap = self.heap
        while heap:
            done_step, order, seq = heap[0]
            if seq.state == DECODE and seq.order == order and seq.done_step == done_step:
                return
            heapq.heappop(heap)

    def _start_decode_run(self, now: float) -> None:
        """Only decoding sequences: jump to the next completion or KV exhaustion."""
        self._clean_heap_top()
        n = self.n_decode
        s0 = self.steps
        k = self.heap[0][0] - s0
        if self._kv_tight(n * k):
            k = self._max_steps_fitting(k)
            if k == 0:
                # not even one more token fits: preempt (recompute) and let the scheduler re-plan
                self._preempt_one(now)
                self._boundary(now)
                return
        a = self._c0 + self._cd * n + self._cc * (self.ctx_a + n * s0)
        b = self._cc * n
        self._run_a, self._run_b = a, b
        self._run_f = self.slowdown * self.jitter
        self._run_k = k
        self._run_start_s = now
        self.mode = RUN
        self._token += 1
        at(self.env, self._run_time(k), self._on_run_end, self._token)

    def _max_steps_fitting(self, k_max: int) -> int:
        """Largest k <= k_max such that k decode steps fit in the KV cache (binary search)."""
        if self._exact_blocks(k_max) <= self.kv_blocks:
            return k_max
        lo, hi = 0, k_max          # fits(lo) is true for lo=0 by construction of the caller's loop
        if self._exact_blocks(1) > self.kv_blocks:
            return 0
        lo = 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._exact_blocks(mid) <= self.kv_blocks:
                lo = mid
            else:
                hi = mid
        return lo

    def _run_time(self, k: int) -> float:
        return self._run_f * (self._run_a * k + self._run_b * k * (k - 1) * 0.5)

    def _steps_done_by(self, elapsed: float) -> int:
        """Whole steps of the current run finished ``elapsed`` seconds after it started."""
        a, b, f = self._run_a, self._run_b, self._run_f
        e = elapsed / f
        if b <= 0.0:
            k = int(e / a)
        else:
            h = a - 0.5 * b
            k = int((-h + math.sqrt(h * h + 2.0 * b * e)) / b)
        while k > 0 and self._run_time(k) > elapsed:
            k -= 1
        while self._run_time(k + 1) <= elapsed:
            k += 1
        return k

    def speed_changed(self, now: float) -> None:
        """``slowdown`` or ``jitter`` changed: a decode run in progress was timed at the old speed,
        so end it at its next step boundary; the steps after run at the new speed. A step with
        prefill in progress keeps its duration (a step is not interrupted)."""
        if self.mode == RUN:
            self._truncate_run(now)

    def _truncate_run(self, now: float) -> None:
        """Something needs the scheduler: end the current decode run at the next step boundary."""
        k_new = self._steps_done_by(now - self._run_start_s) + 1
        if k_new >= self._run_k:
            return
        self._run_k = k_new
        self._token += 1
        end = self._run_start_s + self._run_time(k_new)
        at(self.env, max(0.0, end - now), self._on_run_end, self._token)

    def _on_run_end(self, ev: simpy.Event) -> None:
        if ev._value != self._token:
            return
        now = self.env.now
        self._touch(now)
        self.steps += self._run_k
        self._complete_due(now)
        self._boundary(now)
