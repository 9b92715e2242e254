"""A worker's life (docs/protocol.md section 6), seen through `POST /v1/session` on the real socket.

The session is opened with a raw `socket.socket(AF_UNIX)`: the worker's client sends the
HTTP/1.1 request itself and holds the connection; its closing (by the worker, or by the
kernel when the worker is killed) ends the worker's life.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import Sidecar, wait_until

RunSidecar = Callable[..., Sidecar]

OPEN_LINE = b'"session":"open"}\n'


def open_line(life: int) -> bytes:
    """The session's first line, as a pattern: its lease is drawn at random."""
    return rb'\r\n\{"lease":"[0-9a-f]{16}","life":%d,"session":"open"\}\n\r\n' % life


CLOSED_REASON = "worker life 1 ended: its session connection closed"
NOT_READY_YET = "the worker has not been ready yet in this life"
LIFE_1_ENDED = "worker life 1: alive -> ended after"
INSTANCE: dict[str, Any] = {
    "namespace": "dynamo",
    "component": "backend",
    "endpoint": "generate",
    "instance_id": 7587888160958628000,
    "transport": {"nats_tcp": "dynamo_backend.generate-694d9a"},
}

# A worker that holds a session and sleeps until it is killed.
WORKER = r"""
import json, os, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
body = json.dumps({"pid": os.getpid()}).encode()
head = b"POST /v1/session HTTP/1.1\r\nHost: sidecar\r\nContent-Length: %d\r\n\r\n" % len(body)
sock.sendall(head + body)
data = b""
while b'"session":"open"' not in data:
    data += sock.recv(4096)
print("open", flush=True)
time.sleep(120)
"""


