"""The processes the bench starts, and how: pinned to their CPUs, logged to the run
directory, on free loopback ports, and always stopped on the way out (also on Ctrl+C,
SIGTERM or an error), with every wait bounded."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import load


def plan_cpus() -> tuple[set[int], set[int]]:
    """(server CPUs, load CPUs): one CPU for the server under test, the rest for load, so
    the load never competes with the server it measures."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (the kernel's pick)."""
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
        """The end of a server's log, for the error that says why it did not come up."""
        path = self.logs.get(proc.pid)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds: a server that ignores TERM must
        not outlive the bench."""
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
        """Stop every server still running, the last started first."""
        for proc in reversed(list(self.running)):
            self.stop(proc)


@dataclass
class Server:
    """A started server: its process, its probe port, and the worker's socket if any."""

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
    """Poll `check` until it holds; fail with the server's log if it exits or times out
    (an OSError from `check` means "not yet": the port is not open)."""
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


def tcp_open(port: int) -> bool:
    """True once something accepts on the port (raises OSError before)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
        return True


def http_up(port: int, path: str = "/health") -> Callable[[], bool]:
    """A check for `wait_until`: the port answers HTTP on `path` (any status)."""

    def check() -> bool:
        load.probe(port, path, timeout=1.0)
        return True

    return check


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl+C and SIGTERM both stop every server before the bench exits (SIGINT even
    when a non-interactive shell started the bench with it ignored)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
