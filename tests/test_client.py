"""The worker-side client (`sidecar.client`) against the real sidecar process.

Each call is judged by what the kubelet would see on the probe port afterwards. Fake
listeners on a Unix socket stand in for a sidecar only where a real one cannot misbehave on
demand: hanging up at once or mid-answer, never answering, refusing, answering 503, or
answering in chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sidecar, short_socket_path, wait_until

from sidecar.client import (
    DEFAULT_SOCKET,
    AsyncSidecarClient,
    Retry,
    SidecarClient,
    SidecarProtocolError,
    SidecarRejected,
    SidecarUnavailable,
    resolve_socket,
)
from sidecar.settings import NAME_RULE

RunSidecar = Callable[..., Sidecar]

MAX_ID = 2**64 - 1
TRANSPORT = {"nats_tcp": "dynamo_backend.generate-694d9a"}
SESSION_CLOSED = "worker life 1 ended: its session connection closed"
READY_AT_START = {"DYN_SYSTEM_STARTING_HEALTH_STATUS": "ready", "DYN_SIDECAR_DRAIN_SECONDS": "0"}
FRONTEND = {"DYN_SIDECAR_MODE": "frontend"}
THIRD_PARTY = {"starlette", "uvicorn", "httpx", "psutil", "prometheus_client", "anyio"}

# A worker that holds a session through the client and sleeps until it is killed.
WORKER = """
import sys, time
from sidecar.client import SidecarClient
session = SidecarClient(sys.argv[1]).open_session()
print(session.life, flush=True)
time.sleep(120)
"""


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


@pytest.fixture
def sidecar(sidecar: Sidecar) -> Sidecar:
    """The shared fixture's sidecar, once its socket accepts connections."""
    return accepting(sidecar)


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


# -- where the socket is ----------------------------------------------------------------------


def test_client_resolve_socket_prefers_the_argument() -> None:
    assert resolve_socket("/run/a.sock", {"DYN_SIDECAR_SOCKET": "/run/b.sock"}) == "/run/a.sock"


def test_client_resolve_socket_reads_the_environment() -> None:
    assert resolve_socket(None, {"DYN_SIDECAR_SOCKET": "/run/b.sock"}) == "/run/b.sock"


def test_client_resolve_socket_treats_an_empty_variable_as_unset() -> None:
    assert resolve_socket(None, {"DYN_SIDECAR_SOCKET": ""}) == DEFAULT_SOCKET
    assert DEFAULT_SOCKET == "/var/run/dynamo/health.sock"


def test_client_uses_the_environment_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_SIDECAR_SOCKET", "/run/c.sock")
    assert SidecarClient().socket_path == "/run/c.sock"
    assert AsyncSidecarClient().socket_path == "/run/c.sock"


# -- each method, seen on the probe port ------------------------------------------------------


