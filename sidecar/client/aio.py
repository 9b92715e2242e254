"""The asyncio transport: the same calls as the blocking one, on asyncio's Unix streams.

It only connects, writes the bytes that `calls` built and feeds what it reads to a reading of
`answers`, so its answers mean exactly what the blocking transport's do. Unlike that one, it
bounds each call as a whole (connect to last byte) by `timeout`, as `asyncio.wait_for` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from . import calls
from .answers import Answer, JSONObject, Reading, Received, read_answer, read_session_opening
from .calls import DEFAULT_TIMEOUT, Call, EndpointStatus, resolve_socket
from .errors import stream_failures
from .heartbeats import AsyncHeartbeats
from .retry import ONCE, Retry

T = TypeVar("T")
# More than any whole answer of the sidecar, so that one read usually holds it.
READ_SIZE = 65536

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def within(socket_path: str, timeout: float, operation: Awaitable[T]) -> T:
    """Await `operation` for at most `timeout` seconds, with stream failures as client errors."""
    with stream_failures(socket_path, timeout):
        return await asyncio.wait_for(operation, timeout)


async def open_unix(socket_path: str) -> Streams:
    return await asyncio.open_unix_connection(socket_path)


async def send(writer: asyncio.StreamWriter, request: bytes) -> None:
    """Write a request; a hang-up while writing leaves an early answer to read (as in the
    blocking transport's `send`)."""
    writer.write(request)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        await writer.drain()


async def receive(reader: asyncio.StreamReader, reading: Reading[T]) -> T:
    """Feed `reading` what `reader` reads until it has read what it reads."""
    try:
        next(reading)
        while True:
            reading.send(await reader.read(READ_SIZE))
    except StopIteration as done:
        value: T = done.value
        return value


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # the other side went first
        await writer.wait_closed()


async def send_once(socket_path: str, timeout: float, request: bytes) -> Answer:
    """One request on a new connection, all of it (connect to last byte) within `timeout`."""

    async def exchange() -> Answer:
        reader, writer = await open_unix(socket_path)
        try:
            await send(writer, request)
            return await receive(reader, read_answer(Received()))
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
        retry: Retry = ONCE,
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
        return await self._call(calls.set_endpoint(name, status))

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
        fields = (namespace, component, endpoint, instance_id, transport, model, lease)
        return await self._call(calls.register_instance(*fields))

    async def grant_lease(self, ttl_seconds: float | None = None) -> JSONObject:
        """`POST /v1/leases` (see the sync client)."""
        return await self._call(calls.grant_lease(ttl_seconds))

    async def renew_lease(self, lease: str) -> JSONObject:
        """`PUT /v1/leases/{lease}`."""
        return await self._call(calls.renew_lease(lease))

    async def revoke_lease(self, lease: str) -> JSONObject:
        """`DELETE /v1/leases/{lease}`, a 404 to a retry answered as none removed."""
        return await self._call(calls.revoke_lease(lease))

    async def remove_instances(self, instance_id: int) -> JSONObject:
        """`DELETE /v1/instances/{id}`; 404 when there is none, and a 404 to a retry answered
        as none removed (see `SidecarClient.remove_instances`)."""
        return await self._call(calls.remove_instances(instance_id))

    async def heartbeat(self, pid: int | None = None) -> JSONObject:
        """`POST /v1/heartbeat`: the worker is alive."""
        return await self._call(calls.heartbeat(pid))

    async def status(self) -> JSONObject:
        """`GET /v1/status`: what the health path shows."""
        return await self._call(calls.status())

    async def worker(self) -> JSONObject:
        """`GET /v1/worker`: the worker's life as the sidecar sees it (docs/protocol.md, 4.5)."""
        return await self._call(calls.worker())

    def start_heartbeats(self, interval: float, pid: int | None = None) -> AsyncHeartbeats:
        """Send a heartbeat every `interval` seconds from a task of the running loop.

        The task runs only while the loop does: a worker whose loop is blocked stops beating,
        which is the hang the heartbeat timeout exists to catch. (The thread of
        `SidecarClient.start_heartbeats` works from async code too, but keeps beating
        through a blocked loop.)
        """
        once = AsyncSidecarClient(self.socket_path, self.timeout, ONCE)
        return AsyncHeartbeats(lambda: once.heartbeat(pid), interval)

    async def open_session(self, pid: int | None = None) -> AsyncSession:
        """Hold `POST /v1/session` open; see `SidecarClient.open_session`.

        Opening is retried as the sync client's is. No reconnect here: for that, use the
        sync client's session, whose thread needs no loop.
        """
        session = AsyncSession(self.socket_path, self.timeout, pid)
        await self.retry.acall(session.connect)
        return session

    async def _call(self, call: Call) -> JSONObject:
        """`SidecarClient._call` as a coroutine."""
        attempts = itertools.count(1)

        async def attempt() -> JSONObject:
            number = next(attempts)
            answer = await send_once(self.socket_path, self.timeout, call.encode())
            return call.decode(answer, self.socket_path, number)

        return await self.retry.acall(attempt)


class AsyncSession:
    """The held `POST /v1/session` on asyncio streams; `await close()` ends the life
    (docs/protocol.md, section 4.4)."""

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
        reader, writer = await within(self.socket_path, self.timeout, open_unix(self.socket_path))
        try:
            opening = self._open(reader, writer)
            life, lease = await within(self.socket_path, self.timeout, opening)
        except BaseException:
            await close_writer(writer)
            raise
        await self.close()
        self._writer, self.life, self.lease = writer, life, lease
        return life

    async def _open(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, str | None]:
        """A new session each time, with a new lease: this one is never reopened."""
        await send(writer, calls.session_request(self.pid, None))
        return await receive(reader, read_session_opening(Received(), self.socket_path))

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
