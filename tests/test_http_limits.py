"""What one client may cost (sidecar/http_limits.py), on a real sidecar's real sockets: a
client that reads its answers is served as uvicorn serves it; one that does not, or sends
or holds too long, is closed, except the worker's session."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import psutil
from conftest import Sidecar, wait_until

from sidecar.http_limits import CLIENT_TIMEOUT_SECONDS, MAX_CONNECTIONS

LIVE = b"GET /sidecar/live HTTP/1.1\r\nHost: sidecar\r\n\r\n"
STATUS = b"GET /v1/status HTTP/1.1\r\nHost: sidecar\r\n\r\n"
SELF_LIVE_ANSWER = b'{"status":"live"}'
# Slack for a loaded machine on top of the deadline.
SLACK_SECONDS = 1.5
TCP_ESTABLISHED = 1  # tcpi_state in <netinet/tcp.h>


def connect(address: str | tuple[str, int], timeout: float = 5.0) -> socket.socket:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """`count` answers with a Content-Length each: (status code, body)."""
    data, answers = b"", []
    while len(answers) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        if found:
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(rest) >= length:
                answers.append((int(head.split(b" ", 2)[1]), rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(answers)} of {count} answers"
        data += chunk
    return answers


def seconds_until_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the sidecar closes `sock` (EOF or reset), reading what comes; None if
    it is still open after `timeout`."""
    began = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - began


def is_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(5)


def pipeline_until_the_sidecar_stops_reading(sock: socket.socket) -> None:
    """Pipeline requests and read nothing, until the kernel's buffers are full and a send
    blocks (`sock` has a timeout)."""
    with contextlib.suppress(TimeoutError):
        for _ in range(200):
            sock.sendall(LIVE * 1000)


def tcp_state(sock: socket.socket) -> int:
    """The kernel's state of a TCP connection, read without touching what it received."""
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss / 2**20)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sidecar_connections(sidecar: Sidecar) -> list[object]:
    """The connections the sidecar has accepted on its probe port."""
    return [
        conn
        for conn in psutil.Process(sidecar.process.pid).net_connections("tcp")
        if conn.laddr and conn.laddr[1] == sidecar.port and conn.status == psutil.CONN_ESTABLISHED
    ]


def test_pipelined_requests_of_a_client_that_reads_are_all_answered_in_order(
    sidecar: Sidecar,
) -> None:
    paths = ["/sidecar/live", "/nope", "/health"] * 100
    with connect(("127.0.0.1", sidecar.port)) as sock:
        sock.sendall(
            b"".join(b"GET %s HTTP/1.1\r\nHost: sidecar\r\n\r\n" % p.encode() for p in paths)
        )
        answers = read_answers(sock, len(paths))
    assert [code for code, _ in answers] == [200, 404, 503] * 100
    assert {body for code, body in answers if code == 200} == {SELF_LIVE_ANSWER}


