"""The worker's side of the health sidecar's Unix socket, in the Python standard library alone.

A worker tells the sidecar what it serves; the sidecar answers the kubelet's probes. This file
imports nothing outside the standard library, so a worker may vendor it as it is::

    from sidecar.client import Retry, SidecarClient

    client = SidecarClient(retry=Retry.patient())  # the sidecar may start after the worker
    with client.open_session():  # the sidecar sees this worker die, even on SIGKILL
        load_model()
        client.ready("generate")  # the health path answers 200 from now on
        with client.start_heartbeats(interval=5.0):  # a hung worker fails the live path
            serve_forever()
        client.notready("generate")

`AsyncSidecarClient` has the same methods as coroutines. The socket is the `socket_path`
argument, else `DYN_SIDECAR_SOCKET`, else `/var/run/dynamo/health.sock`. Every failure is a
`SidecarError`: `SidecarUnavailable` when the sidecar cannot take the request now (nothing
answers on the socket, the answer is cut short, or the sidecar answers 503), the only kind
that `Retry` retries, and `SidecarRejected` when the sidecar refuses a request.

Both clients read answers with the small HTTP/1.1 readers below, one grammar parsed by the
same functions, rather than with `http.client`, which takes a connection closed among the
headers for their end: a sidecar killed mid-answer must be told apart from one that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_TIMEOUT",
    "SOCKET_ENV",
    "AsyncHeartbeats",
    "AsyncSession",
    "AsyncSidecarClient",
    "Heartbeats",
    "Retry",
    "Session",
    "SidecarClient",
    "SidecarError",
    "SidecarProtocolError",
    "SidecarRejected",
    "SidecarUnavailable",
    "UnixHTTPConnection",
    "resolve_socket",
]

DEFAULT_SOCKET = "/var/run/dynamo/health.sock"
SOCKET_ENV = "DYN_SIDECAR_SOCKET"
DEFAULT_TIMEOUT = 2.0
# A reopened session should follow a restarted sidecar quickly: the worker is unwatched until then.
RECONNECT_BACKOFF = 0.05
RECONNECT_MAX_BACKOFF = 0.5

# Before Python 3.10 (socket) and 3.11 (asyncio) these are not the builtin TimeoutError.
TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError, socket.timeout, asyncio.TimeoutError)
STREAM_FAILURES: tuple[type[Exception], ...] = (OSError, *TIMEOUTS)
# asyncio's default stream limit, which the sync reader keeps to as well.
MAX_LINE = 2**16
LINE_TOO_LONG = f"a line of the answer is longer than {MAX_LINE} bytes"
# The one error of an answer cut short, wherever the cut fell and whichever client saw it.
HUNG_UP = "the sidecar hung up before its answer ended"
# The first line of a session is about 30 bytes; anything longer is not the sidecar.
MAX_SESSION_LINE = 4096

EndpointStatus = Literal["ready", "notready"]
JSONObject = dict[str, Any]
Headers = Mapping[str, str]
# The status code, the headers (names lowercased) and the whole body of an answer.
Answer = tuple[int, Headers, bytes]
T = TypeVar("T")

logger = logging.getLogger(__name__)


def resolve_socket(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The socket to use: `path`, else `DYN_SIDECAR_SOCKET`, else the default path.

    An empty value counts as unset, as everywhere in Dynamo and the sidecar, so a chart that
    renders an empty variable does not point the worker at the current directory.
    """
    if path is not None and os.fspath(path):
        return os.fspath(path)
    configured = (os.environ if environ is None else environ).get(SOCKET_ENV, "")
    return configured or DEFAULT_SOCKET


# -- errors -----------------------------------------------------------------------------------


class SidecarError(Exception):
    """Anything that went wrong talking to the sidecar: catch this to catch them all."""


class SidecarUnavailable(SidecarError):
    """The sidecar cannot take the request now; the only error `Retry` retries.

    Either nothing answered on the socket (it is missing, refuses, hangs, or hung up before
    its answer ended, as a sidecar killed mid-answer does) and `error` is the socket's error;
    or the sidecar answered 503 (it applied a change it could not save to its state file yet,
    or it is stopping and takes no more changes) and `error` is that answer as a
    `SidecarRejected`, with the sidecar's message. `retry_after` is the seconds of a 503's
    `Retry-After`, when it had one. A worker that starts before its sidecar sees this.
    """

    def __init__(
        self,
        socket_path: str,
        error: BaseException,
        timeout: float | None = None,
        retry_after: float | None = None,
    ):
        self.socket_path = socket_path
        self.error = error
        self.retry_after = retry_after
        if isinstance(error, SidecarRejected):
            where = f" {error.request}" if error.request else ""
            message = f"the sidecar at {socket_path} answered{where} with {error.status}: "
            message += error.message
        elif isinstance(error, TIMEOUTS) and timeout is not None:
            message = f"no answer from the sidecar at {socket_path} within {timeout:g}s"
        else:
            message = f"no sidecar at {socket_path}: {error}"
        super().__init__(message)


