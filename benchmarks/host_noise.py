"""How steady is this machine? Work-rate canaries pinned to one core, in short windows.

    python benchmarks/host_noise.py                 # CPU 1, 20 windows of 1.5 s per canary
    python benchmarks/host_noise.py --cpu 0 --windows 40

Why: a CPU vLLM server's speed drifts run to run even with its engine alone on a core
(``docs/fidelity.md``). These canaries say how much of that is the host. Each does one kind of
work over and over and reports its rate per window; the spread of the rates is the host's noise
for that kind of work:

- ``matmul-L2``: a 256×256 float32 matmul; its 0.75 MB working set stays in the core's own L2.
- ``python``: building 200 small dicts and serialising them, the allocation-heavy, pointer-chasing
  work of an engine's scheduler, tokenizer and HTTP server.
- ``matvec-16MB`` / ``matvec-64MB``: a batch of 4 rows times a 4M / 16M-entry float32 matrix, a
  decode step's weight streaming; the matrix lives in the shared L3 or in DRAM.

Run it with nothing else on the machine: the canaries measure the host, not your other work.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")     # one core: numpy's BLAS must not spread out

import numpy as np  # noqa: E402


def _python_work() -> None:
    json.dumps([{"a": i, "b": str(i)} for i in range(200)])


def canaries() -> dict[str, Callable[[], object]]:
    """name → one unit of work (arrays built once, outside the timed windows)."""
    rng = np.random.default_rng(0)
    small = rng.random((256, 256), dtype=np.float32)
    out: dict[str, Callable[[], object]] = {"matmul-L2": lambda: small @ small, "python": _python_work}
    for label, entries in (("matvec-16MB", 4_000_000), ("matvec-64MB", 16_000_000)):
        n = int(entries ** 0.5)
        w = rng.random((n, n), dtype=np.float32)
        x = rng.random((4, n), dtype=np.float32)
        out[label] = lambda w=w, x=x: x @ w
    return out


def rates_per_s(work: Callable[[], object], windows: int, window_s: float) -> np.ndarray:
    """Units of ``work`` done per second in each of ``windows`` consecutive windows."""
    rates = []
    for _ in range(windows):
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < window_s:
            work()
            n += 1
        rates.append(n / (time.perf_counter() - t0))
    return np.asarray(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cpu", type=int, default=1, help="core to pin to (default 1, the engine's core)")
    ap.add_argument("--windows", type=int, default=20, help="windows per canary (default 20)")
    ap.add_argument("--window-s", type=float, default=1.5, help="window length in seconds (default 1.5)")
    args = ap.parse_args()
    if args.windows < 2 or args.window_s <= 0:
        ap.error(f"--windows must be ≥ 2 and --window-s > 0; got {args.windows} and {args.window_s}")
    os.sched_setaffinity(0, {args.cpu})
    print(f"canaries pinned to CPU {args.cpu}, {args.windows} windows of {args.window_s} s each")
    print("| canary | median rate /s | ms per unit | range (max−min)/median | sd/mean | slowest window vs median |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, work in canaries().items():
        r = rates_per_s(work, args.windows, args.window_s)
        med = float(np.median(r))
        print(f"| {name} | {med:,.0f} | {1e3 / med:.3f} | {(r.max() - r.min()) / med:.1%} | {r.std() / r.mean():.1%} "
              f"| {r.min() / med - 1:+.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
