"""What the client's tests share: the real sidecar's sockets, and stand-ins that misbehave.

Fake listeners on a Unix socket stand in for a sidecar only where a real one cannot misbehave on
demand: hanging up at once or mid-answer, never answering, refusing, answering 503, or
answering in chunks.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sidecar, short_socket_path, wait_until

from sidecar.settings import NAME_RULE

RunSidecar = Callable[..., Sidecar]
MAX_ID = 2**64 - 1
TRANSPORT = {"nats_tcp": "dynamo_backend.generate-694d9a"}
SESSION_CLOSED = "worker life 1 ended: its session connection closed"
READY_AT_START = {"DYN_SYSTEM_STARTING_HEALTH_STATUS": "ready", "DYN_SIDECAR_DRAIN_SECONDS": "0"}
FRONTEND = {"DYN_SIDECAR_MODE": "frontend"}


def accepting(sc: Sidecar) -> Sidecar:
    """Wait until the worker's socket accepts connections, not just until its file exists.

    The sidecar binds its socket (the file appears) a moment before it listens; a connection
    in between is refused, and the fixtures only wait for the file.
    """

    def connects() -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(sc.socket_path))
            except OSError:
                return False
            return True

    assert wait_until(connects), f"the sidecar never listened on {sc.socket_path}"
    return sc


def code(sc: Sidecar, path: str) -> int:
    return sc.probe(path).status_code


def turns(sc: Sidecar, path: str, expected: int, within: float) -> float | None:
    """Seconds until `path` answers `expected`, or None when it did not within `within`."""
    start = time.monotonic()
    if wait_until(lambda: code(sc, path) == expected, timeout=within):
        return time.monotonic() - start
    return None


def missing_path() -> Path:
    return short_socket_path().parent / "absent.sock"


def read_request(conn: socket.socket) -> bytes:
    """Read one HTTP request (headers and a Content-Length body) and return it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            while len(body) < int(value):
                body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def fake_sidecar(answer: bytes | None, hold: bool = False) -> Iterator[tuple[Path, list[int]]]:
    """A listener that hangs up at once (`answer` None), answers `answer`, or holds forever.

    Yields its socket path and a list with one item per connection accepted.
    """
    path = short_socket_path()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    server.settimeout(0.02)
    accepted: list[int] = []
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            if hold:
                held.append(conn)
                continue
            with conn:
                if answer is not None:
                    read_request(conn)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@contextlib.contextmanager
def scripted_sidecar(*answers: bytes) -> Iterator[tuple[Path, list[bytes]]]:
    """A stand-in that reads each connection's request, sends it the next of `answers` and
    hangs up; once they run out, it hangs up without a word (a sidecar killed at once).

    Yields its socket path and the requests it read, one per connection.
    """
    path = short_socket_path()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    server.settimeout(0.02)
    requests: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        script = list(answers)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                requests.append(read_request(conn))
                conn.sendall(script.pop(0) if script else b"")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, requests
    finally:
        stop.set()
        thread.join(5)
        server.close()


def http_answer(status: str, body: bytes, chunked: bool = False, headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
    head += headers
    if chunked:
        half = len(body) // 2
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:])
        )
        return (head + "transfer-encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def sidecar_error(sc: Sidecar, method: str, path: str, **kwargs: Any) -> str:
    """The `error` line the sidecar gives any HTTP client for this request."""
    message = sc.control(method, path, **kwargs).json()["error"]
    assert isinstance(message, str)
    return message


def bad_name_error(sc: Sidecar) -> str:
    message = sidecar_error(sc, "PUT", "/v1/endpoints/bad%20name!", json={"status": "ready"})
    assert "bad name!" in message
    assert NAME_RULE in message
    return message


def retry_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sidecar.client"]
