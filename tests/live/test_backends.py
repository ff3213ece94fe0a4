"""``publicai_lab.live.backends`` and the tiny model, against real vLLM servers (marked ``live``)
and against a fake vLLM (a small script standing in for the interpreter) for the process
handling: readiness, a crash before ready, SIGTERM → SIGKILL escalation, kill, restart, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from publicai_lab.errors import GatewayError, PublicAILabError
from publicai_lab.live import backends
from publicai_lab.live.backends import VLLMServer, free_port, start_all, stop_all
from publicai_lab.live.metrics import engine_gauges

from .conftest import SERVED_MODEL_NAME, requires_vllm

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------
# A fake vLLM: invoked as `FAKE -m vllm.entrypoints.openai.api_server --model M --host H --port P`,
# it records its argv, environment and CPU affinity, then behaves as FAKE_VLLM_MODE says.
FAKE_VLLM = textwrap.dedent(f"""\
    #!{sys.executable}
    import argparse, http.server, json, os, signal, subprocess, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("-m"); p.add_argument("--model"); p.add_argument("--host"); p.add_argument("--port", type=int)
    args, rest = p.parse_known_args()
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    with open(os.environ["FAKE_VLLM_RECORD"], "a") as f:
        f.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid(), "pgid": os.getpgid(0),
                            "env": dict(os.environ),
                            "affinity": sorted(os.sched_getaffinity(0))}}) + "\\n")
    if mode == "crash":
        print("RuntimeError: fake engine failed to start", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(3600)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"])
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY_S", "0.3")))

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({{"object": "list", "data": [{{"id": args.model}}]}}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    print("fake vLLM ready on", args.port, flush=True)
    http.server.HTTPServer((args.host, args.port), H).serve_forever()
""")


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    exe = tmp_path / "fake-python"
    exe.write_text(FAKE_VLLM)
    exe.chmod(0o755)
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    return exe, record


def _records(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def _group_alive(pgid: int) -> bool:
    """A live (non-zombie) process is still in the group: zombies wait for init to reap them."""
    return backends._group_alive(pgid)


def _get(url: str, timeout: float = 5.0) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


def test_fake_ready_kill_restart_stop(fake_vllm: tuple[Path, Path], tmp_path: Path) -> None:
    exe, record = fake_vllm
    server = VLLMServer(tmp_path, python=exe, served_model_name=["tiny", "alias"], cpus=[0],
                        extra_args=("--max-model-len", "512"), log_path=tmp_path / "srv.log",
                        env={"EXTRA_VAR": "x", "VLLM_CPU_KVCACHE_SPACE": "2"})
    with server:
        assert server.startup_s is not None and server.startup_s < 30
        assert _get(server.base_url + "/v1/models") == 200
        assert server.model_name == "tiny"
        rec = _records(record)[-1]
        assert rec["pgid"] == rec["pid"] == server.pid  # its own process group
        assert rec["argv"][:2] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert rec["argv"][-5:] == ["--served-model-name", "tiny", "alias", "--max-model-len", "512"]
        env = rec["env"]
        assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"  # the caller's env wins over the defaults
        assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"  # a local model dir
        assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0" and rec["affinity"] == [0]
        assert env["EXTRA_VAR"] == "x"
        rpc_dir = Path(env["VLLM_RPC_BASE_PATH"])      # vLLM's IPC sockets: a folder of this start's
        assert rpc_dir.is_dir()

        port, pid = server.port, server.pid
        server.kill()
        assert not server.running and not _group_alive(pid)
        assert not rpc_dir.exists()                   # nothing left in the temp folder
        with pytest.raises(OSError):
            _get(server.base_url + "/v1/models", timeout=2)
        server.restart()
        assert server.port == port and server.pid != pid
        assert _get(server.base_url + "/v1/models") == 200
        pid = server.pid
    assert not server.running and not _group_alive(pid)
    server.stop()  # twice is fine
    assert "fake vLLM ready" in server.log_tail()


# Python itself warns about the dropped object's open log and running process: expected here
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_forgotten_server_is_killed_with_its_sockets_folder(fake_vllm: tuple[Path, Path], tmp_path: Path) -> None:
    """A server object dropped while its server runs (a notebook cell re-run, an exception before
    stop) must not leave the process tree or its ZeroMQ sockets' folder behind."""
    import gc

    exe, record = fake_vllm
    server = VLLMServer(tmp_path, python=exe, log_path=tmp_path / "srv.log").start().wait_ready()
    pid, rpc_dir = server.pid, Path(_records(record)[-1]["env"]["VLLM_RPC_BASE_PATH"])
    assert pid is not None and _group_alive(pid) and rpc_dir.is_dir()
    del server
    gc.collect()
    deadline = time.monotonic() + 10
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(pid) and not rpc_dir.exists()


def test_hub_name_is_not_forced_offline(fake_vllm: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = VLLMServer("org/some-model").environment()
    assert "HF_HUB_OFFLINE" not in env and env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_crash_before_ready_raises_with_log_tail(fake_vllm: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    exe, _ = fake_vllm
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")
    server = VLLMServer("m", python=exe, log_path=tmp_path / "crash.log")
    with pytest.raises(GatewayError, match=r"(?s)exited with status 3.*fake engine failed"):
        with server:
            pass
    assert not server.running


def test_timeout_stops_the_server(fake_vllm: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
                                  ) -> None:
    exe, record = fake_vllm
    monkeypatch.setenv("FAKE_VLLM_MODE", "hang")
    server = VLLMServer("m", python=exe, startup_timeout_s=1.5)
    with pytest.raises(GatewayError, match="not ready after"):
        server.__enter__()
    assert not server.running and not _group_alive(_records(record)[-1]["pgid"])


def test_stop_escalates_to_sigkill_for_the_whole_group(fake_vllm: tuple[Path, Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    exe, record = fake_vllm
    monkeypatch.setenv("FAKE_VLLM_MODE", "stubborn")
    servers = [VLLMServer("m", python=exe) for _ in range(2)]
    start_all(servers)
    pgids = [s.pid for s in servers]
    t0 = time.monotonic()
    stop_all(servers, grace_s=1.0)
    assert time.monotonic() - t0 < 10
    assert not any(_group_alive(p) for p in pgids if p is not None)


def test_bad_cpu_list() -> None:
    with pytest.raises(GatewayError, match="cpus"):
        VLLMServer("m", cpus="all")


def test_api_cpus_needs_cpus() -> None:
    with pytest.raises(GatewayError, match="api_cpus needs cpus"):
        VLLMServer("m", api_cpus="0")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_api_server_moves_off_the_engine_core_once_ready(fake_vllm: tuple[Path, Path], tmp_path: Path) -> None:
    """``cpus`` for the whole tree at launch (the engine inherits it), ``api_cpus`` for the API
    process once ready: every one of its threads, and again after a restart."""
    exe, record = fake_vllm
    engine_cpu, api_cpu = sorted(os.sched_getaffinity(0))[:2]
    server = VLLMServer(tmp_path, python=exe, cpus=engine_cpu, api_cpus=api_cpu, log_path=tmp_path / "srv.log")
    with server:
        assert _records(record)[-1]["affinity"] == [engine_cpu]          # launched on the engine's CPU
        tids = os.listdir(f"/proc/{server.pid}/task")
        assert tids and all(os.sched_getaffinity(int(t)) == {api_cpu} for t in tids)
        assert server.environment()["VLLM_CPU_OMP_THREADS_BIND"] == str(engine_cpu)
        server.restart()
        assert os.sched_getaffinity(server.pid) == {api_cpu}


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


_CLI_DRIVER = (
    "import argparse, sys\n"
    "from publicai_lab.live import backends\n"
    "p = argparse.ArgumentParser(); sub = p.add_subparsers()\n"
    "backends.add_cli(sub)\n"
    "args, unknown = p.parse_known_args(sys.argv[1:])\n"
    "assert getattr(args, 'pass_unknown_args', False)\n"
    "args.unknown_args = unknown\n"
    "sys.exit(args.func(args))\n"
)


def test_cli_backend_runs_until_sigterm(fake_vllm: tuple[Path, Path], tmp_path: Path) -> None:
    exe, record = fake_vllm
    port = free_port()
    with subprocess.Popen(
            [sys.executable, "-c", _CLI_DRIVER, "backend", "--model", "m", "--port", str(port),
             "--python", str(exe), "--log", str(tmp_path / "cli.log"), "--max-model-len", "256"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            assert lines[1].startswith("ready in"), lines
            assert f"http://127.0.0.1:{port}/v1" in lines[1]
            rec = _records(record)[-1]
            assert rec["argv"][-2:] == ["--max-model-len", "256"]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert not _group_alive(rec["pgid"])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


# ------------------------------------------------------------------------------------------------
# The tiny model (needs torch/transformers, which come with vLLM).

@requires_vllm
def test_tiny_model_is_deterministic_and_reused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from publicai_lab.live.tiny_model import build_tiny_model, is_complete

    other = build_tiny_model(tmp_path / "m", seed=0)
    for f in sorted(p.name for p in tiny_model_dir.iterdir()):
        assert (other / f).read_bytes() == (tiny_model_dir / f).read_bytes(), f
    t0 = time.monotonic()
    assert build_tiny_model(other, seed=0) == other
    assert time.monotonic() - t0 < 1.0  # reused, not rebuilt
    assert is_complete(other, seed=0) and not is_complete(other, seed=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PublicAILabError, match="not a tiny model"):
        build_tiny_model(foreign)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok) == 512
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


# ------------------------------------------------------------------------------------------------
# Real vLLM servers (the session's two, from conftest.py).

@pytest.mark.live
@requires_vllm
class TestRealVLLM:
    def test_models_and_chat(self, vllm_servers: list[VLLMServer]) -> None:
        import httpx

        assert len(vllm_servers) == 2 and len({s.port for s in vllm_servers}) == 2
        for s in vllm_servers:
            models = httpx.get(s.base_url + "/v1/models", timeout=10).json()
            assert [m["id"] for m in models["data"]] == [SERVED_MODEL_NAME]
            r = httpx.post(s.base_url + "/v1/chat/completions", timeout=60, json={
                "model": SERVED_MODEL_NAME, "max_tokens": 8, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Hello there!"}]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert isinstance(body["choices"][0]["message"]["content"], str)
            assert body["usage"]["completion_tokens"] == 8

    def test_streamed_chat(self, vllm_servers: list[VLLMServer]) -> None:
        import httpx

        s = vllm_servers[0]
        chunks: list[dict] = []
        with httpx.stream("POST", s.base_url + "/v1/chat/completions", timeout=60, json={
                "model": SERVED_MODEL_NAME, "max_tokens": 16, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "Tell me a story."}]}) as r:
            assert r.status_code == 200
            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
        deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert sum(1 for d in deltas if d) >= 2  # tokens arrive in several chunks
        assert chunks[-1]["usage"]["completion_tokens"] == 16

    def test_metrics_running_then_abort_on_disconnect(self, vllm_servers: list[VLLMServer]) -> None:
        import httpx

        s = vllm_servers[0]
        idle = engine_gauges(httpx.get(s.base_url + "/metrics", timeout=10).text,
                             model_name=SERVED_MODEL_NAME)
        assert idle.running == 0 and idle.waiting == 0 and 0.0 <= idle.kv_use <= 1.0
        with httpx.stream("POST", s.base_url + "/v1/completions", timeout=60, json={
                "model": SERVED_MODEL_NAME, "prompt": "hello " * 100, "max_tokens": 1500,
                "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()  # keep a reference: a collected generator closes the stream
            assert next(lines).startswith("data: ")
            deadline = time.monotonic() + 3  # the gauges are updated just after a step's output
            while True:
                busy = engine_gauges(httpx.get(s.base_url + "/metrics", timeout=10).text)
                if busy.running or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        assert busy.running == 1 and busy.kv_use > 0.0, busy
        # closing the stream aborts the request in vLLM (what the gateway relies on)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            g = engine_gauges(httpx.get(s.base_url + "/metrics", timeout=10).text)
            if g.running == 0:
                break
            time.sleep(0.1)
        assert g.running == 0 and g.kv_use == 0.0

    def test_kill_then_restart(self, vllm_servers: list[VLLMServer]) -> None:
        import httpx

        s = vllm_servers[1]
        pid, port = s.pid, s.port
        assert pid is not None
        rpc_dir = Path(s.environment()["VLLM_RPC_BASE_PATH"])
        assert os.listdir(rpc_dir), "real vLLM put its ZeroMQ sockets in the server's own folder"
        s.kill()
        assert not s.running and not _group_alive(pid)
        assert not rpc_dir.exists()                   # a killed server leaves no sockets behind
        with pytest.raises(httpx.TransportError):
            httpx.get(s.base_url + "/v1/models", timeout=2)
        s.restart()
        assert s.port == port and s.pid != pid and s.startup_s is not None
        r = httpx.post(s.base_url + "/v1/completions", timeout=60, json={
            "model": SERVED_MODEL_NAME, "prompt": "after restart", "max_tokens": 4})
        assert r.status_code == 200, r.text