class SidecarRejected(SidecarError):
    """The sidecar answered 4xx or 5xx other than 503: the request is wrong, and retrying
    will not help.

    `status` is the HTTP status code and `message` the sidecar's `error` line, which says what
    is wrong and what is allowed.
    """

    def __init__(self, status: int, message: str, request: str = "") -> None:
        self.status = status
        self.message = message
        self.request = request
        where = f" {request}" if request else ""
        super().__init__(f"the sidecar refused{where} with {status}: {message}")


class SidecarProtocolError(SidecarError):
    """Something answered on the socket, but not the sidecar's HTTP/1.1 and JSON."""


def rejection(status: int, body: bytes, request: str) -> SidecarRejected:
    """The error for a 4xx/5xx answer, with the sidecar's own words when it gave them."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        message = decoded["error"]
    else:
        message = body.decode("utf-8", "replace").strip() or "(no message)"
    return SidecarRejected(status, message, request)


def is_number(text: str) -> bool:
    """Decimal digits only: `str.isdigit` also takes `²`, which `int` refuses."""
    return text.isascii() and text.isdigit()


def retry_after_seconds(headers: Headers) -> float | None:
    """The seconds of `Retry-After`; None without it, or for the HTTP-date form, which the
    sidecar does not send (a clock skewed between containers would make it meaningless)."""
    value = headers.get("retry-after", "").strip()
    return float(value) if is_number(value) else None


def refusal(answer: Answer, request: str, socket_path: str) -> SidecarError:
    """The error for a 4xx/5xx answer: a 503 is the sidecar unavailable for now, which
    `Retry` retries; every other status is a refusal, as it always was."""
    status, headers, body = answer
    refused = rejection(status, body, request)
    if status == 503:
        return SidecarUnavailable(socket_path, refused, retry_after=retry_after_seconds(headers))
    return refused


def decode_answer(
    answer: Answer, request: str, socket_path: str, if_404: JSONObject | None = None
) -> JSONObject:
    """The JSON object of a 2xx answer, or `if_404` for a 404 when given; raise the matching
    error for anything else."""
    status, _, body = answer
    if status == 404 and if_404 is not None:
        return if_404
    if status >= 400:
        raise refusal(answer, request, socket_path)
    try:
        decoded = json.loads(body)
    except ValueError as exc:
        raise SidecarProtocolError(f"the answer to {request} is not JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise SidecarProtocolError(f"the answer to {request} is not a JSON object: {decoded!r}")
    return decoded


# -- retries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """How often to try again when the sidecar is unavailable; the worker chooses.

    Only `SidecarUnavailable` is retried, never a refusal: a 4xx (or a 500) will not change.
    That includes an answer cut short, whose request may have taken effect before the sidecar
    died, and a 503 for a change applied but not yet saved. Both are safe to retry because
    every call of the clients is idempotent, doing it twice ends in the state doing it once
    does: an endpoint set to what it already is, a heartbeat, a read, an instance registered
    again (answered 200 instead of 201, with the same body) or removed again (see
    `SidecarClient.remove_instances`). A timeout after the request was sent was retried
    on the same grounds before.

    The wait before retry `n` (1-based) is uniform in `[0, min(max_backoff, backoff *
    2**(n-1))]` ("full jitter"), so many workers restarting together do not hit the sidecar
    in step. After a 503 with `Retry-After`, the wait is at least that many seconds, but never
    more than `max_backoff`: the sidecar's hint raises the floor, the worker's bound on any
    one wait stays the ceiling. The default makes one attempt.
    """

    attempts: int = 1
    backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    @classmethod
    def patient(cls) -> Retry:
        """For a worker that may start before its sidecar: 30 attempts over ~25 s (51 s at most)."""
        return cls(attempts=30, backoff=0.1, max_backoff=2.0)

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(max(retry - 1, 0), 62))
        return ceiling * rng()

    def call(self, operation: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
        """Run `operation`, retrying it while the sidecar is unavailable."""
        for attempt in range(1, self.attempts):
            try:
                return operation()
            except SidecarUnavailable as exc:
                sleep(self._note_failure(attempt, exc))
        return operation()

    async def acall(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`call` for coroutines: sleeps with `asyncio.sleep`."""
        for attempt in range(1, self.attempts):
            try:
                return await operation()
            except SidecarUnavailable as exc:
                await asyncio.sleep(self._note_failure(attempt, exc))
        return await operation()

    def _note_failure(self, attempt: int, exc: SidecarUnavailable) -> float:
        wait = self.delay(attempt)
        if exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, self.max_backoff))
        logger.debug("attempt %d of %d: %s; retrying in %.3fs", attempt, self.attempts, exc, wait)
        return wait


# -- requests ---------------------------------------------------------------------------------


def request_body(fields: Mapping[str, Any] | None) -> bytes | None:
    """Compact JSON for a request, or no body at all."""
    if fields is None:
        return None
    return json.dumps(fields, separators=(",", ":")).encode()