def test_answers_left_unread_for_less_than_the_deadline_all_arrive(sidecar: Sidecar) -> None:
    count = 10  # 370 KiB of answers: past what the kernel and the transport buffer
    with connect(str(sidecar.socket_path)) as sock:
        sock.sendall(b"GET /v1/openapi.json HTTP/1.1\r\nHost: sidecar\r\n\r\n" * count)
        time.sleep(CLIENT_TIMEOUT_SECONDS / 3)
        answers = read_answers(sock, count)
        assert is_open(sock)
    assert {code for code, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
    json.loads(answers[0][1])


def test_a_client_that_pipelines_without_reading_costs_little_memory(sidecar: Sidecar) -> None:
    pid = sidecar.process.pid
    before = rss_mib(pid)
    with connect(("127.0.0.1", sidecar.port), timeout=0.5) as sock:
        pipeline_until_the_sidecar_stops_reading(sock)
        holding = rss_mib(pid)
    assert holding <= before + 8, f"RSS {before} -> {holding} MiB"


def test_a_client_that_pipelines_without_reading_is_closed_unread(sidecar: Sidecar) -> None:
    with connect(("127.0.0.1", sidecar.port), timeout=0.5) as sock:
        pipeline_until_the_sidecar_stops_reading(sock)
        # Not a byte read: a close that waits for the client to read would never come.
        closed = wait_until(
            lambda: tcp_state(sock) != TCP_ESTABLISHED, CLIENT_TIMEOUT_SECONDS + SLACK_SECONDS
        )
    assert closed, "a client that never reads is still connected"


def test_a_connection_closing_after_answers_never_read_is_closed_at_the_deadline(
    sidecar: Sidecar,
) -> None:
    pid = sidecar.process.pid
    sidecar.control("GET", "/v1/openapi.json")  # what the first answer opens, opened
    before = fd_count(pid)
    openapi = b"GET /v1/openapi.json HTTP/1.1\r\nHost: sidecar\r\n"
    with connect(str(sidecar.socket_path)) as sock:
        # More than the kernel holds, less than the transport's high-water mark on top: the
        # close that follows the last answer waits for a client that never reads.
        sock.sendall((openapi + b"\r\n") * 3 + openapi + b"Connection: close\r\n\r\n")
        assert wait_until(lambda: fd_count(pid) == before + 1)
        released = wait_until(
            lambda: fd_count(pid) == before, CLIENT_TIMEOUT_SECONDS + SLACK_SECONDS
        )
    assert released, "the sidecar still holds the connection"


def test_a_kept_alive_connection_is_closed_at_the_deadline_after_its_answer(
    sidecar: Sidecar,
) -> None:
    for address in (("127.0.0.1", sidecar.port), str(sidecar.socket_path)):
        with connect(address) as sock:
            request = LIVE if isinstance(address, tuple) else STATUS
            sock.sendall(request)
            read_answers(sock, 1)
            closed = seconds_until_closed(sock, CLIENT_TIMEOUT_SECONDS + SLACK_SECONDS)
        assert closed is not None and closed >= CLIENT_TIMEOUT_SECONDS - 0.1, (address, closed)


def test_past_the_cap_the_connection_waiting_longest_is_closed(sidecar: Sidecar) -> None:
    address = ("127.0.0.1", sidecar.port)
    first = connect(address)
    time.sleep(0.05)  # so that it is the first in the sidecar's order too
    others = [connect(address) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        assert wait_until(lambda: len(sidecar_connections(sidecar)) >= MAX_CONNECTIONS)
        assert is_open(first)
        # The next connection is one too many: the first is closed, the next answered.
        with connect(address) as newest:
            newest.sendall(LIVE)
            assert read_answers(newest, 1) == [(200, SELF_LIVE_ANSWER)]
        assert seconds_until_closed(first, 1.0) is not None
        assert all(is_open(sock) for sock in others)
    finally:
        for sock in [first, *others]:
            sock.close()


def test_the_workers_session_outlives_the_deadline_and_the_cap(sidecar: Sidecar) -> None:
    path = str(sidecar.socket_path)
    with connect(path) as session:
        session.sendall(
            b"POST /v1/session HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        first_line = b""
        while b'"session":"open"' not in first_line:
            first_line += session.recv(65536)
        # Past the cap on the same socket, and past the deadline.
        crowd = [connect(path) for _ in range(MAX_CONNECTIONS + 10)]
        try:
            time.sleep(CLIENT_TIMEOUT_SECONDS + SLACK_SECONDS)
            assert is_open(session)
            assert not any(is_open(sock) for sock in crowd)
        finally:
            for sock in crowd:
                sock.close()
        worker = sidecar.control("GET", "/v1/worker").json()
        assert worker["alive"] and worker["sessions"] == 1, worker


def test_what_follows_an_upgrade_request_in_the_same_read_is_not_parsed(
    sidecar: Sidecar,
) -> None:
    """As uvicorn does: the h2c upgrade is answered as HTTP/1.1, the rest of the read
    dropped, and the next read parsed."""
    upgrade = (
        b"GET /sidecar/live HTTP/1.1\r\nHost: sidecar\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    )
    with connect(("127.0.0.1", sidecar.port)) as sock:
        sock.sendall(upgrade + b"GET /nope HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        assert read_answers(sock, 1) == [(200, SELF_LIVE_ANSWER)]
        sock.sendall(b"GET /nope HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        assert [code for code, _ in read_answers(sock, 1)] == [404]
