"""What the reliability tests share: the load generator, what a process holds, the sidecar's
state and metrics as a client sees them, and raw HTTP over either socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
WORKER = HERE / "worker.py"
OPENAPI = HERE.parents[1] / "sidecar" / "openapi.json"
JSON_TYPE = "application/json"
# Fields of `GET /v1/worker` that move with the clock, not with what the worker said.
CLOCK_FIELDS = ("life_seconds", "heartbeat_deadline_seconds")


class Load:
    """A `loadgen.py` process; `result()` ends it (SIGTERM) if needed and returns its report."""

    def __init__(self, mode: str, **args: Any) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, str(LOADGEN), mode, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def result(self, timeout: float | None = None, stop: bool = False) -> dict[str, Any]:
        if stop and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        wait = timeout if timeout is not None else float(self.args.get("seconds", 10)) + 30
        try:
            out, err = self.process.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(
                f"the load generator did not finish: {err.decode()[-2000:]}"
            ) from None
        if self.process.returncode != 0:
            raise AssertionError(f"the load generator failed: {err.decode()[-2000:]}")
        report: dict[str, Any] = json.loads(out)
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@contextmanager
def loads(*generators: Load) -> Iterator[tuple[Load, ...]]:
    """Generators that are killed if the test fails before it reads their reports."""
    try:
        yield generators
    finally:
        for generator in generators:
            generator.kill()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def unix_client(socket_path: Path, timeout: float = 5.0) -> httpx.Client:
    transport = httpx.HTTPTransport(uds=str(socket_path), verify=False)
    return httpx.Client(
        transport=transport, base_url="http://sidecar", timeout=timeout, verify=False
    )


def control(socket_path: Path, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request on a new connection to the worker's socket."""
    with unix_client(socket_path) as client:
        return client.request(method, path, **kwargs)


def probe(port: int, path: str, timeout: float = 5.0) -> httpx.Response:
    """One probe on a new TCP connection, as the kubelet sends it."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout, verify=False) as c:
        return c.get(path, headers={"User-Agent": "kube-probe/1.31"})


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `/metrics`: (name, sorted labels) -> value."""
    text = probe(port, "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def without_uptime(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "uptime"}


def visible_state(socket_path: Path, port: int) -> dict[str, Any]:
    """What a refused request must not change: the status, the worker's life (without the
    fields that move with the clock) and the live path."""
    status = control(socket_path, "GET", "/v1/status")
    worker = control(socket_path, "GET", "/v1/worker")
    assert status.status_code == worker.status_code == 200
    view = worker.json()
    for key in CLOCK_FIELDS:
        view.pop(key, None)
    for record in view.get("endpoints", {}).values():
        record.pop("since_seconds", None)
    live = probe(port, "/live")
    return {
        "status": without_uptime(status.json()),
        "worker": view,
        "live": (live.status_code, without_uptime(live.json())),
    }


def raw_exchange(
    address: str | tuple[str, int], data: bytes, timeout: float = 5.0
) -> tuple[int | None, dict[str, str], bytes]:
    """Send `data` on a new connection, read until the server closes or `timeout`; the
    status code (None when nothing came), the headers and the body."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                head, found, body = received.partition(b"\r\n\r\n")
                if found:
                    headers = parse_headers(head)
                    length = headers.get("content-length")
                    if length is not None and len(body) >= int(length):
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    if not received:
        return None, {}, b""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), parse_headers(head), body


def parse_headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers


def wait_for(check: Any, timeout: float, interval: float = 0.02) -> Any:
    """The first truthy value of `check()` within `timeout`, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def log_lines(log: str, needle: str) -> list[str]:
    return [line for line in log.splitlines() if needle in line]