def control(sc: Sidecar, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """`Sidecar.control` without loading CA certificates (there is no TLS on either socket)."""
    transport = httpx.HTTPTransport(uds=str(sc.socket_path), verify=False)
    with httpx.Client(
        transport=transport, base_url="http://sidecar", timeout=5.0, verify=False
    ) as client:
        return client.request(method, path, **kwargs)


def probe(sc: Sidecar, path: str) -> httpx.Response:
    """`Sidecar.probe`, likewise: one GET on a new TCP connection, as the kubelet sends it."""
    with httpx.Client(base_url=sc.url, timeout=5.0, verify=False) as client:
        return client.get(path, headers={"User-Agent": "kube-probe/1.31"})


def endpoints(sc: Sidecar) -> dict[str, str]:
    body = control(sc, "GET", "/v1/status").json()
    assert isinstance(body, dict)
    result = body["endpoints"]
    assert isinstance(result, dict)
    return result


def live_is(sc: Sidecar, code: int) -> Callable[[], bool]:
    return lambda: probe(sc, "/live").status_code == code


class Session:
    """One `POST /v1/session` on its own connection, sent and read by hand."""

    def __init__(self, sc: Sidecar, body: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        self.sock.connect(str(sc.socket_path))
        head = (
            b"POST /v1/session HTTP/1.1\r\nHost: sidecar\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        self.sock.sendall(head + body)
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self._receive()
        head_bytes, _, _ = self.data.partition(b"\r\n\r\n")
        status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in header_lines)
        }
        if self.status == 200:
            while OPEN_LINE not in self.data:
                self._receive()
        else:
            length = int(self.headers["content-length"])
            while len(self.body) < length:
                self._receive()

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def _receive(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the sidecar closed the session early; read {self.data!r}")
        self.data += chunk
        return chunk

    def read_to_eof(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        while chunk := self.sock.recv(65536):
            self.data += chunk
        return self.data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    """Sessions a test opens are closed at its end, whatever happens."""
    opened: list[Session] = []
    yield opened
    for session in opened:
        session.close()


@pytest.fixture
def open_session(sessions: list[Session]) -> Callable[..., Session]:
    def open_(sc: Sidecar, body: bytes = b"") -> Session:
        session = Session(sc, body)
        sessions.append(session)
        return session

    return open_


OpenSession = Callable[..., Session]


def end_life_1(sc: Sidecar, open_session: OpenSession) -> None:
    """Life 1 with `generate` and `aux` ready, ended by its only session closing."""
    session = open_session(sc)
    control(sc, "POST", "/v1/endpoints/generate/ready")
    control(sc, "POST", "/v1/endpoints/aux/ready")
    assert probe(sc, "/live").status_code == 200
    session.close()
    assert wait_until(live_is(sc, 503), timeout=1.0)


# -- opening --------------------------------------------------------------------------------


def test_session_first_chunk_says_open_in_life_1(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    session = open_session(sidecar)
    assert session.status == 200
    assert session.headers["content-type"] == "application/x-ndjson"
    assert session.headers["transfer-encoding"] == "chunked"
    assert re.search(open_line(1), session.body)


def test_session_with_pid_opens(sidecar: Sidecar, open_session: OpenSession) -> None:
    session = open_session(sidecar, json.dumps({"pid": 123}).encode())
    assert session.status == 200
    assert re.search(open_line(1), session.body)


def test_session_open_lets_live_path_answer_200_once_ready(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    open_session(sidecar)
    assert probe(sidecar, "/live").status_code == 503
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    live = probe(sidecar, "/live")
    assert (live.status_code, live.json()["live"]) == (200, True)


# -- closing ends the life ------------------------------------------------------------------


def test_session_close_fails_live_path_within_1s(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    session = open_session(sidecar)
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    assert probe(sidecar, "/live").status_code == 200
    session.close()
    assert wait_until(live_is(sidecar, 503), timeout=1.0)
    body = probe(sidecar, "/live").json()
    assert body["live"] is False
    assert body["reason"] == CLOSED_REASON
    assert "session" in body["reason"]


def test_session_close_makes_every_endpoint_notready(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    end_life_1(sidecar, open_session)
    health = probe(sidecar, "/health")
    assert health.status_code == 503
    assert health.json()["endpoints"] == {"aux": "notready", "generate": "notready"}
    assert health.json()["status"] == "notready"


def test_session_close_drops_the_frontend_instances_of_its_lease(
    run_sidecar: RunSidecar, open_session: OpenSession
) -> None:
    sc = run_sidecar({"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_DRAIN_SECONDS": "0"})
    session = open_session(sc)
    lease = json.loads(session.body.split(b"\r\n")[1])["lease"]
    path = f"/v1/instances?lease={lease}"
    assert control(sc, "POST", path, json=INSTANCE).status_code == 201
    assert probe(sc, "/health").json()["status"] == "healthy"
    session.close()
    assert wait_until(lambda: probe(sc, "/health").json()["instances"] == [], timeout=1.0)
    assert probe(sc, "/health").json() == {
        "instances": [],
        "message": "No endpoints available",
        "status": "unhealthy",
    }


def test_session_close_logs_end_of_life(sidecar: Sidecar, open_session: OpenSession) -> None:
    end_life_1(sidecar, open_session)
    assert wait_until(lambda: LIFE_1_ENDED in sidecar.logs(), timeout=1.0)
    line = next(line for line in sidecar.logs().splitlines() if LIFE_1_ENDED in line)
    assert " WARNING " in line
    assert line.endswith("(its session connection closed)")


# -- the next signal begins life 2 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/endpoints/generate/ready", {}),
        ("POST", "/v1/endpoints/aux/notready", {}),
        ("PUT", "/v1/endpoints/generate", {"json": {"status": "ready"}}),
        ("POST", "/v1/heartbeat", {}),
        ("POST", "/v1/heartbeat", {"json": {"pid": 4242}}),
    ],
    ids=["ready", "notready", "put", "heartbeat", "heartbeat-pid"],
)
def test_session_next_signal_begins_life_2(
    sidecar: Sidecar,
    open_session: OpenSession,
    method: str,
    path: str,
    kwargs: dict[str, Any],
) -> None:
    end_life_1(sidecar, open_session)
    response = control(sidecar, method, path, **kwargs)
    assert response.status_code == 200
    assert response.json()["life"] == 2
    assert wait_until(lambda: "worker life 2: ended -> alive" in sidecar.logs(), timeout=1.0)


def test_session_next_session_opens_life_2(sidecar: Sidecar, open_session: OpenSession) -> None:
    end_life_1(sidecar, open_session)
    session = open_session(sidecar)
    assert re.search(open_line(2), session.body)


@pytest.mark.parametrize("starting", ["notready", "ready"])
def test_session_new_life_keeps_only_required_at_starting_status(
    run_sidecar: RunSidecar, open_session: OpenSession, starting: str
) -> None:
    sc = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
            "DYN_SYSTEM_STARTING_HEALTH_STATUS": starting,
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
        }
    )
    end_life_1(sc, open_session)
    assert endpoints(sc) == {"aux": "notready", "generate": "notready"}
    assert control(sc, "POST", "/v1/heartbeat").json()["life"] == 2
    assert endpoints(sc) == {"generate": starting}


def test_session_new_life_live_fails_until_ready(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    end_life_1(sidecar, open_session)
    control(sidecar, "POST", "/v1/heartbeat")
    live = probe(sidecar, "/live")
    assert live.status_code == 503
    assert live.json()["reason"] == NOT_READY_YET
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    live = probe(sidecar, "/live")
    assert (live.status_code, live.json()["live"]) == (200, True)


# -- a failed request is no signal ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("PUT", "/v1/endpoints/generate", {"json": {"status": "up"}}),
        ("PUT", "/v1/endpoints/a%20b", {"json": {"status": "ready"}}),
        ("POST", "/v1/heartbeat", {"json": {"pid": 0}}),
        ("POST", "/v1/heartbeat", {"content": b"{"}),
        ("POST", "/v1/instances", {"json": {"namespace": "dynamo"}}),
        ("DELETE", "/v1/instances/7", {}),
        ("GET", "/v1/heartbeat", {}),
        ("GET", "/v1/nothing", {}),
        ("GET", "/v1/status", {}),
    ],
    ids=[
        "bad-status",
        "bad-name",
        "bad-pid",
        "malformed",
        "bad-instance",
        "unknown-instance",
        "wrong-method",
        "unknown-path",
        "status",
    ],
)
def test_session_failed_request_after_life_ended_begins_no_life(
    sidecar: Sidecar,
    open_session: OpenSession,
    method: str,
    path: str,
    kwargs: dict[str, Any],
) -> None:
    end_life_1(sidecar, open_session)
    control(sidecar, method, path, **kwargs)
    live = probe(sidecar, "/live")
    assert (live.status_code, live.json()["reason"]) == (503, CLOSED_REASON)
    assert endpoints(sidecar) == {"aux": "notready", "generate": "notready"}
    assert control(sidecar, "POST", "/v1/heartbeat").json()["life"] == 2


# -- several sessions -------------------------------------------------------------------------


def test_session_closing_one_of_two_keeps_life(sidecar: Sidecar, open_session: OpenSession) -> None:
    first, second = open_session(sidecar), open_session(sidecar)
    assert b'"life":1' in second.body
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    first.close()
    time.sleep(0.5)
    assert probe(sidecar, "/live").status_code == 200
    assert endpoints(sidecar) == {"generate": "ready"}
    assert LIFE_1_ENDED not in sidecar.logs()


def test_session_closing_both_of_two_ends_life(sidecar: Sidecar, open_session: OpenSession) -> None:
    first, second = open_session(sidecar), open_session(sidecar)
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    first.close()
    second.close()
    assert wait_until(live_is(sidecar, 503), timeout=1.0)
    assert probe(sidecar, "/live").json()["reason"] == CLOSED_REASON


def test_session_still_open_when_a_new_life_begins_watches_that_life(
    run_sidecar: RunSidecar, open_session: OpenSession
) -> None:
    # Only heartbeat expiry (or the process watch) can end a life while a session is open:
    # the worker was silent too long, then spoke again, and its session is still there.
    sc = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
            "DYN_SIDECAR_HEARTBEAT_TIMEOUT": "0.5",
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
        }
    )
    session = open_session(sc)
    control(sc, "POST", "/v1/endpoints/generate/ready")
    control(sc, "POST", "/v1/heartbeat")
    assert wait_until(live_is(sc, 503), timeout=3.0)  # heartbeats stopped: life 1 ends
    assert control(sc, "POST", "/v1/endpoints/generate/ready").json()["life"] == 2
    assert probe(sc, "/live").status_code == 200
    session.close()
    assert wait_until(live_is(sc, 503), timeout=1.0)
    assert (
        probe(sc, "/live").json()["reason"] == "worker life 2 ended: its session connection closed"
    )


