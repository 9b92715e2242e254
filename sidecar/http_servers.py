"""The two uvicorn servers, the probe port and the worker's socket, as adapters.

Both run in one event loop under one supervisor (`serve`), so uvicorn's own signal handling
is turned off; each binds its socket at `start`, before any state is restored, serves from
`run`, and stops at `close`. The worker's socket stops before the probe port, which is last: the
kubelet is answered for as long as the sidecar lives (docs/protocol.md section 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from sidecar.component import Adapter, AdapterStopped, StartupError
from sidecar.http_limits import BoundedHttpToolsProtocol
from sidecar.unix_socket import SocketFileError, remove_stale_socket

logger = logging.getLogger("dynamo_health_sidecar")

SOCKET_MODE = 0o660
# Time for a held session to see the end of its response before connections are cut.
GRACEFUL_SECONDS = 1
# How often each server wakes while idle, to refresh the Date header.
TICK_SECONDS = 1.0


class Server(uvicorn.Server):
    """A uvicorn server that leaves the signals to the supervisor, and wakes once a second
    instead of ten times: each wake-up is CPU an idle sidecar spends beside the GPU work.
    `stop()` ends it at once rather than at its next tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopped = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        self.should_exit = True
        self._stopped.set()

    async def main_loop(self) -> None:
        # uvicorn refreshes the Date header on every tenth tick: counting by ten refreshes
        # it on each one, so the header still changes every second.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), TICK_SECONDS)

    async def listen(self, sock: socket.socket) -> None:
        """Serve one more listening socket, as `startup` serves those it was given; it is
        closed with the others at shutdown."""
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        self.servers.append(await loop.create_server(create_protocol, sock=sock))


def uvicorn_config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        loop="none",
        http=BoundedHttpToolsProtocol,
        lifespan="off",
        # No websockets: uvicorn would import a websockets library it finds, for nothing.
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )


def bind_probe_socket(host: str, port: int) -> socket.socket:
    """Listen on every interface by default: IPv6 with IPv4 mapped, or IPv4 alone."""
    candidates = (
        [(host, socket.AF_INET6 if ":" in host else socket.AF_INET)]
        if host
        else [
            ("::", socket.AF_INET6),
            ("0.0.0.0", socket.AF_INET),
        ]
    )
    last_error: OSError | None = None
    for address, family in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # "::" means every interface, IPv4 included, as on most Linux hosts.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(address != "::"))
            sock.bind((address, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            last_error = exc
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) or host:
                break
            continue
        sock.setblocking(False)
        return sock
    shown = host or "every interface"
    raise StartupError(f"cannot listen on {shown} port {port}: {last_error}")


def bind_control_socket(path: Path) -> socket.socket:
    """Create the worker's socket with mode 0660, replacing a stale one from a previous run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the socket's directory {path.parent}: {exc}") from None
    try:
        remove_stale_socket(path, socket.SOCK_STREAM)
    except SocketFileError as exc:
        raise StartupError(str(exc)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the file 0660 from its first moment, and listen() follows bind() at
    # once: a worker that connects as soon as the file appears is queued, not refused.
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(path))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot create the worker's socket {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    sock.setblocking(False)
    return sock


class _ServedSocket(Adapter):
    """One uvicorn server on one listening socket, bound at `start` and served from `run`."""

    what = "HTTP"

    def __init__(self, app: Any) -> None:
        self.server = Server(uvicorn_config(app))
        self.sock: socket.socket | None = None
        self._serving: asyncio.Future[None] | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        assert self.sock is not None
        self._serving = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        await self._serving
        if not self.server.should_exit:
            raise AdapterStopped(f"the {self.what} server stopped unexpectedly")

    async def close(self) -> None:
        self.server.stop()
        if self._serving is not None:
            await asyncio.gather(self._serving, return_exceptions=True)
        elif self.sock is not None:  # bound, never served: a later adapter failed to start
            self.sock.close()


class ProbeServer(_ServedSocket):
    """The probe port: what the kubelet, Prometheus and people ask."""

    what = "probe port's"

    def __init__(self, app: Any, host: str, port: int) -> None:
        super().__init__(app)
        self.host, self.port = host, port

    def start(self) -> None:
        self.sock = bind_probe_socket(self.host, self.port)

    def address(self) -> str:
        """Where it listens, as the start line says it: `[::]:9090`, `127.0.0.1:9090`."""
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class WorkerSocketServer(_ServedSocket):
    """The worker's socket: created at start, created again if someone deletes it while the
    sidecar runs (a worker could not connect any more, while the probes went on with a frozen
    state), and removed at the end only if it is still ours."""

    what = "worker socket's"
    CHECK_SECONDS = 0.5

    def __init__(self, app: Any, path: Path) -> None:
        super().__init__(app)
        self.path = path
        self._inode: int | None = None

    def start(self) -> None:
        self.sock = self._bind()

    def _bind(self) -> socket.socket:
        sock = bind_control_socket(self.path)
        self._inode = os.stat(self.path).st_ino
        return sock

    async def run(self, stopping: asyncio.Event) -> None:
        keeping = asyncio.ensure_future(self._keep(stopping))
        try:
            await super().run(stopping)
        finally:
            keeping.cancel()

    async def _keep(self, stopping: asyncio.Event) -> None:
        """Until `stopping`: when the file is gone, bind it again and serve it too."""
        failing = False
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.CHECK_SECONDS)
            if stopping.is_set() or self.path.exists():
                continue
            try:
                sock = self._bind()
            except StartupError as exc:
                if not failing:  # once, not every half second
                    logger.warning("the worker's socket %s is gone: %s", self.path, exc)
                failing = True
                continue
            failing = False
            await self.server.listen(sock)
            logger.warning(
                "the worker's socket %s was deleted while the sidecar ran; created it again",
                self.path,
            )

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
