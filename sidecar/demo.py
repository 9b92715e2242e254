"""`demo`: a sidecar, a simulated worker and a small kubelet, so a newcomer sees a whole life.

The sidecar is the real `serve` in its own process; its log lines (one per transition) are
the demo's output. The worker is a real process too, using `sidecar.client`: it holds a
session, loads for a few seconds, serves `generate` and sends heartbeats. The kubelet is a
loop in this process that probes the live and health paths over new TCP connections, like
the real one, and restarts the worker after three live failures once it has started.

Keys (or flags, without a terminal): `h` makes the worker hang (it stops its heartbeats and
the sidecar's deadline ends its life), `c` makes it crash (SIGKILL: its session closes),
`q` quits.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sidecar.client import Retry, SidecarClient

HEARTBEAT_TIMEOUT = 3.0
PERIOD = 0.5
FAILURES_TO_RESTART = 3


def run_worker(socket_path: str, load_seconds: float) -> None:
    """The simulated worker: a session, a load, `generate` ready, heartbeats until SIGUSR1."""
    hang = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: hang.set())
    client = SidecarClient(socket_path, retry=Retry.patient())
    with client.open_session(pid=os.getpid()):
        say(f"worker {os.getpid()}: loading the model ({load_seconds:g}s)")
        time.sleep(load_seconds)
        client.ready("generate")
        say(f"worker {os.getpid()}: serving generate")
        while not hang.is_set():
            client.heartbeat(os.getpid())
            hang.wait(1.0)
        say(f"worker {os.getpid()}: hung (alive, but silent)")
        while True:
            time.sleep(3600)


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)


def probe(port: int, path: str) -> int:
    """One probe as the kubelet sends it: a new connection, its User-Agent, a 1 s timeout."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", path, headers={"User-Agent": "kube-probe/1.31"})
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


class Demo:
    """The three processes of the demo and the kubelet loop that watches them."""

    def __init__(self, port: int, socket_path: str, load_seconds: float) -> None:
        self.port = port
        self.socket_path = socket_path
        self.load_seconds = load_seconds
        self.worker: subprocess.Popen[bytes] | None = None
        self.started = False
        self.failures = 0
        self.codes: dict[str, int] = {}

    @contextlib.contextmanager
    def sidecar(self) -> Iterator[subprocess.Popen[bytes]]:
        command = [
            sys.executable, "-m", "sidecar", "serve",
            "--port", str(self.port),
            "--socket", self.socket_path,
            "--endpoints", "generate",
            "--heartbeat-timeout", f"{HEARTBEAT_TIMEOUT:g}",
            "--drain-seconds", "1",
        ]  # fmt: skip
        process = subprocess.Popen(command)
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    def start_worker(self) -> None:
        command = [sys.executable, "-m", "sidecar.demo", "--worker", self.socket_path]
        self.worker = subprocess.Popen([*command, f"{self.load_seconds:g}"])
        self.started, self.failures = False, 0

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait(timeout=5)

    def crash(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            say(f"demo: SIGKILL to worker {self.worker.pid}")
            self.stop_worker()

    def hang(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            say(f"demo: making worker {self.worker.pid} hang")
            self.worker.send_signal(signal.SIGUSR1)

    def kubelet_step(self) -> None:
        """The kubelet's view: startup and liveness on /live, readiness on /health."""
        for path in ("/live", "/health"):
            code = probe(self.port, path)
            if self.codes.get(path) != code:
                say(f"kubelet: GET {path} -> {code or 'no answer'}")
                self.codes[path] = code
        live = self.codes["/live"] == 200
        if not self.started:
            self.started = live
            return
        self.failures = 0 if live else self.failures + 1
        if self.failures >= FAILURES_TO_RESTART:
            say("kubelet: liveness failed 3 times: restarting the worker")
            self.stop_worker()
            self.start_worker()


def keys(stop: threading.Event) -> Iterator[str]:
    """Keys pressed, one at a time, without Enter when stdin is a terminal."""
    if not sys.stdin.isatty():
        return
    import termios
    import tty

    saved = termios.tcgetattr(sys.stdin)
    tty.setcbreak(sys.stdin)
    try:
        while not stop.is_set():
            ready, _, _ = select.select([sys.stdin], [], [], PERIOD)
            if ready:
                yield sys.stdin.read(1)
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def run_demo(args: argparse.Namespace) -> int:
    socket_path = args.socket or str(Path(tempfile.mkdtemp(prefix="dhs-demo-")) / "health.sock")
    demo = Demo(args.port, socket_path, args.load_seconds)
    say(f"demo: sidecar on http://127.0.0.1:{args.port}, worker socket {socket_path}")
    say("demo: keys: h = hang the worker, c = crash it, q = quit")
    stop = threading.Event()
    pressed: list[str] = []

    def read_keys() -> None:
        for key in keys(stop):
            pressed.append(key)

    reader = threading.Thread(target=read_keys, daemon=True)
    began = time.monotonic()
    planned = {"hang": args.hang_after, "crash": args.crash_after}
    with demo.sidecar():
        demo.start_worker()
        reader.start()
        try:
            while args.duration is None or time.monotonic() - began < args.duration:
                demo.kubelet_step()
                for what, after in list(planned.items()):
                    if after is not None and time.monotonic() - began >= after:
                        getattr(demo, what)()
                        del planned[what]
                while pressed:
                    key = pressed.pop(0).lower()
                    if key == "q":
                        return 0
                    if key in ("h", "c"):
                        (demo.hang if key == "h" else demo.crash)()
                time.sleep(PERIOD)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            demo.stop_worker()
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    run_worker(sys.argv[2], float(sys.argv[3]))