def test_client_ready_makes_the_health_path_pass(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    assert code(sidecar, "/health") == 503
    answer = client.ready("generate")
    assert answer == {"endpoint": "generate", "life": 1, "overall": "ready", "status": "ready"}
    assert code(sidecar, "/health") == 200
    assert code(sidecar, "/live") == 200


def test_client_notready_makes_the_health_path_fail(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.ready("generate")
    answer = client.notready("generate")
    assert (answer["status"], answer["overall"]) == ("notready", "notready")
    assert code(sidecar, "/health") == 503
    assert sidecar.probe("/health").json()["endpoints"] == {"generate": "notready"}


def test_client_set_endpoint_adds_an_endpoint_that_is_not_required(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.set_endpoint("clear_kv_blocks", "ready")
    endpoints = sidecar.probe("/health").json()["endpoints"]
    assert endpoints == {"clear_kv_blocks": "ready", "generate": "notready"}


def test_client_register_instance_keeps_a_64_bit_id_exact(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar(FRONTEND))
    client = SidecarClient(sc.socket_path)
    answer = client.register_instance("dynamo", "backend", "generate", MAX_ID, TRANSPORT)
    assert answer == {"instance_id": MAX_ID, "instances": 1, "url": "dyn://dynamo.backend.generate"}
    body = sc.probe("/health").json()
    assert body["status"] == "healthy"
    assert body["instances"] == [
        {
            "component": "backend",
            "endpoint": "generate",
            "instance_id": MAX_ID,
            "namespace": "dynamo",
            "transport": TRANSPORT,
        }
    ]


def test_client_remove_instances_empties_the_frontend_health(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar(FRONTEND))
    client = SidecarClient(sc.socket_path)
    client.register_instance("dynamo", "backend", "generate", MAX_ID, TRANSPORT)
    client.register_instance("dynamo", "backend", "clear_kv_blocks", MAX_ID, TRANSPORT, model=False)
    assert client.remove_instances(MAX_ID) == {"instance_id": MAX_ID, "removed": 2}
    assert sc.probe("/health").json()["status"] == "unhealthy"


def test_client_status_returns_what_the_health_path_shows(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.ready("generate")
    status = client.status()
    assert status["endpoints"] == {"generate": "ready"}
    assert status["status"] == "ready"
    assert set(status["uptime"]) == {"secs", "nanos"}


def test_client_heartbeat_answers_alive(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    assert client.heartbeat() == {"life": 1, "status": "alive"}
    assert client.heartbeat(pid=os.getpid()) == {"life": 1, "status": "alive"}


# -- errors -----------------------------------------------------------------------------------


def test_client_rejected_carries_the_status_and_the_sidecars_message(sidecar: Sidecar) -> None:
    with pytest.raises(SidecarRejected) as caught:
        SidecarClient(sidecar.socket_path).ready("bad name!")
    assert caught.value.status == 422
    assert caught.value.message == bad_name_error(sidecar)
    assert code(sidecar, "/health") == 503


def test_client_rejected_404_for_an_unknown_instance(sidecar: Sidecar) -> None:
    with pytest.raises(SidecarRejected) as caught:
        SidecarClient(sidecar.socket_path).remove_instances(7)
    assert (caught.value.status, caught.value.message) == (404, "no instance has instance_id 7")


def test_client_unavailable_names_the_missing_socket() -> None:
    path = missing_path()
    with pytest.raises(SidecarUnavailable) as caught:
        SidecarClient(path).status()
    assert str(caught.value) == f"no sidecar at {path}: [Errno 2] No such file or directory"


def test_client_unavailable_when_nobody_listens_on_the_socket() -> None:
    path = short_socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays; nobody listens on it
    with pytest.raises(SidecarUnavailable) as caught:
        SidecarClient(path).heartbeat()
    assert str(caught.value) == f"no sidecar at {path}: [Errno 111] Connection refused"


def test_client_unavailable_when_the_sidecar_does_not_answer_in_time() -> None:
    with fake_sidecar(None, hold=True) as (path, _):
        start = time.monotonic()
        with pytest.raises(SidecarUnavailable) as caught:
            SidecarClient(path, timeout=0.2).status()
        elapsed = time.monotonic() - start
    assert str(caught.value) == f"no answer from the sidecar at {path} within 0.2s"
    assert 0.15 < elapsed < 1.5


# -- retries ----------------------------------------------------------------------------------


def test_client_retry_succeeds_when_the_sidecar_starts_late(
    run_sidecar: RunSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_socket_path()
    env = {"DYN_SIDECAR_SOCKET": str(path), "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate"}
    started: list[Sidecar] = []
    starter = threading.Timer(0.2, lambda: started.append(run_sidecar(env)))
    starter.start()
    caplog.set_level(logging.DEBUG, logger="sidecar.client")
    client = SidecarClient(path, retry=Retry(attempts=100, backoff=0.05, max_backoff=0.2))
    try:
        answer = client.ready("generate")
    finally:
        starter.join()
    assert answer["overall"] == "ready"
    assert code(started[0], "/health") == 200
    assert retry_log_lines(caplog), "the first attempt cannot have found the sidecar"


def test_client_retry_gives_up_after_its_attempts() -> None:
    with fake_sidecar(None) as (path, accepted), pytest.raises(SidecarUnavailable):
        SidecarClient(path, retry=Retry(attempts=4, backoff=0.01)).heartbeat()
    assert len(accepted) == 4


def test_client_retry_never_retries_a_rejection() -> None:
    refusal = http_answer("422 Unprocessable Entity", b'{"error":"no"}')
    with fake_sidecar(refusal) as (path, accepted), pytest.raises(SidecarRejected) as caught:
        SidecarClient(path, retry=Retry(attempts=5, backoff=0.01)).ready("generate")
    assert (caught.value.status, caught.value.message) == (422, "no")
    assert len(accepted) == 1


def test_client_retry_waits_with_full_jitter_capped_exponentially() -> None:
    retry = Retry(attempts=10, backoff=0.1, max_backoff=1.0)
    assert [retry.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert retry.delay(3, rng=lambda: 0.0) == 0.0


def test_client_retry_defaults_to_one_attempt_and_patient_to_thirty() -> None:
    assert Retry().attempts == 1
    assert Retry.patient().attempts == 30
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Retry(attempts=0)


# -- answers cut short, and 503 --------------------------------------------------------------

HUNG_UP = "the sidecar hung up before its answer ended"
NOT_SAVED = "the change is applied but the state file cannot be written: [Errno 28] No space"
BEAT = b'{"life":1,"status":"alive"}'
WHOLE = http_answer("200 OK", BEAT)
CHUNKED = http_answer("200 OK", BEAT, chunked=True)
# Where a sidecar SIGKILLed mid-answer may have cut it.
CUTS = {
    "before-the-status-line": b"",
    "in-the-status-line": WHOLE[: len(b"HTTP/1.1 20")],
    "among-the-headers": WHOLE[: WHOLE.index(b"content-length")],
    "after-the-headers": WHOLE[: WHOLE.index(b"\r\n\r\n") + 4],
    "in-the-body": WHOLE[:-5],
    "in-a-chunk": CHUNKED[: CHUNKED.index(b"\r\n\r\n") + 10],
}
AFTER_THE_HEADERS = CUTS["after-the-headers"]
SESSION_OPEN = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n"
    b'\r\n1c\r\n{"life":5,"session":"open"}\n\r\n'
)
CALLS: dict[str, tuple[Any, ...]] = {
    "ready": ("generate",),
    "notready": ("generate",),
    "set_endpoint": ("generate", "ready"),
    "register_instance": ("dynamo", "backend", "generate", MAX_ID, TRANSPORT),
    "remove_instances": (MAX_ID,),
    "heartbeat": (4242,),
    "status": (),
    "worker": (),
}
FLAVOURS = ["sync", "async"]
NO_RETRY = Retry()
RETRIES = Retry(attempts=5, backoff=0.01)


def unavailable_503(message: str, retry_after: str = "1") -> bytes:
    body = json.dumps({"error": message}).encode()
    return http_answer("503 Service Unavailable", body, headers=f"retry-after: {retry_after}\r\n")


def call(flavour: str, path: Path, retry: Retry, method: str, *args: Any) -> Any:
    """`method` of the sync or of the async client, run to its end."""
    if flavour == "sync":
        return getattr(SidecarClient(path, retry=retry), method)(*args)
    return asyncio.run(getattr(AsyncSidecarClient(path, retry=retry), method)(*args))


def open_and_close_session(flavour: str, path: Path, retry: Retry) -> int | None:
    """Open a session with the sync or the async client and close it; its life number."""
    if flavour == "sync":
        with SidecarClient(path, retry=retry).open_session() as session:
            return session.life

    async def main() -> int | None:
        async with await AsyncSidecarClient(path, retry=retry).open_session() as held:
            return held.life

    return asyncio.run(main())


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_retries_an_answer_cut_short(flavour: str, cut: str) -> None:
    with scripted_sidecar(CUTS[cut], WHOLE) as (path, requests):
        assert call(flavour, path, RETRIES, "heartbeat") == {"life": 1, "status": "alive"}
    assert len(requests) == 2


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_answer_cut_short_is_unavailable_once_retries_run_out(
    flavour: str, cut: str
) -> None:
    with (
        scripted_sidecar(CUTS[cut]) as (path, requests),
        pytest.raises(SidecarUnavailable) as caught,
    ):
        call(flavour, path, NO_RETRY, "heartbeat")
    assert str(caught.value) == f"no sidecar at {path}: {HUNG_UP}"
    assert len(requests) == 1


@pytest.mark.parametrize("method", CALLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_retries_every_call_the_same_after_a_cut(flavour: str, method: str) -> None:
    with scripted_sidecar(AFTER_THE_HEADERS, WHOLE) as (path, requests):
        assert call(flavour, path, RETRIES, method, *CALLS[method]) == json.loads(BEAT)
    assert len(requests) == 2
    assert requests[0] == requests[1]


@pytest.mark.parametrize("first", ["cut", "503"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_remove_instances_takes_a_404_to_a_retry_as_none_removed(
    flavour: str, first: str
) -> None:
    failed = AFTER_THE_HEADERS if first == "cut" else unavailable_503(NOT_SAVED)
    gone = http_answer("404 Not Found", b'{"error":"no instance has instance_id 7"}')
    with scripted_sidecar(failed, gone) as (path, requests):
        assert call(flavour, path, RETRIES, "remove_instances", 7) == {
            "instance_id": 7,
            "removed": 0,
        }
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_remove_instances_rejects_a_404_to_its_first_attempt(flavour: str) -> None:
    gone = http_answer("404 Not Found", b'{"error":"no instance has instance_id 7"}')
    with scripted_sidecar(gone, gone) as (path, requests), pytest.raises(SidecarRejected) as caught:
        call(flavour, path, RETRIES, "remove_instances", 7)
    assert (caught.value.status, caught.value.message) == (404, "no instance has instance_id 7")
    assert len(requests) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_retries_a_503(flavour: str) -> None:
    retry = Retry(attempts=3, backoff=0.01, max_backoff=0.01)
    with scripted_sidecar(unavailable_503(NOT_SAVED), WHOLE) as (path, requests):
        assert call(flavour, path, retry, "ready", "generate") == json.loads(BEAT)
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_503_is_unavailable_with_the_sidecars_message(flavour: str) -> None:
    with (
        scripted_sidecar(unavailable_503(NOT_SAVED)) as (path, _),
        pytest.raises(SidecarUnavailable) as caught,
    ):
        call(flavour, path, NO_RETRY, "ready", "generate")
    request = "PUT /v1/endpoints/generate"
    assert str(caught.value) == f"the sidecar at {path} answered {request} with 503: {NOT_SAVED}"
    assert caught.value.retry_after == 1.0
    assert isinstance(caught.value.error, SidecarRejected)
    assert (caught.value.error.status, caught.value.error.message) == (503, NOT_SAVED)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_waits_retry_after_at_most_max_backoff(flavour: str) -> None:
    retry = Retry(attempts=2, backoff=0.0, max_backoff=0.3)  # no jitter: any wait is Retry-After
    with scripted_sidecar(unavailable_503(NOT_SAVED), WHOLE) as (path, _):
        start = time.monotonic()
        call(flavour, path, retry, "heartbeat")
        elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.9


def test_client_retry_after_is_the_floor_of_the_jittered_wait() -> None:
    waits: list[float] = []
    failures = [
        SidecarUnavailable("/s", SidecarRejected(503, "not saved"), retry_after=1.0),
        SidecarUnavailable("/s", SidecarRejected(503, "stopping"), retry_after=9.0),
    ]

    def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert Retry(attempts=3, backoff=0.1, max_backoff=2.0).call(operation, waits.append) == "done"
    assert waits == [1.0, 2.0]


def test_client_retry_after_as_a_date_is_ignored() -> None:
    refusal = unavailable_503(NOT_SAVED, retry_after="Fri, 31 Dec 1999 23:59:59 GMT")
    with scripted_sidecar(refusal) as (path, _), pytest.raises(SidecarUnavailable) as caught:
        SidecarClient(path).heartbeat()
    assert caught.value.retry_after is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_500_is_rejected_and_not_retried(flavour: str) -> None:
    crashed = http_answer("500 Internal Server Error", b"Internal Server Error")
    with (
        scripted_sidecar(crashed, WHOLE) as (path, requests),
        pytest.raises(SidecarRejected) as caught,
    ):
        call(flavour, path, RETRIES, "status")
    assert (caught.value.status, caught.value.message) == (500, "Internal Server Error")
    assert len(requests) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_refusal_after_a_cut_is_not_retried(flavour: str) -> None:
    refused = http_answer("422 Unprocessable Entity", b'{"error":"no"}')
    with (
        scripted_sidecar(AFTER_THE_HEADERS, refused, WHOLE) as (path, requests),
        pytest.raises(SidecarRejected) as caught,
    ):
        call(flavour, path, RETRIES, "ready", "generate")
    assert (caught.value.status, caught.value.message) == (422, "no")
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_answer_that_is_not_http_is_not_retried(flavour: str) -> None:
    with (
        scripted_sidecar(b"SSH-2.0-OpenSSH_9.6\r\n", WHOLE) as (path, requests),
        pytest.raises(SidecarProtocolError) as caught,
    ):
        call(flavour, path, RETRIES, "status")
    assert str(caught.value) == "not an HTTP/1.1 status line: b'SSH-2.0-OpenSSH_9.6\\r\\n'"
    assert len(requests) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_session_opening_cut_short_is_retried(flavour: str) -> None:
    cut = SESSION_OPEN[: SESSION_OPEN.index(b"transfer-encoding")]
    with scripted_sidecar(cut, SESSION_OPEN) as (path, requests):
        assert open_and_close_session(flavour, path, RETRIES) == 5
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_session_503_is_unavailable_with_the_sidecars_message(flavour: str) -> None:
    stopping = unavailable_503("the sidecar is stopping and takes no more changes")
    with scripted_sidecar(stopping) as (path, _), pytest.raises(SidecarUnavailable) as caught:
        open_and_close_session(flavour, path, NO_RETRY)
    assert str(caught.value) == (
        f"the sidecar at {path} answered POST /v1/session with 503: "
        "the sidecar is stopping and takes no more changes"
    )


# -- heartbeats -------------------------------------------------------------------------------


def test_client_heartbeats_keep_the_worker_live_until_stopped(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar({"DYN_SIDECAR_HEARTBEAT_TIMEOUT": "0.5", **READY_AT_START}))
    client = SidecarClient(sc.socket_path)
    with client.start_heartbeats(0.1) as beats:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert code(sc, "/live") == 200
            time.sleep(0.05)
    assert beats.sent >= 10
    assert (beats.failures, beats.last_error, beats.running) == (0, None, False)
    assert turns(sc, "/live", 503, within=1.5) is not None
    assert sc.probe("/live").json()["reason"] == "worker life 1 ended: no heartbeat for 0.5s"


def test_client_heartbeats_survive_a_missing_sidecar(run_sidecar: RunSidecar) -> None:
    path = short_socket_path()
    beats = SidecarClient(path).start_heartbeats(0.05)
    try:
        assert wait_until(lambda: beats.failures >= 3)
        assert isinstance(beats.last_error, SidecarUnavailable)
        run_sidecar({"DYN_SIDECAR_SOCKET": str(path)})
        assert wait_until(lambda: beats.sent >= 3)
        assert beats.running
    finally:
        beats.stop()


# -- sessions ---------------------------------------------------------------------------------


def test_client_session_sigkill_of_the_worker_fails_the_live_path(sidecar: Sidecar) -> None:
    SidecarClient(sidecar.socket_path).ready("generate")
    command = [sys.executable, "-c", WORKER, str(sidecar.socket_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == b"1\n"
            assert code(sidecar, "/live") == 200
            worker.send_signal(signal.SIGKILL)
            assert turns(sidecar, "/live", 503, within=1.0) is not None
        finally:
            worker.kill()
    assert sidecar.probe("/live").json()["reason"] == SESSION_CLOSED
    assert sidecar.probe("/health").json()["endpoints"] == {"generate": "notready"}


def test_client_session_close_fails_the_live_path(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.ready("generate")
    with client.open_session() as session:
        assert session.life == 1
        assert code(sidecar, "/live") == 200
    assert turns(sidecar, "/live", 503, within=1.0) is not None
    assert sidecar.probe("/live").json()["reason"] == SESSION_CLOSED


def test_client_session_reports_the_life_it_belongs_to(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.open_session().close()
    assert wait_until(lambda: "reason" in sidecar.probe("/live").json())
    with client.open_session() as session:
        assert session.life == 2  # the session is the first signal after life 1 ended


def test_client_session_rejected_with_an_invalid_pid(sidecar: Sidecar) -> None:
    with pytest.raises(SidecarRejected) as caught:
        SidecarClient(sidecar.socket_path).open_session(pid=0)
    assert caught.value.status == 422
    assert caught.value.message == sidecar_error(sidecar, "POST", "/v1/session", json={"pid": 0})
    assert caught.value.message.startswith("pid 0 is invalid")


def restart_under_a_session(run_sidecar: RunSidecar, sig: int) -> None:
    """Stop a sidecar with `sig` while a reconnecting session is held, start another on the same
    socket, and check the session came back to it: closing it ends the worker's life there.
    """
    first = accepting(run_sidecar(READY_AT_START))
    session = SidecarClient(first.socket_path).open_session(reconnect=True)
    try:
        first.stop(sig)
        time.sleep(0.1)  # a reopen that reached the dying sidecar has finished by now
        reopened = session.reconnects
        second = run_sidecar({**READY_AT_START, "DYN_SIDECAR_SOCKET": str(first.socket_path)})
        assert wait_until(lambda: session.reconnects > reopened)
        assert session.life == 1  # the life survived the restart (state file)
        assert code(second, "/live") == 200
    finally:
        session.close()
    assert turns(second, "/live", 503, within=1.0) is not None
    assert second.probe("/live").json()["reason"] == SESSION_CLOSED


def test_client_session_reconnects_after_the_sidecar_restarts(run_sidecar: RunSidecar) -> None:
    restart_under_a_session(run_sidecar, signal.SIGTERM)


def test_client_session_reconnects_after_the_sidecar_is_killed(run_sidecar: RunSidecar) -> None:
    restart_under_a_session(run_sidecar, signal.SIGKILL)


def test_client_session_is_not_reopened_against_a_stopping_sidecar(
    run_sidecar: RunSidecar,
) -> None:
    """A session opened while the sidecar stops would be ended at once: the sidecar answers
    503 instead, so a reconnecting client waits for the next sidecar rather than spinning."""
    first = accepting(run_sidecar({**READY_AT_START, "DYN_SIDECAR_DRAIN_SECONDS": "0"}))
    session = SidecarClient(first.socket_path).open_session(reconnect=True)
    try:
        assert first.stop() == 0
        assert session.reconnects == 0
    finally:
        session.close()


# -- asyncio ----------------------------------------------------------------------------------


def test_client_async_ready_and_notready_move_the_health_path(sidecar: Sidecar) -> None:
    client = AsyncSidecarClient(sidecar.socket_path)
    codes: list[int] = []

    async def main() -> None:
        await client.ready("generate")
        codes.append(code(sidecar, "/health"))
        await client.notready("generate")
        codes.append(code(sidecar, "/health"))

    asyncio.run(main())
    assert codes == [200, 503]


def test_client_async_instances_round_trip_exactly(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar(FRONTEND))
    client = AsyncSidecarClient(sc.socket_path)

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        registered = await client.register_instance(
            "dynamo", "backend", "generate", MAX_ID, TRANSPORT
        )
        status = await client.status()
        return registered, status, await client.remove_instances(MAX_ID)

    registered, status, removed = asyncio.run(main())
    assert registered["instance_id"] == MAX_ID
    assert [i["instance_id"] for i in status["instances"]] == [MAX_ID]
    assert removed == {"instance_id": MAX_ID, "removed": 1}
    assert sc.probe("/health").json()["instances"] == []


def test_client_async_errors_match_the_sync_client(sidecar: Sidecar) -> None:
    path = missing_path()

    async def main() -> tuple[BaseException, BaseException]:
        with pytest.raises(SidecarRejected) as rejected:
            await AsyncSidecarClient(sidecar.socket_path).set_endpoint("bad name!", "ready")
        with pytest.raises(SidecarUnavailable) as unavailable:
            await AsyncSidecarClient(path).heartbeat()
        return rejected.value, unavailable.value

    rejected, unavailable = asyncio.run(main())
    assert isinstance(rejected, SidecarRejected)
    assert (rejected.status, rejected.message) == (422, bad_name_error(sidecar))
    assert str(unavailable) == f"no sidecar at {path}: [Errno 2] No such file or directory"


def test_client_async_retry_gives_up_after_its_attempts() -> None:
    with fake_sidecar(None) as (path, accepted):
        client = AsyncSidecarClient(path, retry=Retry(attempts=3, backoff=0.01))
        with pytest.raises(SidecarUnavailable):
            asyncio.run(client.status())
    assert len(accepted) == 3


def test_client_async_reads_a_chunked_answer() -> None:
    answer = http_answer("200 OK", b'{"life":3,"status":"alive"}', chunked=True)
    with fake_sidecar(answer) as (path, _):
        assert asyncio.run(AsyncSidecarClient(path).heartbeat()) == {"life": 3, "status": "alive"}


def test_client_async_times_out_as_unavailable() -> None:
    with fake_sidecar(None, hold=True) as (path, _), pytest.raises(SidecarUnavailable) as caught:
        asyncio.run(AsyncSidecarClient(path, timeout=0.2).status())
    assert str(caught.value) == f"no answer from the sidecar at {path} within 0.2s"


def test_client_async_heartbeats_run_until_stopped(sidecar: Sidecar) -> None:
    client = AsyncSidecarClient(sidecar.socket_path)

    async def main() -> tuple[int, int, bool]:
        beats = client.start_heartbeats(0.05)
        async with beats:
            await asyncio.sleep(0.4)
        return beats.sent, beats.failures, beats.running

    sent, failures, running = asyncio.run(main())
    assert sent >= 4
    assert (failures, running) == (0, False)


def test_client_async_session_close_fails_the_live_path(sidecar: Sidecar) -> None:
    client = AsyncSidecarClient(sidecar.socket_path)
    seen: list[object] = []

    async def main() -> None:
        await client.ready("generate")
        async with await client.open_session() as session:
            seen.extend([session.life, code(sidecar, "/live")])

    asyncio.run(main())
    assert seen == [1, 200]
    assert turns(sidecar, "/live", 503, within=1.0) is not None
    assert sidecar.probe("/live").json()["reason"] == SESSION_CLOSED


# -- packaging --------------------------------------------------------------------------------


def test_client_imports_only_the_standard_library() -> None:
    script = (
        "import sys; import sidecar.client; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(THIRD_PARTY)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