def pid_body(pid: int | None) -> bytes | None:
    """The optional `{"pid": N}` of a heartbeat or a session."""
    return None if pid is None else request_body({"pid": pid})


def endpoint_path(name: str) -> str:
    """Quoted, so that any name reaches the sidecar, which alone decides whether it is valid."""
    return f"/v1/endpoints/{quote(name, safe='')}"


def instance_body(
    namespace: str,
    component: str,
    endpoint: str,
    instance_id: int,
    transport: Mapping[str, Any],
    model: bool | None,
) -> bytes | None:
    """The body of `POST /v1/instances`; `model` is left out unless given."""
    fields: JSONObject = {
        "namespace": namespace,
        "component": component,
        "endpoint": endpoint,
        "instance_id": instance_id,
        "transport": dict(transport),
    }
    if model is not None:
        fields["model"] = model
    return request_body(fields)


def instances_path(lease: str | None) -> str:
    """`POST /v1/instances`, owned by `lease` when one is given."""
    return "/v1/instances" if lease is None else f"/v1/instances?lease={quote(lease, safe='')}"


def lease_path(lease: str) -> str:
    return f"/v1/leases/{quote(lease, safe='')}"


def session_path(lease: str | None) -> str:
    """`POST /v1/session`, holding again the lease of the session before a sidecar restart."""
    return "/v1/session" if lease is None else f"/v1/session?lease={quote(lease, safe='')}"


def none_revoked(lease: str) -> JSONObject:
    """The answer of a retried revocation that found the lease gone (see `revoke_lease`)."""
    return {"lease": lease, "removed": 0}


def instance_path(instance_id: int) -> str:
    return f"/v1/instances/{quote(str(instance_id), safe='')}"


def none_removed(instance_id: int) -> JSONObject:
    """The answer of a retried delete that found the instances gone (see `remove_instances`)."""
    return {"instance_id": instance_id, "removed": 0}


def request_headers(body: bytes | None, keep_alive: bool = False) -> dict[str, str]:
    headers = {"Host": "sidecar", "Accept": "application/json"}
    if not keep_alive:
        headers["Connection"] = "close"
    if body is not None:
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
    return headers


def encode_request(method: str, path: str, body: bytes | None, keep_alive: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request_headers(body, keep_alive).items()
    )
    return (head + "\r\n").encode("latin-1") + (body or b"")


