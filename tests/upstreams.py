"""Real HTTP servers on 127.0.0.1 that stand in for a worker's upstreams.

- `StatusServer`: a Dynamo system status server. Its bodies are the seed's examples byte for
  byte (compact JSON, keys sorted, `content-type: text/plain; charset=utf-8` as Dynamo sends
  them): 503 with the notready map, 200 with the ready one. It can also be down (nothing
  listens on its port), slow (reads the request and never answers) or answer garbage.
- `FrontendServer`: a Dynamo 1.6.1 frontend's `/health`, as observed on the wire
  (tests/dynamo_frontend_observed.md): `200 {"status":"healthy","endpoints":[...],
  "instances":[...]}` with its key orders, its sort of the instances and `content-type:
  application/json`; with no instance exactly `FRONTEND_EMPTY`, with the two instances of
  the record exactly `FRONTEND_TWO`. Instances come and go while it runs; it can also drain
  (1.6.1's 503 `not_ready`), be slow, down, or answer any code and body.
- `ModelServer`: a model server (vLLM, SGLang, TGI) for canaries. It answers, streams a
  complete SSE answer, slows past any timeout, freezes mid-stream (headers and the first chunk
  of a chunked body, then nothing: ai-dynamo/dynamo issue 13429), answers an error code,
  closes the connection before answering or mid-stream, sends an oversized body, or is down.

Each server runs its own asyncio loop in a daemon thread and speaks HTTP/1.1 by hand on real
sockets, one request per connection (`connection: close`), so every byte and every stall is
exactly what the test asked for. The mode can change at any time; each request is recorded
(arrival time on `time.monotonic`, method, path, headers, body) before it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

# The seed's examples (dynamo-health-checks.txt), as Dynamo puts them on the wire.
SEED_NOTREADY = (
    b'{"endpoints":{"generate":"notready"},"status":"notready",'
    b'"uptime":{"nanos":313803539,"secs":12}}'
)
SEED_READY = (
    b'{"endpoints":{"clear_kv_blocks":"ready","generate":"ready","load_metrics":"ready"},'
    b'"status":"ready","uptime":{"nanos":356504530,"secs":18}}'
)
DYNAMO_CONTENT_TYPE = "text/plain; charset=utf-8"

# What the real Dynamo 1.6.1 frontend's `/health` answered (tests/dynamo_frontend_observed.md,
# sections a, b and f), byte for byte.
FRONTEND_EMPTY = b'{"status":"healthy","endpoints":[],"instances":[]}'
FRONTEND_TWO = (
    b'{"status":"healthy","endpoints":["dyn://ns1.backend.clear_kv_blocks",'
    b'"dyn://ns1.backend.generate"],"instances":[{"component":"backend",'
    b'"endpoint":"clear_kv_blocks","namespace":"ns1","instance_id":10326397869217126491,'
    b'"transport":{"tcp":"127.0.0.1:38155/8f4ebc268409985b/ns1/backend/clear_kv_blocks"},'
    b'"device_type":"cuda","request_plane_codec":"msgpack"},{"component":"backend",'
    b'"endpoint":"generate","namespace":"ns1","instance_id":10326397869217126491,'
    b'"transport":{"tcp":"127.0.0.1:38155/8f4ebc268409985b/ns1/backend/generate"},'
    b'"device_type":"cuda","request_plane_codec":"msgpack"}]}'
)
FRONTEND_TWO_ID = 10326397869217126491
FRONTEND_DRAINING = b'{"status":"not_ready","stage":"draining","message":"Service is not ready"}'
FRONTEND_STOPPING = b'{"status":"not_ready","stage":"stopping","message":"Service is not ready"}'
# The seed's older frontend, with no instance (docs/protocol.md section 3.6).
SEED_FRONTEND_EMPTY = b'{"instances":[],"message":"No endpoints available","status":"unhealthy"}'
FRONTEND_CONTENT_TYPE = "application/json"
REASONS = {
    200: "OK",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# How long a server that "never answers" holds a connection: longer than any test.
FOREVER = 3600.0


@dataclass(frozen=True)
class Request:
    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def response_head(code: int, headers: list[tuple[str, str]], length: int | None = None) -> bytes:
    lines = [f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if length is None:
        lines.append("transfer-encoding: chunked")
    else:
        lines.append(f"content-length: {length}")
    lines += ["connection: close", "", ""]
    return "\r\n".join(lines).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class HttpServer:
    """An HTTP/1.1 server on its own loop in a thread; subclasses write `respond`."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self.connections = 0
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        self._first_socket: socket.socket | None = probe

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> HttpServer:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def go_down(self) -> None:
        """Stop listening: connections are refused until `come_up`."""
        self._call(self._unlisten())

    def come_up(self) -> None:
        self._call(self._listen())

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- what arrived ----------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._requests)

    def arrivals(self) -> list[float]:
        return [request.at for request in self.requests]

    # -- internals -------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=5)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock, self._first_socket = self._first_socket, None
        if sock is None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _shutdown(self) -> None:
        await self._unlisten()
        if self._first_socket is not None:
            self._first_socket.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            request = await self._read(reader)
            if request is None:
                return
            with self._lock:
                self._requests.append(request)
            await self.respond(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping: end quietly (3.11 logs a cancelled handler)
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        at = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return Request(at, method, path, headers, body)

    async def respond(self, request: Request, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class StatusServer(HttpServer):
    """A Dynamo system status server: `notready` (503), `ready` (200), `slow`, `garbage`,
    `custom` (the code and body of `answer`), or down (`set("down")`)."""

    MODES = ("notready", "ready", "slow", "garbage", "custom", "down")

    def __init__(self, mode: str = "notready") -> None:
        super().__init__()
        self.mode = mode
        self.custom: tuple[int, bytes] = (200, b"")

    def set(self, mode: str) -> None:
        assert mode in self.MODES, mode
        if mode == "down":
            self.go_down()
        elif not self.listening and self._thread.is_alive():
            self.come_up()
        self.mode = mode

    def answer(self, code: int, body: bytes) -> None:
        """Answer every request with this code and body (Dynamo's content type)."""
        self.custom = (code, body)
        self.set("custom")

    def start(self) -> StatusServer:
        super().start()
        if self.mode == "down":
            self.go_down()
        return self

    async def respond(self, request: Request, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(FOREVER)
            return
        if mode == "notready":
            code, body = 503, SEED_NOTREADY
        elif mode == "ready":
            code, body = 200, SEED_READY
        elif mode == "garbage":
            code, body = 200, b"<html>it works</html>"
        else:
            code, body = self.custom
        headers = [
            ("content-type", DYNAMO_CONTENT_TYPE),
            ("date", "Wed, 03 Sep 2025 13:42:39 GMT"),
        ]
        writer.write(response_head(code, headers, len(body)) + body)


def frontend_instance(
    namespace: str, component: str, endpoint: str, instance_id: int, port: int = 38155
) -> dict[str, object]:
    """One entry of a 1.6.1 frontend's `instances`, its keys in Dynamo's order."""
    path = f"{port}/{instance_id:x}/{namespace}/{component}/{endpoint}"
    return {
        "component": component,
        "endpoint": endpoint,
        "namespace": namespace,
        "instance_id": instance_id,
        "transport": {"tcp": f"127.0.0.1:{path}"},
        "device_type": "cuda",
        "request_plane_codec": "msgpack",
    }


def frontend_worker(
    namespace: str, component: str, instance_id: int, endpoints: tuple[str, ...]
) -> list[dict[str, object]]:
    """The entries of one worker: one per endpoint it serves, under one id."""
    return [frontend_instance(namespace, component, name, instance_id) for name in endpoints]


def _sort_name(instance: dict[str, Any]) -> str:
    # Dynamo's `impl Ord for Instance`: the string "ns/component/endpoint/<decimal id>".
    parts = ("namespace", "component", "endpoint", "instance_id")
    return "/".join(str(instance[part]) for part in parts)


def frontend_body(instances: list[dict[str, Any]]) -> bytes:
    """A 1.6.1 frontend's `/health` body listing these entries, as it puts it on the wire."""
    ordered = sorted(instances, key=lambda i: _sort_name(i).encode())
    urls = sorted({f"dyn://{i['namespace']}.{i['component']}.{i['endpoint']}" for i in ordered})
    body = {"status": "healthy", "endpoints": urls, "instances": ordered}
    return json.dumps(body, separators=(",", ":")).encode()


class FrontendServer(HttpServer):
    """A Dynamo 1.6.1 frontend's health path: `serving` (200 with the instances it holds),
    `draining` (1.6.1's 503 `not_ready`), `slow`, `custom` (the code and body of `answer`),
    or down (`set("down")`)."""

    MODES = ("serving", "draining", "slow", "custom", "down")

    def __init__(self, mode: str = "serving") -> None:
        super().__init__()
        self.mode = mode
        self.custom: tuple[int, bytes] = (200, b"")
        self._instances: list[dict[str, Any]] = []

    def set(self, mode: str) -> None:
        assert mode in self.MODES, mode
        if mode == "down":
            self.go_down()
        elif not self.listening and self._thread.is_alive():
            self.come_up()
        self.mode = mode

    def answer(self, code: int, body: bytes) -> None:
        """Answer every request with this code and body (the frontend's content type)."""
        self.custom = (code, body)
        self.set("custom")

    def add(self, instances: list[dict[str, Any]]) -> None:
        """A worker registers: these entries are listed from the next request on."""
        with self._lock:
            self._instances += instances

    def remove(self, instance_id: int) -> None:
        """A worker leaves: every entry with its id goes."""
        with self._lock:
            self._instances = [i for i in self._instances if i["instance_id"] != instance_id]

    def body(self) -> bytes:
        with self._lock:
            return frontend_body(list(self._instances))

    def start(self) -> FrontendServer:
        super().start()
        if self.mode == "down":
            self.go_down()
        return self

    async def respond(self, request: Request, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(FOREVER)
            return
        if mode == "serving":
            code, body = 200, self.body()
        elif mode == "draining":
            code, body = 503, FRONTEND_DRAINING
        else:
            code, body = self.custom
        writer.write(frontend_head(code, len(body)) + body)


def frontend_head(code: int, length: int) -> bytes:
    """The head 1.6.1's frontend sends to a probe that asked for `connection: close`, in its
    order (the date fixed)."""
    lines = [
        f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}",
        f"content-type: {FRONTEND_CONTENT_TYPE}",
        f"content-length: {length}",
        "connection: close",
        "date: Fri, 04 Dec 2026 02:40:18 GMT",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


# What a model server streams: an OpenAI-style SSE completion of three events.
SSE_EVENTS = (
    b'data: {"choices":[{"text":"Hello"}]}\n\n',
    b'data: {"choices":[{"text":" world"}]}\n\n',
    b"data: [DONE]\n\n",
)
OK_BODY = b'{"status":"ok"}'


class ModelServer(HttpServer):
    """A model server, in one of these modes:

    - `ok`: 200 with a small JSON body;
    - `stream`: 200 with a complete chunked SSE stream, `delay` seconds between events;
    - `slow`: `delay` seconds before answering as `ok`;
    - `freeze`: the headers and the first SSE event of a chunked stream, then nothing;
    - `error`: `status` (default 503) with a small body;
    - `close`: reads the request and closes the connection without answering;
    - `close_mid`: the headers and the first event, then closes the connection;
    - `big`: 200 with a body of `size` bytes;
    - `down`: nothing listens (`set("down")`).
    """

    MODES = ("ok", "stream", "slow", "freeze", "error", "close", "close_mid", "big", "down")

    def __init__(self, mode: str = "ok") -> None:
        super().__init__()
        self.mode = mode
        self.delay = 0.0
        self.status = 503
        self.size = 0
        # Set by the server's loop once the frozen stream's first event is on the wire.
        self.frozen = threading.Event()

    def set(self, mode: str, *, delay: float = 0.0, status: int = 503, size: int = 0) -> None:
        assert mode in self.MODES, mode
        self.delay, self.status, self.size = delay, status, size
        if mode == "down":
            self.go_down()
        elif not self.listening and self._thread.is_alive():
            self.come_up()
        self.mode = mode

    async def respond(self, request: Request, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        json_type = [("content-type", "application/json")]
        sse_type = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        if mode == "slow":
            await asyncio.sleep(self.delay)
            mode = "ok"
        if mode == "ok":
            writer.write(response_head(200, json_type, len(OK_BODY)) + OK_BODY)
        elif mode == "stream":
            writer.write(response_head(200, sse_type))
            for event in SSE_EVENTS:
                writer.write(chunk(event))
                await writer.drain()
                await asyncio.sleep(self.delay)
            writer.write(b"0\r\n\r\n")
        elif mode in ("freeze", "close_mid"):
            writer.write(response_head(200, sse_type) + chunk(SSE_EVENTS[0]))
            await writer.drain()
            if mode == "freeze":
                self.frozen.set()
                await asyncio.sleep(FOREVER)
        elif mode == "error":
            body = b'{"error":"engine unavailable"}'
            writer.write(response_head(self.status, json_type, len(body)) + body)
        elif mode == "close":
            return
        elif mode == "big":
            writer.write(response_head(200, json_type, self.size))
            sent = 0
            block = b"x" * 65536
            while sent < self.size:
                part = block[: self.size - sent]
                writer.write(part)
                await writer.drain()
                sent += len(part)


@contextlib.contextmanager
def status_server(mode: str = "notready") -> Iterator[StatusServer]:
    server = StatusServer(mode).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def frontend_server(mode: str = "serving") -> Iterator[FrontendServer]:
    server = FrontendServer(mode).start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def model_server(mode: str = "ok") -> Iterator[ModelServer]:
    server = ModelServer(mode)
    server.start()
    try:
        yield server
    finally:
        server.stop()
