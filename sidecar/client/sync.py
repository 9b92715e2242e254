"""The blocking transport: plain sockets, and daemon threads for heartbeats and for a
session's reconnects.

It only connects, writes the bytes that `calls` built and feeds what it receives to a reading
of `answers`: what the bytes mean is decided there, the same for the asyncio transport.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import logging
import os
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

from . import calls
from .answers import (
    Answer,
    JSONObject,
    Reading,
    Received,
    read_answer,
    read_session_opening,
    read_to_end,
)
from .calls import DEFAULT_TIMEOUT, Call, EndpointStatus, resolve_socket
from .errors import SidecarError, SidecarRejected, stream_failures
from .heartbeats import Heartbeats
from .retry import ONCE, Retry

T = TypeVar("T")
# More than any whole answer of the sidecar, so that one receive usually holds it.
READ_SIZE = 65536
# A reopened session should follow a restarted sidecar quickly: the worker is unwatched until then.
RECONNECT = Retry(backoff=0.05, max_backoff=0.5)

# Named explicitly: workers and tests filter the client's logs by this one name.
logger = logging.getLogger("sidecar.client")


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

    The clients here do not use it: `answers` says why.
    """

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__("sidecar", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = connect_unix(self.socket_path, self.timeout)


def send(sock: socket.socket, request: bytes) -> None:
    """Send a request; a hang-up while sending leaves an early answer to read.

    The sidecar may refuse a request from its path alone (a bad endpoint name, say), answer,
    and hang up before the body arrives; sending the body then fails, but the answer is
    already here to be read, as curl and httpx read it.
    """
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(request)


def receive(sock: socket.socket, reading: Reading[T]) -> T:
    """Feed `reading` what `sock` receives until it has read what it reads."""
    try:
        next(reading)
        while True:
            reading.send(sock.recv(READ_SIZE))
    except StopIteration as done:
        value: T = done.value
        return value


def send_once(socket_path: str, timeout: float, request: bytes) -> Answer:
    """One request on a new connection: the status code, the headers and the whole body.

    `timeout` bounds each socket operation (connect, send, each receive).
    """
    with stream_failures(socket_path, timeout), connect_unix(socket_path, timeout) as sock:
        send(sock, request)
        return receive(sock, read_answer(Received()))


class SidecarClient:
    """Tell the sidecar what this worker serves; one short connection per call.

    A new connection per call needs no reconnect logic: a sidecar that restarted between two
    calls is simply there again. Every method returns the sidecar's decoded JSON answer
    (docs/protocol.md, section 4.2).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry = ONCE,
    ) -> None:
        self.socket_path = resolve_socket(socket_path)
        self.timeout = timeout
        self.retry = retry

    def __repr__(self) -> str:
        return f"SidecarClient({self.socket_path!r}, timeout={self.timeout!r}, retry={self.retry})"

    def set_endpoint(self, name: str, status: EndpointStatus) -> JSONObject:
        """`PUT /v1/endpoints/{name}`: the worker serves (`ready`) or stops serving it."""
        return self._call(calls.set_endpoint(name, status))

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
        the moment the session closes or the lease expires (docs/protocol.md, section 4.7).
        """
        fields = (namespace, component, endpoint, instance_id, transport, model, lease)
        return self._call(calls.register_instance(*fields))

    def grant_lease(self, ttl_seconds: float | None = None) -> JSONObject:
        """`POST /v1/leases`: an owner for instances that leave `ttl_seconds` (default 10)
        after its last renewal. A retried grant may leave an unused lease, which expires."""
        return self._call(calls.grant_lease(ttl_seconds))

    def renew_lease(self, lease: str) -> JSONObject:
        """`PUT /v1/leases/{lease}`: its instances stay a full TTL from now."""
        return self._call(calls.renew_lease(lease))

    def revoke_lease(self, lease: str) -> JSONObject:
        """`DELETE /v1/leases/{lease}`: its instances leave now. A 404 to a retry is answered
        as none removed, as `remove_instances` does."""
        return self._call(calls.revoke_lease(lease))

    def start_renewals(self, lease: str, interval: float) -> Heartbeats:
        """Renew `lease` every `interval` seconds from a daemon thread until `.stop()`."""
        once = SidecarClient(self.socket_path, self.timeout, ONCE)
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
        return self._call(calls.remove_instances(instance_id))

    def heartbeat(self, pid: int | None = None) -> JSONObject:
        """`POST /v1/heartbeat`: the worker is alive (and, with a pid, which process it is)."""
        return self._call(calls.heartbeat(pid))

    def status(self) -> JSONObject:
        """`GET /v1/status`: what the health path shows, always with 200."""
        return self._call(calls.status())

    def worker(self) -> JSONObject:
        """`GET /v1/worker`: the worker's life as the sidecar sees it (docs/protocol.md, 4.5)."""
        return self._call(calls.worker())

    def start_heartbeats(self, interval: float, pid: int | None = None) -> Heartbeats:
        """Send a heartbeat every `interval` seconds from a daemon thread until `.stop()`.

        Each heartbeat is one attempt: the next one is the retry, so a slow sidecar never
        delays the beat after it.
        """
        once = SidecarClient(self.socket_path, self.timeout, ONCE)
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

    def _call(self, call: Call) -> JSONObject:
        """One call under `self.retry`, each attempt on its own connection."""
        attempts = itertools.count(1)

        def attempt() -> JSONObject:
            number = next(attempts)
            answer = send_once(self.socket_path, self.timeout, call.encode())
            return call.decode(answer, self.socket_path, number)

        return self.retry.call(attempt)


class Session:
    """The held `POST /v1/session`: its socket closing is this worker's death notice.

    The kernel closes the socket when the process ends, even on SIGKILL, so the sidecar
    learns of the death at once without sharing the process namespace (docs/protocol.md,
    section 4.4). Only the first line of the answer is read; the rest of it never comes while
    the sidecar runs.

    `lease` owns the instances registered with it (`register_instance(..., lease=...)`):
    they leave when the session closes. A session opened again after a sidecar restart
    holds the same lease, its instances restored; if that lease has expired meanwhile, the
    session gets a new one (and `lease` changes), its old instances gone (section 4.7).
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
        self._held: tuple[socket.socket, Received] | None = None
        self._follower: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    def connect(self) -> int:
        """Open the session and return its life number; replaces a connection already held."""
        with stream_failures(self.socket_path, self.timeout):
            sock = connect_unix(self.socket_path, self.timeout)
            received = Received()
            try:
                life, lease = self._open(sock, received)
            except SidecarRejected as exc:
                sock.close()
                if exc.status != 404 or self.lease is None:
                    raise
                logger.debug("the session's lease %s is gone; opening a new one", self.lease)
                self.lease = None
                return self.connect()
            except BaseException:
                sock.close()
                raise
        # Held from now on: no timeout, a read only ends when the sidecar or the kernel does.
        sock.settimeout(None)
        self._hold(sock, received, life, lease)
        return life

    def _open(self, sock: socket.socket, received: Received) -> tuple[int, str | None]:
        """Send the opening, holding again the lease of the session before a restart."""
        send(sock, calls.session_request(self.pid, self.lease))
        return receive(sock, read_session_opening(received, self.socket_path))

    def _hold(self, sock: socket.socket, received: Received, life: int, lease: str | None) -> None:
        with self._lock:
            if self._closing.is_set():
                _hang_up(sock)
                raise SidecarError("the session was closed while it was being opened")
            self._drop_locked()
            self._held, self.life, self.lease = (sock, received), life, lease

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
        if self._held is not None:
            _hang_up(self._held[0])
        self._held = None

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
        held = self._held
        if held is None:
            return
        with contextlib.suppress(Exception):  # a hang-up, or close() racing this read
            receive(held[0], read_to_end(held[1]))

    def _reopen(self) -> bool:
        """Try until the sidecar is back (or the session is closed); True when reopened."""
        retries = itertools.count(1)
        while not self._closing.is_set():
            try:
                self.connect()
                return True
            except Exception as exc:  # keep trying whatever went wrong: this thread is the watch
                self.last_error = exc
                logger.debug("reopening the session failed: %s", exc)
                self._closing.wait(RECONNECT.delay(next(retries)))
        return False


def _hang_up(sock: socket.socket) -> None:
    """Shut down, then close: shutdown() wakes the follower blocked reading, and the sidecar
    sees the end at once."""
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