def connect_unix(socket_path: str, timeout: float | None) -> socket.socket:
    """A stream socket connected to `socket_path`; `timeout` bounds each of its operations."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixHTTPConnection(http.client.HTTPConnection):
    """`http.client` over the sidecar's Unix socket instead of TCP, for callers of its API.

    The clients here do not use it: see the module's docstring.
    """

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__("sidecar", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = connect_unix(self.socket_path, self.timeout)


@contextlib.contextmanager
def stream_failures(socket_path: str, timeout: float) -> Iterator[None]:
    """The socket's failures as client errors, the same for both clients.

    An answer cut short (the connection closed before the status line, among the headers or
    in the body: `EOFError`, asyncio's `IncompleteReadError` among them) is the sidecar
    unavailable, as when it is not there at all: a sidecar killed mid-answer is restarting.
    """
    try:
        yield
    except STREAM_FAILURES as exc:
        raise SidecarUnavailable(socket_path, exc, timeout) from exc
    except EOFError as exc:
        raise SidecarUnavailable(socket_path, ConnectionResetError(HUNG_UP), timeout) from exc
    except asyncio.LimitOverrunError as exc:
        raise SidecarProtocolError(LINE_TOO_LONG) from exc


# -- reading answers --------------------------------------------------------------------------


def parse_status_line(line: bytes) -> int:
    """The status code of an HTTP/1.1 status line."""
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not is_number(parts[1]):
        raise SidecarProtocolError(f"not an HTTP/1.1 status line: {line!r}")
    return int(parts[1])


def parse_header_line(line: bytes) -> tuple[str, str]:
    """A header's name, lowercased, and its value."""
    name, colon, value = line.decode("latin-1").partition(":")
    if not colon:
        raise SidecarProtocolError(f"not an HTTP header line: {line!r}")
    return name.strip().lower(), value.strip()


def parse_chunk_size(line: bytes, limit: int | None) -> int:
    """The size of the chunk a chunk-size line announces, at most `limit` when given."""
    digits = line.split(b";", 1)[0].strip()
    if not re.fullmatch(rb"[0-9A-Fa-f]+", digits):
        raise SidecarProtocolError(f"not a chunk size: {line!r}")
    size = int(digits, 16)
    if limit is not None and size > limit:
        raise SidecarProtocolError(f"a chunk of {size} bytes, where at most {limit} were expected")
    return size


def content_length(headers: Headers) -> int | None:
    length = headers.get("content-length")
    if length is not None and not is_number(length):
        raise SidecarProtocolError(f"not a Content-Length: {length!r}")
    return None if length is None else int(length)


def is_chunked(headers: Headers) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def read_line(answer: io.BufferedReader) -> bytes:
    """One line, up to its LF (its CRLF from the sidecar): a line without one was cut short."""
    line = answer.readline(MAX_LINE + 1)
    if line.endswith(b"\n"):
        return line
    if len(line) > MAX_LINE:
        raise SidecarProtocolError(LINE_TOO_LONG)
    raise EOFError(HUNG_UP)


def read_exactly(answer: io.BufferedReader, size: int) -> bytes:
    data = answer.read(size)
    if len(data) < size:
        raise EOFError(HUNG_UP)
    return data


def read_head(answer: io.BufferedReader) -> tuple[int, dict[str, str]]:
    """The status code and the headers of an answer, through the empty line that ends them."""
    status = parse_status_line(read_line(answer))
    headers: dict[str, str] = {}
    while (line := read_line(answer)) != b"\r\n":
        name, value = parse_header_line(line)
        headers[name] = value
    return status, headers


def read_chunk(answer: io.BufferedReader, limit: int | None = None) -> bytes:
    """One chunk of a chunked body; empty for the last one."""
    size = parse_chunk_size(read_line(answer), limit)
    if size == 0:
        return b""
    data = read_exactly(answer, size)
    if read_exactly(answer, 2) != b"\r\n":
        raise SidecarProtocolError("a chunk does not end with CRLF")
    return data


def read_body(answer: io.BufferedReader, headers: Headers) -> bytes:
    """The whole body: chunked, by Content-Length, or up to the end of the connection.

    Only the last kind cannot tell a cut from an end; the sidecar never sends it.
    """
    if is_chunked(headers):
        body = bytearray()
        while chunk := read_chunk(answer):
            body += chunk
        return bytes(body)
    length = content_length(headers)
    return answer.read() if length is None else read_exactly(answer, length)


def send(sock: socket.socket, request: bytes) -> None:
    """Send a request; a hang-up while sending leaves an early answer to read.

    The sidecar may refuse a request from its path alone (a bad endpoint name, say), answer,
    and hang up before the body arrives; sending the body then fails, but the answer is
    already here to be read, as curl and httpx read it.
    """
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(request)


def send_once(
    socket_path: str, timeout: float, method: str, path: str, body: bytes | None
) -> Answer:
    """One request on a new connection: the status code, the headers and the whole body.

    `timeout` bounds each socket operation (connect, send, each read).
    """
    with stream_failures(socket_path, timeout), connect_unix(socket_path, timeout) as sock:
        return exchange(sock, encode_request(method, path, body))


def exchange(sock: socket.socket, request: bytes) -> Answer:
    """Send `request` and read the whole answer to it."""
    with sock.makefile("rb") as answer:
        send(sock, request)
        status, headers = read_head(answer)
        return status, headers, read_body(answer, headers)


# -- the sync client --------------------------------------------------------------------------


class SidecarClient:
    """Tell the sidecar what this worker serves; one short connection per call.

    A new connection per call needs no reconnect logic: a sidecar that restarted between two
    calls is simply there again. Every method returns the sidecar's decoded JSON answer.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry = Retry(),  # frozen, so one default shared by all is safe
    ) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout
        self.retry = retry

    def __repr__(self) -> str:
        return f"SidecarClient({self.socket_path!r}, timeout={self.timeout!r}, retry={self.retry})"

    def set_endpoint(self, name: str, status: EndpointStatus) -> JSONObject:
        """`PUT /v1/endpoints/{name}`: the worker serves (`ready`) or stops serving it."""
        return self._call("PUT", endpoint_path(name), request_body({"status": status}))

    def ready(self, name: str) -> JSONObject:
        """The worker serves `name`: with every required endpoint ready, the probes pass."""
        return self.set_endpoint(name, "ready")

    def notready(self, name: str) -> JSONObject:
        """The worker stops serving `name` (readiness fails, liveness does not)."""
        return self.set_endpoint(name, "notready")

    def register_instance(
        self,
        namespace: str,
        component: str,
        endpoint: str,
        instance_id: int,
        transport: Mapping[str, Any],
        model: bool | None = None,
        lease: str | None = None,
    ) -> JSONObject:
        """`POST /v1/instances`: an instance a frontend-mode sidecar lists on its health path.

        `instance_id` is sent as an exact JSON integer (up to 2**64-1), never as a float.
        With `lease` (a session's `.lease`, or one from `grant_lease`), the instance leaves
        the moment the session closes or the lease expires.
        """
        body = instance_body(namespace, component, endpoint, instance_id, transport, model)
        return self._call("POST", instances_path(lease), body)

    def grant_lease(self, ttl_seconds: float | None = None) -> JSONObject:
        """`POST /v1/leases`: an owner for instances that leave `ttl_seconds` (default 10)
        after its last renewal. A retried grant may leave an unused lease, which expires."""
        body = None if ttl_seconds is None else request_body({"ttl_seconds": ttl_seconds})
        return self._call("POST", "/v1/leases", body)

    def renew_lease(self, lease: str) -> JSONObject:
        """`PUT /v1/leases/{lease}`: its instances stay a full TTL from now."""
        return self._call("PUT", lease_path(lease))

    def revoke_lease(self, lease: str) -> JSONObject:
        """`DELETE /v1/leases/{lease}`: its instances leave now. A 404 to a retry is answered
        as none removed, as `remove_instances` does."""
        return self._call("DELETE", lease_path(lease), if_retry_404=none_revoked(lease))

    def start_renewals(self, lease: str, interval: float) -> Heartbeats:
        """Renew `lease` every `interval` seconds from a daemon thread until `.stop()`."""
        once = SidecarClient(self.socket_path, self.timeout, Retry())
        return Heartbeats(lambda: once.renew_lease(lease), interval).start()

    def remove_instances(self, instance_id: int) -> JSONObject:
        """`DELETE /v1/instances/{id}`: every instance with that id; 404 when there is none.

        A retry finds none if the attempt before it took effect (its answer cut short, or a
        503 for a removal not yet saved); a 404 to a retry is therefore answered
        `{"instance_id": id, "removed": 0}`, not raised: what the worker asked for, no
        instance with that id, holds, and `removed` counts what the answered attempt removed.
        Which attempt removed them, or whether they ever existed, cannot be told then; a 404
        to the first attempt is still `SidecarRejected`, since then none existed.
        """
        gone = none_removed(instance_id)
        return self._call("DELETE", instance_path(instance_id), if_retry_404=gone)

    def heartbeat(self, pid: int | None = None) -> JSONObject:
        """`POST /v1/heartbeat`: the worker is alive (and, with a pid, which process it is)."""
        return self._call("POST", "/v1/heartbeat", pid_body(pid))

    def status(self) -> JSONObject:
        """`GET /v1/status`: what the health path shows, always with 200."""
        return self._call("GET", "/v1/status")

    def worker(self) -> JSONObject:
        """`GET /v1/worker`: the worker's life as the sidecar sees it (live, pid, process)."""
        return self._call("GET", "/v1/worker")

    def start_heartbeats(self, interval: float, pid: int | None = None) -> Heartbeats:
        """Send a heartbeat every `interval` seconds from a daemon thread until `.stop()`.

        Each heartbeat is one attempt: the next one is the retry, so a slow sidecar never
        delays the beat after it.
        """
        once = SidecarClient(self.socket_path, self.timeout, Retry())
        return Heartbeats(lambda: once.heartbeat(pid), interval).start()

    def open_session(self, pid: int | None = None, reconnect: bool = False) -> Session:
        """Hold `POST /v1/session` open: when this process dies, the sidecar ends its life.

        With `reconnect`, a daemon thread opens the session again whenever the sidecar
        restarts (the held answer ends), so the new sidecar watches this worker too.
        Opening is retried under the client's `Retry` like any call, an opening cut short or
        answered 503 included: its connection is closed either way, which a sidecar still
        there counts as that session's end, so another attempt is a new session.
        """
        session = Session(self.socket_path, self.timeout, pid)
        self.retry.call(session.connect)
        if reconnect:
            session.follow_restarts()
        return session

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        if_retry_404: JSONObject | None = None,
    ) -> JSONObject:
        """One request under `self.retry`; `if_retry_404` answers a 404 to a retry."""
        request = f"{method} {path}"
        attempts = 0

        def attempt() -> JSONObject:
            nonlocal attempts
            attempts += 1
            answer = send_once(self.socket_path, self.timeout, method, path, body)
            if_404 = if_retry_404 if attempts > 1 else None
            return decode_answer(answer, request, self.socket_path, if_404)

        return self.retry.call(attempt)


# -- heartbeats -------------------------------------------------------------------------------


class HeartbeatStats:
    """What a heartbeat loop has done, for the worker's logs and metrics."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"the heartbeat interval must be positive, not {interval!r}")
        self.interval = interval
        self.sent = 0
        self.failures = 0
        self.last_error: Exception | None = None

    def _succeeded(self) -> None:
        self.sent += 1

    def _failed(self, exc: Exception) -> None:
        # Debug only: a sidecar that restarts makes a few beats fail, and that is fine.
        self.failures += 1
        self.last_error = exc
        logger.debug("heartbeat failed (%d so far): %s", self.failures, exc, exc_info=exc)


class Heartbeats(HeartbeatStats):
    """A daemon thread that sends heartbeats on a fixed schedule until stopped.

    A failure is counted and logged, never raised: the loop keeps going, because a worker
    whose heartbeats stopped for good would be restarted as hung.
    """

    def __init__(self, send: Callable[[], object], interval: float) -> None:
        super().__init__(interval)
        self._send = send
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidecar-heartbeats", daemon=True)

    def start(self) -> Heartbeats:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending; waits for a heartbeat in flight (at most the client's timeout)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Heartbeats:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        # Scheduled from a fixed start, so a slow beat does not push every later one back.
        next_beat = time.monotonic()
        while not self._stopping.is_set():
            self._beat()
            next_beat = max(next_beat + self.interval, time.monotonic())
            self._stopping.wait(next_beat - time.monotonic())

    def _beat(self) -> None:
        try:
            self._send()
        except Exception as exc:
            self._failed(exc)
        else:
            self._succeeded()


# -- sessions ---------------------------------------------------------------------------------


def parse_session_line(line: bytes, socket_path: str) -> tuple[int, str | None]:
    """The life number and the lease from the session's first line
    `{"lease":"ID","life":N,"session":"open"}` (a sidecar before leases sends no lease)."""
    try:
        decoded = json.loads(line)
    except ValueError:
        decoded = None
    life = decoded.get("life") if isinstance(decoded, dict) else None
    lease = decoded.get("lease") if isinstance(decoded, dict) else None
    if (
        not isinstance(life, int)
        or isinstance(life, bool)
        or decoded.get("session") != "open"
        or not isinstance(lease, str | None)
    ):
        raise SidecarProtocolError(
            f"the sidecar at {socket_path} opened no session; its first line was {line!r}"
        )
    return life, lease


class Session:
    """The held `POST /v1/session`: its socket closing is this worker's death notice.

    The kernel closes the socket when the process ends, even on SIGKILL, so the sidecar
    learns of the death at once without sharing the process namespace. Only the first line
    of the answer is read; the rest of it never comes while the sidecar runs.

    `lease` owns the instances registered with it (`register_instance(..., lease=...)`):
    they leave when the session closes. A session opened again after a sidecar restart
    holds the same lease, its instances restored; if that lease has expired meanwhile, the
    session gets a new one (and `lease` changes), its old instances gone.
    """

    def __init__(self, socket_path: str, timeout: float, pid: int | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.pid = pid
        self.life: int | None = None
        self.lease: str | None = None
        self.reconnects = 0
        self.last_error: Exception | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._socket: socket.socket | None = None
        self._answer: io.BufferedReader | None = None
        self._follower: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def connect(self) -> int:
        """Open the session and return its life number; replaces a connection already held."""
        with stream_failures(self.socket_path, self.timeout):
            sock = connect_unix(self.socket_path, self.timeout)
            answer = sock.makefile("rb")
            try:
                life, lease = self._open(sock, answer)
            except SidecarRejected as exc:
                _close(sock, answer)
                if exc.status != 404 or self.lease is None:
                    raise
                logger.debug("the session's lease %s is gone; opening a new one", self.lease)
                self.lease = None
                return self.connect()
            except BaseException:
                _close(sock, answer)
                raise
        # Held from now on: no timeout, a read only ends when the sidecar or the kernel does.
        sock.settimeout(None)
        with self._lock:
            if self._closing.is_set():
                _hang_up(sock)
                _close(sock, answer)
                raise SidecarError("the session was closed while it was being opened")
            self._drop_locked()
            self._socket, self._answer, self.life, self.lease = sock, answer, life, lease
        return life

    def _open(self, sock: socket.socket, answer: io.BufferedReader) -> tuple[int, str | None]:
        """`AsyncSession._open`, line for line, but for the lease held again after a restart."""
        request = encode_request("POST", session_path(self.lease), pid_body(self.pid), True)
        send(sock, request)
        status, headers = read_head(answer)
        if status != 200:
            answered = (status, headers, read_body(answer, headers))
            raise refusal(answered, "POST /v1/session", self.socket_path)
        if not is_chunked(headers):
            raise SidecarProtocolError("the session's answer is not chunked")
        return parse_session_line(read_chunk(answer, MAX_SESSION_LINE), self.socket_path)

    def follow_restarts(self) -> None:
        """Reopen the session from a daemon thread each time the sidecar ends it."""
        if self._follower is None:
            self._follower = threading.Thread(
                target=self._follow, name="sidecar-session", daemon=True
            )
            self._follower.start()

    def close(self) -> None:
        """End the session: the sidecar ends this worker's life, as if it had died."""
        with self._lock:
            self._closing.set()
            self._drop_locked()
        if self._follower is not None and self._follower is not threading.current_thread():
            self._follower.join(self.timeout + 1.0)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _drop_locked(self) -> None:
        # shutdown() first: it wakes the follower blocked reading, and the sidecar sees EOF.
        _hang_up(self._socket)
        if self._socket is not None and self._answer is not None:
            _close(self._socket, self._answer)
        self._socket = self._answer = None

    def _follow(self) -> None:
        while not self._closing.is_set():
            self._wait_for_end()
            if self._closing.is_set():
                return
            logger.debug("the sidecar at %s ended the session; reopening it", self.socket_path)
            if self._reopen():
                self.reconnects += 1

    def _wait_for_end(self) -> None:
        """Block until the held answer ends: the sidecar stopped, or the socket was closed."""
        answer = self._answer
        try:
            while answer is not None and read_chunk(answer):
                pass
        except Exception:  # a hang-up, or close() racing this read: the answer ended either way
            pass

    def _reopen(self) -> bool:
        """Try until the sidecar is back (or the session is closed); True when reopened."""
        shape = Retry(backoff=RECONNECT_BACKOFF, max_backoff=RECONNECT_MAX_BACKOFF)
        retry = 0
        while not self._closing.is_set():
            try:
                self.connect()
                return True
            except Exception as exc:  # keep trying whatever went wrong: this thread is the watch
                self.last_error = exc
                retry += 1
                logger.debug("reopening the session failed: %s", exc)
                self._closing.wait(shape.delay(retry))
        return False


def _hang_up(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)


def _close(sock: socket.socket, answer: io.BufferedReader) -> None:
    """Close both: the socket's file descriptor stays open while its reader does."""
    answer.close()
    sock.close()


# -- the async client -------------------------------------------------------------------------


async def async_read_line(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n")


async def async_read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """`read_head` on asyncio streams."""
    status = parse_status_line(await async_read_line(reader))
    headers: dict[str, str] = {}
    while (line := await async_read_line(reader)) != b"\r\n":
        name, value = parse_header_line(line)
        headers[name] = value
    return status, headers


async def async_read_chunk(reader: asyncio.StreamReader, limit: int | None = None) -> bytes:
    """`read_chunk` on asyncio streams."""
    size = parse_chunk_size(await async_read_line(reader), limit)
    if size == 0:
        return b""
    data = await reader.readexactly(size)
    if await reader.readexactly(2) != b"\r\n":
        raise SidecarProtocolError("a chunk does not end with CRLF")
    return data


async def async_read_body(reader: asyncio.StreamReader, headers: Headers) -> bytes:
    """`read_body` on asyncio streams."""
    if is_chunked(headers):
        body = bytearray()
        while chunk := await async_read_chunk(reader):
            body += chunk
        return bytes(body)
    length = content_length(headers)
    return await reader.read() if length is None else await reader.readexactly(length)


async def within(socket_path: str, timeout: float, operation: Awaitable[T]) -> T:
    """Await `operation` for at most `timeout` seconds, with stream failures as client errors."""
    with stream_failures(socket_path, timeout):
        return await asyncio.wait_for(operation, timeout)


async def open_unix(socket_path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(socket_path, limit=MAX_LINE)


async def send_async_request(writer: asyncio.StreamWriter, request: bytes) -> None:
    """Write a request; a hang-up while writing leaves an early answer to read (see above)."""
    writer.write(request)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await writer.drain()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # the other side went first
        await writer.wait_closed()


async def async_send_once(
    socket_path: str, timeout: float, method: str, path: str, body: bytes | None
) -> Answer:
    """One request on a new connection, all of it (connect to last byte) within `timeout`."""

    async def exchange() -> Answer:
        reader, writer = await open_unix(socket_path)
        try:
            await send_async_request(writer, encode_request(method, path, body))
            status, headers = await async_read_head(reader)
            return status, headers, await async_read_body(reader, headers)
        finally:
            await close_writer(writer)

    return await within(socket_path, timeout, exchange())


class AsyncSidecarClient:
    """`SidecarClient` for asyncio: the same methods, as coroutines, and the same errors.

    Each call opens its own connection and finishes within `timeout` seconds in all.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry = Retry(),  # frozen, so one default shared by all is safe
    ) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout
        self.retry = retry

    def __repr__(self) -> str:
        return (
            f"AsyncSidecarClient({self.socket_path!r}, timeout={self.timeout!r}, "
            f"retry={self.retry})"
        )

    async def set_endpoint(self, name: str, status: EndpointStatus) -> JSONObject:
        """`PUT /v1/endpoints/{name}`: the worker serves (`ready`) or stops serving it."""
        return await self._call("PUT", endpoint_path(name), request_body({"status": status}))

    async def ready(self, name: str) -> JSONObject:
        """The worker serves `name`."""
        return await self.set_endpoint(name, "ready")

    async def notready(self, name: str) -> JSONObject:
        """The worker stops serving `name`."""
        return await self.set_endpoint(name, "notready")

    async def register_instance(
        self,
        namespace: str,
        component: str,
        endpoint: str,
        instance_id: int,
        transport: Mapping[str, Any],
        model: bool | None = None,
        lease: str | None = None,
    ) -> JSONObject:
        """`POST /v1/instances`, with `instance_id` sent exactly (see the sync client)."""
        body = instance_body(namespace, component, endpoint, instance_id, transport, model)
        return await self._call("POST", instances_path(lease), body)

    async def grant_lease(self, ttl_seconds: float | None = None) -> JSONObject:
        """`POST /v1/leases` (see the sync client)."""
        body = None if ttl_seconds is None else request_body({"ttl_seconds": ttl_seconds})
        return await self._call("POST", "/v1/leases", body)

    async def renew_lease(self, lease: str) -> JSONObject:
        """`PUT /v1/leases/{lease}`."""
        return await self._call("PUT", lease_path(lease))

    async def revoke_lease(self, lease: str) -> JSONObject:
        """`DELETE /v1/leases/{lease}`, a 404 to a retry answered as none removed."""
        return await self._call("DELETE", lease_path(lease), if_retry_404=none_revoked(lease))

    async def remove_instances(self, instance_id: int) -> JSONObject:
        """`DELETE /v1/instances/{id}`; 404 when there is none, and a 404 to a retry answered
        as none removed (see `SidecarClient.remove_instances`)."""
        gone = none_removed(instance_id)
        return await self._call("DELETE", instance_path(instance_id), if_retry_404=gone)

    async def heartbeat(self, pid: int | None = None) -> JSONObject:
        """`POST /v1/heartbeat`: the worker is alive."""
        return await self._call("POST", "/v1/heartbeat", pid_body(pid))

    async def status(self) -> JSONObject:
        """`GET /v1/status`: what the health path shows."""
        return await self._call("GET", "/v1/status")

    async def worker(self) -> JSONObject:
        """`GET /v1/worker`: the worker's life as the sidecar sees it (live, pid, process)."""
        return await self._call("GET", "/v1/worker")

    def start_heartbeats(self, interval: float, pid: int | None = None) -> AsyncHeartbeats:
        """Send a heartbeat every `interval` seconds from a task of the running loop.

        The task runs only while the loop does: a worker whose loop is blocked stops beating,
        which is the hang the heartbeat timeout exists to catch. (The thread of
        `SidecarClient.start_heartbeats` works from async code too, but keeps beating
        through a blocked loop.)
        """
        once = AsyncSidecarClient(self.socket_path, self.timeout, Retry())
        return AsyncHeartbeats(lambda: once.heartbeat(pid), interval)

    async def open_session(self, pid: int | None = None) -> AsyncSession:
        """Hold `POST /v1/session` open; see `SidecarClient.open_session`.

        Opening is retried as the sync client's is. No reconnect here: for that, use the
        sync client's session, whose thread needs no loop.
        """
        session = AsyncSession(self.socket_path, self.timeout, pid)
        await self.retry.acall(session.connect)
        return session

    async def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        if_retry_404: JSONObject | None = None,
    ) -> JSONObject:
        """`SidecarClient._call` as a coroutine."""
        request = f"{method} {path}"
        attempts = 0

        async def attempt() -> JSONObject:
            nonlocal attempts
            attempts += 1
            answer = await async_send_once(self.socket_path, self.timeout, method, path, body)
            if_404 = if_retry_404 if attempts > 1 else None
            return decode_answer(answer, request, self.socket_path, if_404)

        return await self.retry.acall(attempt)


class AsyncHeartbeats(HeartbeatStats):
    """A task that sends heartbeats until `await stop()`; failures are counted, not raised."""

    def __init__(self, send: Callable[[], Awaitable[object]], interval: float) -> None:
        super().__init__(interval)
        self._send = send
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        # wait() rather than await: the task's own cancellation is expected, the caller's is not.
        await asyncio.wait([self._task])

    async def __aenter__(self) -> AsyncHeartbeats:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            try:
                await self._send()
            except Exception as exc:
                self._failed(exc)
            else:
                self._succeeded()
            next_beat = max(next_beat + self.interval, loop.time())
            await asyncio.sleep(next_beat - loop.time())


class AsyncSession:
    """The held `POST /v1/session` on asyncio streams; `await close()` ends the life."""

    def __init__(self, socket_path: str, timeout: float, pid: int | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.pid = pid
        self.life: int | None = None
        self.lease: str | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def closed(self) -> bool:
        return self._writer is None

    async def connect(self) -> int:
        """Open the session and return its life number; replaces a connection already held."""
        opening = open_unix(self.socket_path)
        reader, writer = await within(self.socket_path, self.timeout, opening)
        try:
            life, lease = await within(self.socket_path, self.timeout, self._open(reader, writer))
        except BaseException:
            await close_writer(writer)
            raise
        await self.close()
        self._writer, self.life, self.lease = writer, life, lease
        return life

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, str | None]:
        request = encode_request("POST", "/v1/session", pid_body(self.pid), keep_alive=True)
        await send_async_request(writer, request)
        status, headers = await async_read_head(reader)
        if status != 200:
            answered = (status, headers, await async_read_body(reader, headers))
            raise refusal(answered, "POST /v1/session", self.socket_path)
        if not is_chunked(headers):
            raise SidecarProtocolError("the session's answer is not chunked")
        first = await async_read_chunk(reader, MAX_SESSION_LINE)
        return parse_session_line(first, self.socket_path)

    async def close(self) -> None:
        """End the session: the sidecar ends this worker's life."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await close_writer(writer)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
