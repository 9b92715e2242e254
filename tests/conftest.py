"""Fixtures that start the real sidecar as a process and talk to it over its real sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_socket_path() -> Path:
    """A socket path well under the 107-byte limit, whatever pytest's tmp_path is."""
    return Path(tempfile.mkdtemp(prefix="dhs-")) / "health.sock"


@dataclass
class Sidecar:
    """A running `dynamo-health-sidecar serve` process and clients for both of its sockets."""

    process: subprocess.Popen[bytes]
    port: int
    socket_path: Path
    log_path: Path
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def probe(self, path: str, method: str = "GET") -> httpx.Response:
        """One request on a new TCP connection, as the kubelet sends it."""
        # verify=False: plain HTTP, and it spares loading the CA bundle on every request.
        with httpx.Client(base_url=self.url, timeout=5.0, verify=False) as client:
            return client.request(method, path, headers={"User-Agent": "kube-probe/1.31"})

    def control(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """A request to the worker's Unix socket."""
        transport = httpx.HTTPTransport(uds=str(self.socket_path), verify=False)
        with httpx.Client(
            transport=transport, base_url="http://sidecar", timeout=5.0, verify=False
        ) as client:
            return client.request(method, path, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def wait_until(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def _serving(port: int, socket_path: Path) -> bool:
    """Both sockets accept a connection (a file that exists is not yet a listener)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            pass
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
            unix.settimeout(0.2)
            unix.connect(str(socket_path))
    except OSError:
        return False
    return True


def start_sidecar(
    tmp_path: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Sidecar:
    port = free_port()
    socket_path = short_socket_path()
    log_path = tmp_path / f"sidecar-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "KUBERNETES_"))}
    full_env.update({"DYN_SYSTEM_PORT": str(port), "DYN_SIDECAR_SOCKET": str(socket_path)})
    full_env.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", *(args or [])],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sidecar = Sidecar(
        process, int(full_env["DYN_SYSTEM_PORT"]), Path(full_env["DYN_SIDECAR_SOCKET"]), log_path
    )
    if (
        not wait_until(
            lambda: process.poll() is not None or _serving(sidecar.port, sidecar.socket_path),
            START_TIMEOUT,
        )
        or process.poll() is not None
    ):
        process.kill()
        raise RuntimeError(f"the sidecar did not start:\n{log_path.read_text()}")
    return sidecar


@pytest.fixture
def run_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """Start sidecars with the given environment and flags; all are stopped afterwards."""
    started: list[Sidecar] = []

    def run(env: dict[str, str] | None = None, args: list[str] | None = None) -> Sidecar:
        sidecar = start_sidecar(tmp_path, env, args)
        started.append(sidecar)
        return sidecar

    yield run
    for sidecar in started:
        if sidecar.process.poll() is None:
            sidecar.process.kill()
            sidecar.process.wait(timeout=10)


@pytest.fixture
def sidecar(run_sidecar: Callable[..., Sidecar]) -> Sidecar:
    """A worker-mode sidecar requiring `generate`, draining for 0 s on SIGTERM."""
    return run_sidecar(
        {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]', "DYN_SIDECAR_DRAIN_SECONDS": "0"}
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-long",
        action="store_true",
        default=False,
        help="run the long versions (minutes) of the reliability suite (tests/reliability)",
    )


@pytest.fixture(scope="session")
def run_long(request: pytest.FixtureRequest) -> bool:
    """True with `--run-long`: reliability tests choose their long parameters."""
    return bool(request.config.getoption("--run-long"))