# -- the worker killed --------------------------------------------------------------------------


@pytest.fixture
def worker_process(sidecar: Sidecar) -> Iterator[subprocess.Popen[str]]:
    """A worker process that holds a session on the sidecar's socket and sleeps."""
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(sidecar.socket_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "open"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_session_sigkill_of_worker_ends_life(
    sidecar: Sidecar, worker_process: subprocess.Popen[str]
) -> None:
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    assert probe(sidecar, "/live").status_code == 200
    os.kill(worker_process.pid, signal.SIGKILL)
    assert worker_process.wait(timeout=5) == -signal.SIGKILL
    assert wait_until(live_is(sidecar, 503), timeout=1.0)
    assert probe(sidecar, "/live").json()["reason"] == CLOSED_REASON
    assert endpoints(sidecar) == {"generate": "notready"}


# -- the sidecar stopped ------------------------------------------------------------------------


def test_session_sidecar_sigterm_exits_0_promptly(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    open_session(sidecar)
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    started = time.monotonic()
    sidecar.process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(timeout=10) == 0
    assert time.monotonic() - started < 3.0


def test_session_sidecar_sigterm_ends_response_cleanly(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    session = open_session(sidecar)
    sidecar.process.send_signal(signal.SIGTERM)
    data = session.read_to_eof(timeout=5.0)
    assert data.endswith(OPEN_LINE + b"\r\n0\r\n\r\n")


def test_session_sidecar_sigterm_does_not_end_life(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    open_session(sidecar)
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    assert sidecar.stop() == 0
    logs = sidecar.logs()
    assert "stopped" in logs
    assert "alive -> ended" not in logs
    assert "generate: ready -> notready" not in logs


def test_session_close_during_drain_exits_early(
    run_sidecar: RunSidecar, open_session: OpenSession
) -> None:
    sc = run_sidecar(
        {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate", "DYN_SIDECAR_DRAIN_SECONDS": "5"}
    )
    session = open_session(sc)
    control(sc, "POST", "/v1/endpoints/generate/ready")
    assert probe(sc, "/health").status_code == 200
    sc.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: probe(sc, "/health").status_code == 503)
    session.close()
    assert sc.process.wait(timeout=2.5) == 0


# -- a session refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b'{"pid": "x"}', 422, 'pid "x" is invalid: expected an integer from 1 to 2147483647'),
        (b'{"pid": 0}', 422, "pid 0 is invalid: expected an integer from 1 to 2147483647"),
        (b'{"worker": 1}', 422, 'unknown field "worker"; allowed: pid'),
        (b"[1]", 422, "the body must be a JSON object with the fields pid"),
        (
            b'{"pid": ',
            400,
            "the body is not valid JSON: Expecting value: line 1 column 9 (char 8)",
        ),
        (b" " * (64 * 1024 + 1), 413, "the body has 65537 bytes; the limit is 65536"),
    ],
    ids=["pid-string", "pid-zero", "unknown-field", "not-object", "malformed", "too-large"],
)
def test_session_bad_body_is_refused(
    sidecar: Sidecar, open_session: OpenSession, body: bytes, code: int, message: str
) -> None:
    session = open_session(sidecar, body)
    assert session.status == code
    assert session.headers["content-type"] == "application/json"
    assert json.loads(session.body) == {"error": message}


def test_session_bad_body_holds_nothing_open(sidecar: Sidecar, open_session: OpenSession) -> None:
    refused = open_session(sidecar, b'{"pid": "x"}')
    assert refused.status == 422
    held = open_session(sidecar)
    assert b'"life":1' in held.body
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    held.close()  # the only session of life 1: the refused one must not count
    assert wait_until(live_is(sidecar, 503), timeout=1.0)


def test_session_bad_body_after_life_ended_begins_no_life(
    sidecar: Sidecar, open_session: OpenSession
) -> None:
    end_life_1(sidecar, open_session)
    assert open_session(sidecar, b'{"pid": "x"}').status == 422
    assert probe(sidecar, "/live").json()["reason"] == CLOSED_REASON
    assert endpoints(sidecar) == {"aux": "notready", "generate": "notready"}
    assert "worker life 2" not in sidecar.logs()
