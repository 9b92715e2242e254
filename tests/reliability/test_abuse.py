"""Slow and abusive clients on both sockets, while the kubelet keeps probing.

Tried together, on the probe port and on the worker's socket: idle connections that never
send a byte, clients that send one byte of a header per second, requests with a 1 MiB
header, bodies that never finish, and a Content-Length larger than the body followed by a
hang-up. Held: every probe answered within 10 ms at the 99th percentile, file descriptors
and memory bounded by what the clients hold, no crash, and everything back to normal once
the clients are gone. And clients that pipeline requests without reading the answers, or
read them slowly, with the others: every probe answered within 100 ms and the sidecar's RSS
under 64 MiB, half the chart's memory limit.

What the sidecar does with such clients (sidecar/http_limits.py, since this suite found
that uvicorn's httptools protocol alone never closed a connection that had not sent a whole
request, held about twice an endless header in memory, and parsed a whole pipelined stream
into answers nobody read; see README.md):
- a connection waiting on its client, for the rest of a request (head or body) or to read
  its answers, is closed after 3 s: idle, half-sent, kept-alive after an answer, or not
  reading;
- reading pauses while a request waits behind the one being answered or answers are unread;
- past 64 connections on one socket, the one that has waited longest on its client is
  closed;
- a head over 2 MiB is answered 431 with a JSON error and closed; 1 MiB is answered as any
  request is;
- uvicorn's warning for each malformed request is logged once, then counted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import psutil
import pytest
from conftest import Sidecar

from sidecar.http_limits import CLIENT_TIMEOUT_SECONDS, MAX_CONNECTIONS

from .conftest import Record, Scale
from .helpers import (
    Load,
    control,
    fd_count,
    loads,
    log_lines,
    probe,
    raw_exchange,
    rss_mib,
    wait_for,
)

pytestmark = pytest.mark.reliability

PROBE_P99_MS = 10.0
# Back to the baseline once the abusive clients are gone, within this many seconds.
RECOVERY_SECONDS = 5.0
ONE_MIB = 2**20
# The longest a connection that has sent no whole request should stay open: the deadline
# on its client, and slack for a loaded machine.
IDLE_CLOSE_SECONDS = CLIENT_TIMEOUT_SECONDS + 3.0
# While clients pipeline without reading, read slowly, send slowly and hold connections.
UNREAD_PROBE_MAX_MS = 100.0
UNREAD_RSS_MAX_MIB = 64.0  # half the chart's memory limit

WORKER_ENV = {
    "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
    "DYN_SIDECAR_DRAIN_SECONDS": "0",
}


def connect(address: str | tuple[str, int]) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(address)
    return sock


@contextmanager
def held(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


class SlowLoris(threading.Thread):
    """Clients that each send one byte of a never-ending header per second."""

    HEADER = b"GET /health HTTP/1.1\r\nHost: sidecar\r\nX-Slow: " + b"s" * 4096

    def __init__(self, addresses: list[str | tuple[str, int]], seconds: float) -> None:
        super().__init__(daemon=True)
        self.sockets = [connect(address) for address in addresses]
        self.seconds = seconds
        self.stop = threading.Event()
        self.sent = 0
        self.closed: set[socket.socket] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        offset = 0
        while not self.stop.is_set() and time.monotonic() < end and offset < len(self.HEADER):
            for sock in self.sockets:
                if sock in self.closed:
                    continue
                try:
                    sock.sendall(self.HEADER[offset : offset + 1])
                    self.sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    self.closed.add(sock)  # the sidecar hung up on it: allowed
                except OSError as exc:
                    self.failures.append(repr(exc))
            offset += 1
            self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        for sock in self.sockets:
            sock.close()


def request_with_header(method: str, path: str, size: int) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: sidecar\r\nX-Big: ".encode()
        + b"h" * size
        + b"\r\nConnection: close\r\n\r\n"
    )


def unfinished_body(method: str, path: str, declared: int, sent: bytes) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode() + sent


def test_abuse_slow_and_abusive_clients_on_both_sockets(
    run_sidecar: Callable[..., Sidecar], scale: Scale, figure: Record
) -> None:
    sc = run_sidecar(WORKER_ENV)
    pid = sc.process.pid
    tcp: tuple[str, int] = ("127.0.0.1", sc.port)
    unix = str(sc.socket_path)
    # Warm up both apps, so the baseline holds what a serving sidecar holds.
    for _ in range(20):
        probe(sc.port, "/health")
        control(sc.socket_path, "GET", "/v1/status")
    fds_before, rss_before = fd_count(pid), rss_mib(pid)
    seconds = scale.abuse_seconds
    idle = scale.idle_connections

    answers: dict[str, list[object]] = {}
    fds_max = rss_max = 0.0
    # Keep-alive connections that completed one request: closed 3 s after the answer, or
    # sooner when newer connections push them past the cap.
    keep_alive = [connect(tcp), connect(unix)]
    closed_after: dict[int, float | None] = {}
    for sock, path in zip(keep_alive, ("/health", "/v1/status"), strict=True):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")
    watchers = [
        threading.Thread(
            target=lambda n=n, s=sock: closed_after.__setitem__(n, closed_within(s, 9.0))
        )
        for n, sock in enumerate(keep_alive)
    ]
    for watcher in watchers:
        watcher.start()
    with loads(
        Load("probe", port=sc.port, rate=100, seconds=seconds + 1, paths=["/health", "/live"])
    ) as (prober,):
        time.sleep(0.5)  # the prober's baseline, before the abuse
        with held([]) as clients:
            # Idle connections on both sockets: never a byte.
            clients += [connect(tcp) for _ in range(idle)]
            clients += [connect(unix) for _ in range(idle)]
            # Bodies that never finish: held on the worker's socket, whose routes read
            # bodies; the probe port reads none and answers at once (405 for a POST).
            for _ in range(10):
                for method, path in (
                    ("PUT", "/v1/endpoints/generate"),
                    ("POST", "/v1/session"),
                    ("POST", "/v1/instances"),
                ):
                    sock = connect(unix)
                    sock.sendall(unfinished_body(method, path, 1000, b'{"status"'))
                    clients.append(sock)
                code, _, _ = raw_exchange(tcp, unfinished_body("POST", "/health", 1000, b"{"))
                answers.setdefault("unfinished body, probe port", []).append(code)
            loris = SlowLoris([tcp, tcp, unix, unix], seconds)
            loris.start()
            try:
                end = time.monotonic() + seconds
                rounds = 0
                while time.monotonic() < end:
                    rounds += 1
                    # A 1 MiB header on both sockets: what comes back, how fast.
                    for name, address, path in (
                        ("probe port", tcp, "/health"),
                        ("worker socket", unix, "/v1/status"),
                    ):
                        began = time.monotonic()
                        code, _, _ = raw_exchange(
                            address, request_with_header("GET", path, ONE_MIB)
                        )
                        answers.setdefault(f"1 MiB header, {name}", []).append(
                            (code, round((time.monotonic() - began) * 1000, 1))
                        )
                    # A Content-Length larger than the body, then a hang-up, on both sockets.
                    for address, path in ((unix, "/v1/endpoints/generate"), (tcp, "/health")):
                        with connect(address) as sock:
                            sock.sendall(unfinished_body("PUT", path, 100, b'{"status": "re'))
                    # The worker still gets through.
                    status = "ready" if rounds % 2 else "notready"
                    response = control(sc.socket_path, "POST", f"/v1/endpoints/generate/{status}")
                    answers.setdefault("signal during the abuse", []).append(response.status_code)
                    fds_max = max(fds_max, fd_count(pid))
                    rss_max = max(rss_max, rss_mib(pid))
                    time.sleep(1.0)
                held_connections = len(clients) + len(loris.sockets)
                closed_by_sidecar = sum(peer_closed(sock) for sock in clients + loris.sockets)
            finally:
                loris.close()
        probes = prober.result()

    for watcher in watchers:
        watcher.join(10)
    for sock in keep_alive:
        sock.close()
    wait_for(lambda: fd_count(pid) <= fds_before, RECOVERY_SECONDS)
    fds_after = fd_count(pid)
    rss_after = rss_mib(pid)
    assert sc.process.poll() is None, sc.logs()
    # Back to normal: probes, signals, and the state the last signal set.
    assert probe(sc.port, "/sidecar/live").status_code == 200
    final = control(sc.socket_path, "POST", "/v1/endpoints/generate/ready")
    assert final.status_code == 200
    assert probe(sc.port, "/health").status_code == 200

    latency = probes["latency_ms"]
    figure("idle connections held, per socket", idle)
    figure("connections held in all", held_connections)
    figure(
        "sidecar fds before/max/after",
        f"{fds_before}/{fds_max}/{fds_after}",
        f"max <= before + held + 16; after <= before + 2 within {RECOVERY_SECONDS:g}s",
    )
    figure(
        "sidecar RSS MiB before/max/after",
        f"{rss_before}/{rss_max}/{rss_after}",
        "max <= before + 64; after <= before + 16",
    )
    figure(
        "RSS per held connection, KiB", round((rss_max - rss_before) * 1024 / held_connections, 1)
    )
    figure("probes during the abuse", f"{probes['sent']}, errors {sum(probes['errors'].values())}")
    figure(
        "probe latency ms p50/p99/max",
        f"{latency['p50']}/{latency['p99']}/{latency['max']}",
        f"p99 < {PROBE_P99_MS:g}",
    )
    for what, values in answers.items():
        figure(what, summarize(values))
    figure("slow-loris bytes sent", loris.sent)
    figure(
        "held connections the sidecar closed (idle, slow, unfinished)",
        f"{closed_by_sidecar} of {held_connections}",
    )
    figure(
        "keep-alive connection closed after its answer, s (probe port, worker socket)",
        [None if c is None else round(c, 2) for c in closed_after.values()],
        "<= 6.5",
    )
    abandoned = log_lines(sc.logs(), "Exception in ASGI application")
    figure("ERROR tracebacks logged (abandoned bodies)", len(abandoned), "0")

    assert probes["errors"] == {}, probes["first_errors"]
    assert latency["p99"] < PROBE_P99_MS, latency
    assert set(answers["signal during the abuse"]) == {200}
    assert {code for code, _ in answers["1 MiB header, probe port"]} <= {200, 503}
    assert {code for code, _ in answers["1 MiB header, worker socket"]} == {200}
    assert set(answers["unfinished body, probe port"]) == {405}
    assert loris.failures == []
    # A connection that completed a request is closed within the deadline on its client.
    assert all(c is not None and c <= 6.5 for c in closed_after.values()), closed_after
    assert fds_max <= fds_before + held_connections + 16
    assert fds_after <= fds_before + 2
    assert rss_max <= rss_before + 64
    assert rss_after <= rss_before + 16
    log = sc.logs()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def peer_closed(sock: socket.socket) -> bool:
    """Whether the other end closed `sock` (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(5)


def summarize(values: list[object]) -> str:
    if values and isinstance(values[0], tuple):
        codes = sorted({str(code) for code, _ in values})  # type: ignore[misc]
        times = sorted(ms for _, ms in values)  # type: ignore[misc]
        median, longest = times[len(times) // 2], times[-1]
        return f"{len(values)} tries, codes {'/'.join(codes)}, ms median {median} max {longest}"
    codes = sorted({str(value) for value in values})
    return f"{len(values)} tries, codes {'/'.join(codes)}"


# -- what uvicorn does with a connection that never completes a request ----------------------


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed `sock` (EOF or reset), or None."""
    began = time.monotonic()
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return time.monotonic() - began
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - began


def test_abuse_idle_connections_are_closed_and_cannot_starve_probes(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sc = run_sidecar(WORKER_ENV)
    limit = 256
    psutil.Process(sc.process.pid).rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
    tcp = ("127.0.0.1", sc.port)
    unix = str(sc.socket_path)
    watched = {
        "probe port, idle": connect(tcp),
        "probe port, half a header": connect(tcp),
        "worker socket, idle": connect(unix),
        "worker socket, half a header": connect(unix),
    }
    for name, sock in watched.items():
        if "half" in name:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: sid")
    results: dict[str, float | None] = {}
    threads = [
        threading.Thread(
            target=lambda n=name, s=sock: results.__setitem__(
                n, closed_within(s, IDLE_CLOSE_SECONDS)
            )
        )
        for name, sock in watched.items()
    ]
    for thread in threads:
        thread.start()

    def answered() -> bool:
        try:
            return probe(sc.port, "/sidecar/live", timeout=1.0).status_code == 200
        except Exception:
            return False

    with held(list(watched.values())), held([]) as idle:
        # Past the descriptor limit, were each kept: the cap closes the longest waiting.
        for _ in range(limit + 44):
            idle.append(connect(tcp))
        fds_held = fd_count(sc.process.pid)
        starved = not answered()
        for thread in threads:
            thread.join(IDLE_CLOSE_SECONDS + 5)
    assert sc.process.poll() is None
    # Documented recovery: once the clients are gone, the probes are answered again.
    assert wait_for(answered, 5.0)
    never = [name for name, closed in results.items() if closed is None]
    assert never == [], f"still open after {IDLE_CLOSE_SECONDS:g}s: {never}"
    assert not starved, f"no probe answered with {limit + 48} clients holding connections"
    assert fds_held <= 2 * MAX_CONNECTIONS + 32, fds_held


def test_abuse_unfinished_body_is_closed(sidecar: Sidecar) -> None:
    sockets = [connect(str(sidecar.socket_path)) for _ in range(3)]
    with held(sockets):
        for sock, path in zip(
            sockets, ("/v1/endpoints/generate", "/v1/session", "/v1/heartbeat"), strict=True
        ):
            sock.sendall(
                unfinished_body("PUT" if "endpoints" in path else "POST", path, 1000, b"{")
            )
        wait_for(lambda: all(peer_closed(sock) for sock in sockets), IDLE_CLOSE_SECONDS, 0.2)
        still_open = [n for n, sock in enumerate(sockets) if not peer_closed(sock)]
    assert still_open == [], f"open after {IDLE_CLOSE_SECONDS:g}s: {still_open}"


def test_abuse_one_mib_header_is_answered_normally(sidecar: Sidecar) -> None:
    """Documented: uvicorn (httptools) takes a 1 MiB header; the request is answered."""
    pid = sidecar.process.pid
    before = rss_mib(pid)
    code, headers, body = raw_exchange(
        ("127.0.0.1", sidecar.port), request_with_header("GET", "/health", ONE_MIB)
    )
    assert code == 503 and headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "notready"
    code, _, _ = raw_exchange(
        str(sidecar.socket_path), request_with_header("GET", "/v1/status", ONE_MIB)
    )
    assert code == 200
    code, _, _ = raw_exchange(
        str(sidecar.socket_path),
        request_with_header("POST", "/v1/endpoints/generate/ready", ONE_MIB),
    )
    assert code == 200
    assert rss_mib(pid) <= before + 8
    assert probe(sidecar.port, "/health").status_code == 200


def test_abuse_head_over_the_limit_is_431(sidecar: Sidecar) -> None:
    """A request head over 2 MiB gets a JSON 431 and the connection is closed."""
    for address, path in (
        (("127.0.0.1", sidecar.port), "/health"),
        (str(sidecar.socket_path), "/v1/status"),
    ):
        code, headers, body = raw_exchange(address, request_with_header("GET", path, 3 * ONE_MIB))
        assert code == 431 and headers["content-type"] == "application/json"
        error = json.loads(body)
        assert set(error) == {"error"} and error["error"]
    assert probe(sidecar.port, "/sidecar/live").status_code == 200


def test_abuse_huge_header_does_not_grow_memory(sidecar: Sidecar, figure: Record) -> None:
    pid = sidecar.process.pid
    before = rss_mib(pid)
    size = 32 * ONE_MIB
    with connect(("127.0.0.1", sidecar.port)) as sock:
        refused = False
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: sidecar\r\nX-Big: ")
            chunk = b"h" * ONE_MIB
            for _ in range(size // ONE_MIB):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            refused = True
        time.sleep(0.3)
        peak = rss_mib(pid)
    figure("RSS MiB with an unfinished 32 MiB header, before/holding", f"{before}/{peak}")
    assert wait_for(lambda: rss_mib(pid) <= before + 16, 5.0)
    assert refused or peak <= before + 16, f"RSS {before} -> {peak} MiB"


def test_abuse_abandoned_body_is_not_an_error(sidecar: Sidecar) -> None:
    for path in ("/v1/endpoints/generate", "/v1/session", "/v1/heartbeat", "/v1/instances"):
        with connect(str(sidecar.socket_path)) as sock:
            sock.sendall(
                unfinished_body("POST" if "endpoints" not in path else "PUT", path, 100, b"{")
            )
            time.sleep(0.05)
    time.sleep(0.5)
    assert sidecar.process.poll() is None
    assert control(sidecar.socket_path, "GET", "/v1/status").status_code == 200
    log = sidecar.logs()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


# -- clients that leave their answers unread, with the others ---------------------------------


Client = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


async def pipeline_without_reading(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    while True:
        writer.write(request * 500)
        await writer.drain()


async def read_slowly(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    writer.write(request * 20000)
    while await reader.read(256):
        await asyncio.sleep(0.1)


async def send_head_slowly(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    await send_slowly(reader, writer, request.removesuffix(b"\r\n") + b"X-Slow: ", b"s")


async def send_body_slowly(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    # The worker's socket reads the body; the probe port answers 405 and waits for the rest.
    method, path = ("POST", "/health") if b"/live" in request else ("PUT", "/v1/endpoints/generate")
    await send_slowly(reader, writer, unfinished_body(method, path, 1000, b"{"), b" ")


async def send_slowly(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: bytes, byte: bytes
) -> None:
    writer.write(start)
    while not reader.at_eof():
        await asyncio.sleep(0.25)
        writer.write(byte)
        await writer.drain()


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
    await reader.read()


CLIENTS: dict[str, tuple[Client, int]] = {
    # What each does, and how many of it per socket.
    "pipeline without reading": (pipeline_without_reading, 3),
    "read slowly": (read_slowly, 2),
    "send a head slowly": (send_head_slowly, 2),
    "send a body slowly": (send_body_slowly, 2),
    "hold a connection": (hold, MAX_CONNECTIONS + 36),
}


class Abuse(threading.Thread):
    """The `CLIENTS` on both sockets, each opening a new connection as soon as the sidecar
    closes its last (a holder after 0.5 s), until `stop()`. Counts per kind and socket the
    connections opened and those the sidecar closed."""

    def __init__(self, tcp: tuple[str, int], unix: str) -> None:
        super().__init__(daemon=True)
        self.addresses = {"probe port": tcp, "worker socket": unix}
        self.opened: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    def stop(self) -> None:
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(10)

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        tasks = [
            asyncio.create_task(self._again(f"{kind}, {name}", address, client))
            for kind, (client, count) in CLIENTS.items()
            for name, address in self.addresses.items()
            for _ in range(count)
        ]
        self.started.set()
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _again(self, what: str, address: str | tuple[str, int], client: Client) -> None:
        request = (
            b"GET /live HTTP/1.1\r\nHost: sidecar\r\n\r\n"
            if isinstance(address, tuple)
            else b"GET /v1/status HTTP/1.1\r\nHost: sidecar\r\n\r\n"
        )
        while True:
            try:
                reader, writer = await open_stream(address)
            except OSError as exc:
                self.failures.append(f"{what}, connecting: {exc!r}")
                return
            self.opened[what] += 1
            try:
                await client(reader, writer, request)
            except (ConnectionResetError, BrokenPipeError):
                pass
            except OSError as exc:
                self.failures.append(f"{what}: {exc!r}")
            self.closed[what] += 1
            writer.close()
            if client is hold:
                await asyncio.sleep(0.5)


async def open_stream(
    address: str | tuple[str, int],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(address, tuple):
        return await asyncio.open_connection(*address)
    return await asyncio.open_unix_connection(address)


def test_abuse_clients_that_leave_answers_unread_neither_stall_probes_nor_grow_memory(
    run_sidecar: Callable[..., Sidecar], scale: Scale, figure: Record
) -> None:
    sc = run_sidecar(WORKER_ENV)
    pid = sc.process.pid
    for _ in range(20):
        probe(sc.port, "/live")
        control(sc.socket_path, "GET", "/v1/status")
    rss_before = rss_mib(pid)
    # Long enough for every kind of client to be closed by the deadline at least once.
    seconds = max(scale.abuse_seconds, 2 * CLIENT_TIMEOUT_SECONDS)
    abuse = Abuse(("127.0.0.1", sc.port), str(sc.socket_path))
    abuse.start()
    assert abuse.started.wait(5)
    rss_peak = rss_before
    try:
        with loads(Load("probe", port=sc.port, rate=50, seconds=seconds, paths=["/live"])) as (
            prober,
        ):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rss_peak = max(rss_peak, rss_mib(pid))
                time.sleep(0.05)
            probes = prober.result()
    finally:
        abuse.stop()

    latency = probes["latency_ms"]
    figure(
        "probe latency ms p50/p99/max while clients leave answers unread",
        f"{latency['p50']}/{latency['p99']}/{latency['max']}",
        f"max < {UNREAD_PROBE_MAX_MS:g}",
    )
    figure("sidecar RSS MiB before/peak", f"{rss_before}/{rss_peak}", f"< {UNREAD_RSS_MAX_MIB:g}")
    figure("probes", f"{probes['sent']}, errors {sum(probes['errors'].values())}")
    for what in sorted(abuse.opened):
        figure(f"{what}: connections opened/closed", f"{abuse.opened[what]}/{abuse.closed[what]}")

    assert sc.process.poll() is None, sc.logs()
    assert probes["errors"] == {}, probes["first_errors"]
    assert latency["max"] < UNREAD_PROBE_MAX_MS, latency
    assert rss_peak < UNREAD_RSS_MAX_MIB, f"RSS {rss_before} -> {rss_peak} MiB"
    assert abuse.failures == []
    never_closed = [what for what in abuse.opened if not abuse.closed[what]]
    assert never_closed == [], f"never closed by the sidecar: {never_closed}"
    log = sc.logs()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_abuse_a_flood_of_malformed_requests_is_logged_once(sidecar: Sidecar) -> None:
    for _ in range(30):
        code, _, body = raw_exchange(
            ("127.0.0.1", sidecar.port), b"GET /live HTTP/1.1\r\nHost\r\n\r\n"
        )
        assert (code, body) == (400, b"Invalid HTTP request received.")
    assert probe(sidecar.port, "/sidecar/live").status_code == 200
    assert len(log_lines(sidecar.logs(), "Invalid HTTP request received.")) == 1
