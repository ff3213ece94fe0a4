#!/usr/bin/env python3
"""What the gateway adds: latency over going direct, throughput and CPU per request, vs LiteLLM.

    python benchmarks/gateway_overhead.py                      # ours (3 upstream clients) + LiteLLM
    python benchmarks/gateway_overhead.py --gateways publicai --quick

One run: three zero-latency fake OpenAI backends (``fake_backend.py`` of the shared gateway
benchmark, started as subprocesses, 16-chunk streams), then for each gateway (started as a
subprocess with one worker) and each phase, a closed-loop load measured DIRECT (backend #1) and
THROUGH the gateway back to back:

* ``cN``  non-streaming at concurrency N -> requests/s, latency p50/p99 (added = gateway - direct)
* ``sN``  streaming (16 chunks) at concurrency N -> streams/s, time to first content chunk p50/p99

plus the gateway's CPU time per request (from ``/proc``, robust to the other jobs on the machine)
and ``capacity`` = 1 / CPU-per-request: the request rate one core could sustain. The measured
rate is bounded by the driver and the backends, which share CPU 1 (the gateway has CPU 0 to
itself), so ``capacity`` is the figure to compare with the target. ``noise`` is the CPU used by
processes outside the benchmark during a phase (cores).

Gateways (``--gateways``, comma list):

* ``publicai``         our gateway, raw asyncio+httptools upstream client, policy least_in_flight
* ``publicai-aiohttp`` the same with aiohttp's client upstream
* ``publicai-httpx``   the same with httpx's client upstream (what the issue asked for first)
* ``litellm``          LiteLLM's proxy (``--litellm-version``, default 1.110.2) in its own venv,
                       built by this script on first use; ``routing_strategy: simple-shuffle``,
                       ``num_retries 3``, ``allowed_fails 1``, ``cooldown_time 60``, telemetry off,
                       static master key, no database (production does more per request)

Targets (issue 3), with a real policy active: added p50 <= 1 ms and p99 <= 3 ms at concurrency 1;
>= 2,000 requests/s and >= 800 streams/s on one core; CPU per request <= 0.5 ms.

Last full run (2026-11-26, quiet machine: noise 0.0 cores in almost every phase; 2 vCPU AMD EPYC,
Python 3.11, medians of 3 x 5 s; ``added`` = gateway minus direct, paired per repeat):

=====================  ===========  ===============  ================  ===============  ===============
figure                 direct       publicai (raw)   publicai-aiohttp  publicai-httpx   LiteLLM 1.110.2
=====================  ===========  ===============  ================  ===============  ===============
c1 added p50 / p99     0.11 / 0.23  +0.28 / +0.43    +0.38 / +0.50     +0.95 / +1.53    +14.0 / +20.8
s1 added TTFC p50/p99  0.11 / 0.31  +0.31 / +0.41    +0.40 / +0.47     +0.79 / +1.45    +13.1 / +22.8
c32 / c128 req/s       17.8k/15.4k  10.3k / 9.0k     5.5k / 5.3k       468 / 415        96 / 102
s32 / s128 streams/s   3.9k / 3.8k  4.9k / 5.0k      3.8k / 3.9k       397 / 207        34 / 27
CPU ms/req c32/c1/s32               0.10/0.23/0.18   0.18/0.34/0.25    2.1/0.99/2.5     10.0/14.2/26.4
gateway cores at c32                0.98             0.99              1.00             1.00
=====================  ===========  ===============  ================  ===============  ===============

(ms unless stated. Streams through a gateway beat "direct" because direct is one backend process
and the gateway spreads them over three. httpx's pool costs 2-4 ms per request at concurrency >= 32,
hence the raw client.)

The driver is a closed-loop asyncio client (uvloop) on ``publicai_lab.live.upstream.RawUpstream``,
cheap enough per request that at ~10,000 requests/s CPU 1 (driver + backends) still keeps up with
a saturated gateway core (check ``gateway_cores`` in the JSON: ~1.0 means the gateway was the
bottleneck). Results: a table on stdout and all
figures as JSON (``--out``). Processes started here are stopped by their own PID at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "bench" / "gateway"
FAKE_BACKEND = SHARED / "fake_backend.py"
CLK = os.sysconf("SC_CLK_TCK")
MODEL = "fake-model"
API_KEY = "sk-bench-master"
CONTENT_RE = re.compile(rb'"content"\s*:\s*"[^"]')
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True", "DISABLE_SCHEMA_UPDATE": "True", "HF_HUB_OFFLINE": "1",
               "NO_PROXY": "127.0.0.1,localhost"}

_children: list[subprocess.Popen] = []


def log(*a: Any) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# processes


def start(cmd: list[str], *, cpus: str | None, logfile: Path, env: dict | None = None) -> subprocess.Popen:
    if cpus and cpus != "none":
        cmd = ["taskset", "-c", cpus, *cmd]
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(cmd, stdout=open(logfile, "ab"), stderr=subprocess.STDOUT, env=e, start_new_session=True)
    _children.append(p)
    log(f"started pid={p.pid}: {' '.join(cmd)}")
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)  # its own session: the group is just it and its children
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        except ProcessLookupError:
            pass
    if p in _children:
        _children.remove(p)


def cleanup() -> None:
    for p in reversed(list(_children)):
        stop(p)


def http_ok(url: str, body: bytes | None = None, timeout: float = 3.0) -> bool:
    hdr = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    try:
        req = urllib.request.Request(url, data=body, headers=hdr, method="POST" if body else "GET")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


def wait_ready(base: str, proc: subprocess.Popen | None, timeout_s: float = 180.0) -> float:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 4}).encode()
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited rc={proc.returncode} before it was ready")
        if http_ok(base + "/v1/chat/completions", body):
            return time.time() - t0
        time.sleep(0.2)
    raise RuntimeError(f"{base} not ready after {timeout_s} s")


def proc_tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
                kids.setdefault(int(s[s.rindex(")") + 2:].split()[1]), []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_s(pids: list[int]) -> float:
    tot = 0
    for p in pids:
        try:
            s = open(f"/proc/{p}/stat").read()
            f = s[s.rindex(")") + 2:].split()
            tot += int(f[11]) + int(f[12])
        except (OSError, ValueError):
            pass
    return tot / CLK


def busy_s() -> float:
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK


# --------------------------------------------------------------------------------------------
# LiteLLM in its own venv


def litellm_venv(path: Path, version: str) -> Path:
    """A venv with ``litellm[proxy]==version``. The package index here lacks the exact
    ``litellm-proxy-extras`` / ``litellm-enterprise`` pins of the [proxy] extra (and
    ``litellm-proxy`` itself, whose code ships inside the ``litellm`` wheel anyway), so on failure
    the extra's other requirements are installed from the wheel's metadata with those relaxed."""
    py = path / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", f"import importlib.metadata as m; "
                                       f"assert m.version('litellm') == '{version}'; import uvloop, orjson"],
                                      capture_output=True).returncode == 0:
        return path
    log(f"building LiteLLM {version} venv at {path} (a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "pip"), "install", "-q"]
    if subprocess.run([*pip, f"litellm[proxy]=={version}"]).returncode != 0:
        import zipfile

        tmp = Path(tempfile.mkdtemp())
        subprocess.run([str(path / "bin" / "pip"), "download", "-q", "--no-deps", "-d", str(tmp),
                        f"litellm=={version}"], check=True)
        wheel = next(tmp.glob("litellm-*.whl"))
        z = zipfile.ZipFile(wheel)
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        reqs = []
        for line in meta.splitlines():
            if line.startswith("Requires-Dist:") and "extra == 'proxy'" in line:
                req = line.split(":", 1)[1].split(";")[0].strip()
                name = re.split(r"[ <>=!~\[(]", req, maxsplit=1)[0].lower()
                if name == "litellm-proxy":
                    continue
                reqs.append(name if name in ("litellm-proxy-extras", "litellm-enterprise") else req)
        subprocess.run([*pip, str(wheel), *reqs], check=True)
    subprocess.run([*pip, "uvicorn", "uvloop", "httptools", "orjson"], check=True)
    return path


def litellm_config(ports: list[int], path: Path) -> Path:
    lines = ["model_list:"]
    for i, p in enumerate(ports):
        lines += [f"  - model_name: {MODEL}", "    litellm_params:", f"      model: openai/{MODEL}",
                  f"      api_base: http://127.0.0.1:{p}/v1", "      api_key: sk-fake-backend",
                  "    model_info:", f"      id: fake-b{i + 1}", "      input_cost_per_token: 0.0",
                  "      output_cost_per_token: 0.0"]
    lines += ["router_settings:", "  routing_strategy: simple-shuffle", "  num_retries: 3", "  allowed_fails: 1",
              "  cooldown_time: 60", "litellm_settings:", "  telemetry: false", "general_settings:",
              f"  master_key: {API_KEY}"]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# the driver (runs in its own process, pinned with the backends)


async def _drive(url: str, concurrency: int, stream: bool, duration: float, warmup: float, chunks: int,
                 watch_pid: int | None) -> dict:
    from publicai_lab.live.upstream import Origin, RawUpstream, UpstreamError

    origin = Origin(url)
    client = RawUpstream()
    msg = [{"role": "user", "content": "Say hello in sixteen words."}]
    body = json.dumps({"model": MODEL, "messages": msg, "max_tokens": 16, "stream": stream}).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {API_KEY}".encode())]
    target = origin.prefix.encode() + b"/v1/chat/completions"
    now = time.perf_counter
    t_begin = now()
    t_meas, t_end = t_begin + warmup, t_begin + warmup + duration
    lat: list[float] = []
    ttfc: list[float] = []
    errors: dict[str, int] = {}
    total = [0]
    marks: dict[str, float] = {}

    async def one() -> None:
        t0 = now()
        first = None
        try:
            resp = await client.request(origin, b"POST", target, body, headers, timeout_s=60.0)
            status = resp.status
            if stream:
                buf = b""
                while True:
                    piece = await resp.next_chunk()
                    if piece is None:
                        break
                    buf += piece
                    if first is None and CONTENT_RE.search(buf):
                        first = now() - t0
                ok = status == 200 and b"[DONE]" in buf and len(CONTENT_RE.findall(buf)) == chunks
            else:
                data = await resp.read()
                ok = status == 200 and b'"choices"' in data
            resp.release()
            err = None if ok else f"http_{status}" if status != 200 else "bad_body"
        except UpstreamError as exc:
            err = type(exc).__name__
        t1 = now()
        total[0] += 1
        if t_meas <= t1 <= t_end:
            if err is None:
                lat.append(t1 - t0)
                if first is not None:
                    ttfc.append(first)
            else:
                errors[err] = errors.get(err, 0) + 1

    async def worker() -> None:
        while now() < t_end:
            await one()

    loop = asyncio.get_running_loop()

    def mark(name: str) -> None:
        marks[name + "_busy"] = busy_s()
        marks[name + "_gw"] = cpu_s(proc_tree(watch_pid)) if watch_pid else 0.0
        marks[name + "_total"] = total[0]
        marks[name + "_t"] = now()

    loop.call_later(warmup, mark, "start")
    loop.call_later(warmup + duration, mark, "end")
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.aclose()
    if "end" not in marks:
        mark("end")
    window = marks["end_t"] - marks["start_t"]
    done = marks["end_total"] - marks["start_total"]
    out = {"window_s": round(window, 3), "ok": len(lat), "errors": errors, "rps": round(len(lat) / duration, 1),
           "latency": summarize(lat)}
    if stream:
        out["ttfc"] = summarize(ttfc)
    out["busy_cores"] = round((marks["end_busy"] - marks["start_busy"]) / window, 3)
    if watch_pid:
        gw = marks["end_gw"] - marks["start_gw"]
        out["gateway_cpu_s"] = round(gw, 3)
        out["gateway_cores"] = round(gw / window, 3)
        out["gateway_cpu_ms_per_req"] = round(1000.0 * gw / done, 4) if done else None
    out["completed_in_window"] = done
    return out


def summarize(vals: list[float]) -> dict:
    if not vals:
        return {"n": 0}
    v = sorted(vals)

    def q(p: float) -> float:
        k = (len(v) - 1) * p
        f = int(k)
        c = min(f + 1, len(v) - 1)
        return round((v[f] + (v[c] - v[f]) * (k - f)) * 1000.0, 3)

    return {"n": len(v), "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": round(v[-1] * 1000, 3)}


def driver_main(spec: dict) -> None:
    import uvloop

    if spec.get("cpus") not in (None, "none"):
        os.sched_setaffinity(0, {int(c) for c in spec["cpus"].split(",")})
    res = uvloop.run(_drive(spec["url"], spec["concurrency"], spec["stream"], spec["duration"], spec["warmup"],
                            spec["chunks"], spec.get("watch_pid")))
    print(json.dumps(res))


def run_phase(url: str, phase: str, a: argparse.Namespace, watch_pid: int | None, own_pids: list[int]) -> dict:
    stream = phase[0] == "s"
    spec = {"url": url, "concurrency": int(phase[1:]), "stream": stream, "duration": a.duration, "warmup": a.warmup,
            "chunks": a.chunks, "watch_pid": watch_pid, "cpus": a.client_cpus}
    import resource

    def children_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children: the drivers
        return ru.ru_utime + ru.ru_stime

    own0 = cpu_s([p for pid in own_pids for p in proc_tree(pid)]) + children_cpu()
    busy0, t0 = busy_s(), time.time()
    out = subprocess.run([sys.executable, __file__, "--_driver", json.dumps(spec)], capture_output=True, text=True,
                         timeout=a.duration + a.warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(f"driver failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    wall = time.time() - t0
    own = cpu_s([p for pid in own_pids for p in proc_tree(pid)]) + children_cpu() - own0
    res["noise_cores"] = round(max(0.0, busy_s() - busy0 - own) / wall, 2)
    return res


# --------------------------------------------------------------------------------------------
# orchestration and report


def gateway_cmd(name: str, a: argparse.Namespace, port: int, backend_urls: list[str], tmp: Path) -> tuple[list, dict]:
    if name.startswith("publicai"):
        upstream = name.split("-", 1)[1] if "-" in name else "raw"
        return ([sys.executable, "-m", "publicai_lab.live.gateway", "--backend", ",".join(backend_urls),
                 "--port", str(port), "--policy", a.policy, "--upstream", upstream],
                {"PYTHONPATH": str(ROOT)})
    if name == "litellm":
        venv = litellm_venv(Path(a.litellm_venv), a.litellm_version)
        cfg = litellm_config([int(u.rsplit(":", 1)[1].split("/")[0]) for u in backend_urls], tmp / "litellm.yaml")
        return ([str(venv / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                 "--num_workers", "1"], OFFLINE_ENV)
    if name == "null":
        return ([sys.executable, str(SHARED / "null_gateway.py"), "--port", str(port)],
                {"BACKEND_URLS": ",".join(backend_urls)})
    raise SystemExit(f"unknown gateway {name!r}")


def med(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def aggregate(runs: list[dict], direct: list[dict]) -> dict:
    def col(rs: list[dict], *path: str) -> list:
        out = []
        for r in rs:
            x: Any = r
            for k in path:
                x = x.get(k) if isinstance(x, dict) else None
            out.append(x)
        return out

    agg = {"rps": med(col(runs, "rps")), "p50_ms": med(col(runs, "latency", "p50_ms")),
           "p99_ms": med(col(runs, "latency", "p99_ms")), "ttfc_p50_ms": med(col(runs, "ttfc", "p50_ms")),
           "ttfc_p99_ms": med(col(runs, "ttfc", "p99_ms")),
           "cpu_ms_per_req": med(col(runs, "gateway_cpu_ms_per_req")), "gateway_cores": med(col(runs, "gateway_cores")),
           "errors": sum(sum((r.get("errors") or {}).values()) for r in runs), "noise_cores": med(col(runs, "noise_cores"))}
    for key, path in (("added_p50_ms", ("latency", "p50_ms")), ("added_p99_ms", ("latency", "p99_ms")),
                      ("added_ttfc_p50_ms", ("ttfc", "p50_ms")), ("added_ttfc_p99_ms", ("ttfc", "p99_ms"))):
        diffs = [(g - d) if g is not None and d is not None else None for g, d in zip(col(runs, *path), col(direct, *path))]
        agg[key] = med(diffs)
    cpu = agg["cpu_ms_per_req"]
    agg["capacity_rps_one_core"] = round(1000.0 / cpu) if cpu else None
    return agg


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 100 else f"{x:,.0f}"
    return str(x)


def table(results: dict, phases: list[str]) -> str:
    lines = ["| phase | target | req/s | p50 ms | p99 ms | added p50 / p99 ms | TTFC p50 / p99 ms | added TTFC p50 / p99 ms "
             "| CPU ms/req | gateway cores | capacity req/s (1 core) | noise cores |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ph in phases:
        d = results["direct"][ph]
        lines.append(f"| {ph} | direct | {fmt(d['rps'])} | {fmt(d['p50_ms'])} | {fmt(d['p99_ms'])} | | "
                     f"{fmt(d['ttfc_p50_ms'])} / {fmt(d['ttfc_p99_ms'])} | | | | | {fmt(d['noise_cores'])} |")
        for name, res in results["gateways"].items():
            g = res["phases"].get(ph)
            if g is None:
                continue
            lines.append(f"| {ph} | {name} | {fmt(g['rps'])} | {fmt(g['p50_ms'])} | {fmt(g['p99_ms'])} | "
                         f"{fmt(g['added_p50_ms'])} / {fmt(g['added_p99_ms'])} | "
                         f"{fmt(g['ttfc_p50_ms'])} / {fmt(g['ttfc_p99_ms'])} | "
                         f"{fmt(g['added_ttfc_p50_ms'])} / {fmt(g['added_ttfc_p99_ms'])} | {fmt(g['cpu_ms_per_req'], 3)} | "
                         f"{fmt(g['gateway_cores'])} | {fmt(g['capacity_rps_one_core'])} | {fmt(g['noise_cores'])} |" + (
                             f" errors {g['errors']}" if g["errors"] else ""))
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--_driver":
        driver_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", default="publicai,publicai-aiohttp,publicai-httpx,litellm")
    ap.add_argument("--phases", default="c1,c32,c128,s1,s32,s128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    ap.add_argument("--quick", action="store_true", help="1 repeat of 3 s")
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--policy", default="least_in_flight", help="our gateway's routing policy")
    ap.add_argument("--backend-ports", default="8211,8212,8213")
    ap.add_argument("--gateway-port", type=int, default=4110)
    ap.add_argument("--gateway-cpus", default="0")
    ap.add_argument("--backend-cpus", default="1")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--litellm-version", default="1.110.2")
    ap.add_argument("--litellm-venv", default=os.path.join(tempfile.gettempdir(), "publicai-litellm-venv"))
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "gateway_overhead.json"))
    ap.add_argument("--log-dir", default=os.path.join(tempfile.gettempdir(), "publicai-gateway-bench-logs"))
    a = ap.parse_args()
    if a.quick:
        a.repeats, a.duration = 1, 3.0
    if not FAKE_BACKEND.exists():
        raise SystemExit(f"needs the shared fake backend at {FAKE_BACKEND}")
    atexit.register(cleanup)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: sys.exit(130))
    logdir = Path(a.log_dir)
    logdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    ports = [int(p) for p in a.backend_ports.split(",")]
    backend_urls = [f"http://127.0.0.1:{p}/v1" for p in ports]
    backends = []
    for p in ports:
        backends.append(start([sys.executable, str(FAKE_BACKEND), "--port", str(p), "--chunks", str(a.chunks)],
                              cpus=a.backend_cpus, logfile=logdir / f"backend-{p}.log"))
    for p in ports:
        t0 = time.time()
        while not http_ok(f"http://127.0.0.1:{p}/health"):
            if time.time() - t0 > 30:
                raise SystemExit(f"backend :{p} did not start")
            time.sleep(0.1)
    own = [b.pid for b in backends]
    direct_url = f"http://127.0.0.1:{ports[0]}"
    meta = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.version.split()[0],
            "nproc": os.cpu_count(), "loadavg_start": open("/proc/loadavg").read().split()[:3],
            "pinning": {"gateway": a.gateway_cpus, "backends": a.backend_cpus, "driver": a.client_cpus},
            "phases": phases, "repeats": a.repeats, "duration_s": a.duration, "warmup_s": a.warmup,
            "chunks": a.chunks, "policy": a.policy}
    results: dict[str, Any] = {"meta": meta, "direct_raw": {ph: [] for ph in phases}, "gateways": {}}
    direct_runs: dict[str, list] = {ph: [] for ph in phases}
    for name in [g.strip() for g in a.gateways.split(",") if g.strip()]:
        url = f"http://127.0.0.1:{a.gateway_port}"
        cmd, env = gateway_cmd(name, a, a.gateway_port, backend_urls, tmp)
        gw = start(cmd, cpus=a.gateway_cpus, logfile=logdir / f"gateway-{name}.log", env=env)
        startup = wait_ready(url, gw)
        log(f"{name} ready after {startup:.1f} s")
        run_phase(url, "c16", argparse.Namespace(**{**vars(a), "duration": 2.0, "warmup": 0.5}), None, own)
        run_phase(url, "s8", argparse.Namespace(**{**vars(a), "duration": 1.0, "warmup": 0.0}), None, own)
        raw: dict[str, dict[str, list]] = {ph: {"direct": [], "gateway": []} for ph in phases}
        for rep in range(a.repeats):
            for ph in phases:
                for tgt, u in (("direct", direct_url), ("gateway", url)):
                    r = run_phase(u, ph, a, gw.pid if tgt == "gateway" else None, own + [gw.pid, os.getpid()])
                    raw[ph][tgt].append(r)
                    lat, t = r["latency"], r.get("ttfc", {})
                    log(f"{name} rep {rep + 1} {ph:5} {tgt:7}: {r['rps']:9.1f}/s p50 {lat.get('p50_ms')} "
                        f"p99 {lat.get('p99_ms')} ttfc50 {t.get('p50_ms')} cpu/req {r.get('gateway_cpu_ms_per_req')} "
                        f"err {sum(r['errors'].values())} noise {r['noise_cores']}")
        rss = 0
        for pid in proc_tree(gw.pid):
            try:
                rss += next(int(x.split()[1]) for x in open(f"/proc/{pid}/status") if x.startswith("VmRSS"))
            except (OSError, StopIteration):
                pass
        stop(gw)
        res = {"startup_s": round(startup, 2), "rss_mb": round(rss / 1024, 1), "cmd": " ".join(cmd), "phases": {},
               "raw": raw}
        for ph in phases:
            res["phases"][ph] = aggregate(raw[ph]["gateway"], raw[ph]["direct"])
            direct_runs[ph] += raw[ph]["direct"]
        results["gateways"][name] = res
    results["direct"] = {ph: aggregate(direct_runs[ph], direct_runs[ph]) for ph in phases}
    meta["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    txt = table(results, phases)
    results["table_md"] = txt
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(txt)
    print(f"\nload average start {meta['loadavg_start']} end {meta['loadavg_end']}; JSON: {out}")


if __name__ == "__main__":
    main()
