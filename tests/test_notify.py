"""sd_notify: the pure parser and mapping, then a real datagram socket on asyncio and uvloop.

The socket tests send real datagrams, from this process and from real subprocesses that speak
the protocol with the standard library only (as `sd_notify(3)` does), and read the sender's
pid from the kernel's credentials. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import conftest
import pytest
import uvloop
from conftest import Sidecar, short_socket_path
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.health import HealthState
from sidecar.core.records import Status, Subject, Transition
from sidecar.inputs.notify import (
    MAX_DATAGRAM,
    MAX_PER_WAKEUP,
    MAX_PID,
    MalformedDatagram,
    NotifyListener,
    NotifySocketError,
    Outcome,
    apply,
    parse_datagram,
)

READY, NOTREADY = Status.READY, Status.NOTREADY
NOW = 100.0
TIMEOUT = 5.0
LOGGER = "dynamo_health_sidecar"

# A worker's sd_notify(), standard library only: one datagram per argument, then it stays
# alive (so its pid is still its own) until the test closes its stdin.
SD_NOTIFY = """
import os, socket, sys
def sd_notify(message):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(os.environ["NOTIFY_SOCKET"])
        sock.sendall(message.encode())
for message in sys.argv[1:]:
    sd_notify(message)
sys.stdin.read()
"""


def fresh_state(required: tuple[str, ...] = ("generate",), started_at: float = NOW) -> HealthState:
    return HealthState(required=required, starting=NOTREADY, started_at=started_at)


def statuses(state: HealthState) -> dict[str, str]:
    return {name: record.status.value for name, record in state.endpoints.items()}


# -- the parser ------------------------------------------------------------------------------

GOOD = [
    (b"", {}),
    (b"READY=1", {"READY": "1"}),
    (b"READY=1\n", {"READY": "1"}),
    (b"\n\nREADY=1\n\n", {"READY": "1"}),
    (
        b"READY=1\nSTATUS=Serving\nMAINPID=123",
        {"READY": "1", "STATUS": "Serving", "MAINPID": "123"},
    ),
    (b"STATUS=loading 40%", {"STATUS": "loading 40%"}),
    (b"STATUS=a=b=c", {"STATUS": "a=b=c"}),
    (b"STATUS=", {"STATUS": ""}),
    (b"STATUS=caf\xc3\xa9", {"STATUS": "café"}),
    (b"STATUS=tab\there\r", {"STATUS": "tab\there\r"}),
    (b"READY=0\nREADY=1", {"READY": "1"}),
    (b"X_1=y\nWATCHDOG_USEC=20000000", {"X_1": "y", "WATCHDOG_USEC": "20000000"}),
    (b"STATUS=" + b"x" * (MAX_DATAGRAM - 7), {"STATUS": "x" * (MAX_DATAGRAM - 7)}),
]

KEY_RULE = "keys are one or more of A-Z 0-9 _"
MALFORMED = [
    (b"READY", "line 1 is not KEY=VALUE: 'READY'"),
    (b"READY=1\nbogus", "line 2 is not KEY=VALUE: 'bogus'"),
    (b"READY=1\n\nbogus", "line 3 is not KEY=VALUE: 'bogus'"),
    (b"x" * 50, f"line 1 is not KEY=VALUE: '{'x' * 40}...'"),
    (b"ready=1", f"line 1 has an invalid key 'ready': {KEY_RULE}"),
    (b"=1", f"line 1 has an invalid key '': {KEY_RULE}"),
    (b" READY=1", f"line 1 has an invalid key ' READY': {KEY_RULE}"),
    (b"READY-NOW=1", f"line 1 has an invalid key 'READY-NOW': {KEY_RULE}"),
    (b"R\xc3\x89ADY=1", f"line 1 has an invalid key 'R\u00c9ADY': {KEY_RULE}"),
    (b"READY=1\0", "NUL byte at offset 7"),
    (b"\0", "NUL byte at offset 0"),
    (b"STATUS=\xff", "not UTF-8 at offset 7"),
    (b"STATUS=caf\xc3", "not UTF-8 at offset 10"),
    (b"STATUS=\xed\xa0\x80", "not UTF-8 at offset 7"),
    (b"STATUS=" + b"x" * (MAX_DATAGRAM - 6), f"datagram over the {MAX_DATAGRAM}-byte limit"),
    (b"\n" * (MAX_DATAGRAM + 1), f"datagram over the {MAX_DATAGRAM}-byte limit"),
]


@pytest.mark.parametrize(("data", "expected"), GOOD)
def test_notify_parse_accepts_good_datagrams(data: bytes, expected: dict[str, str]) -> None:
    assert parse_datagram(data) == expected


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_notify_parse_rejects_malformed_datagrams_with_the_reason(
    data: bytes, message: str
) -> None:
    with pytest.raises(MalformedDatagram) as caught:
        parse_datagram(data)
    assert str(caught.value) == message


KEYS = st.sampled_from(
    ["READY", "STOPPING", "WATCHDOG", "STATUS", "MAINPID", "WATCHDOG_USEC", "RELOADING", "ERRNO"]
)
VALUES = st.one_of(
    st.sampled_from(["1", "0", "", "123", "2147483648", "-1", "abc", "a=b", "trigger"]),
    st.text(max_size=30),
)
LINES = st.one_of(st.tuples(KEYS, VALUES).map("=".join), st.text(max_size=20))
DATAGRAMS = st.one_of(
    st.binary(max_size=MAX_DATAGRAM + 64),
    st.binary(min_size=MAX_DATAGRAM - 8, max_size=MAX_DATAGRAM + 8),
    st.lists(LINES, max_size=8).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
)
PIDS = st.one_of(st.none(), st.integers(min_value=1, max_value=MAX_PID))


@given(DATAGRAMS)
def test_notify_parse_any_bytes_returns_assignments_or_raises_malformed(data: bytes) -> None:
    try:
        assignments = parse_datagram(data)
    except MalformedDatagram as exc:
        assert str(exc)
        return
    assert all(
        isinstance(key, str) and isinstance(value, str) for key, value in assignments.items()
    )


WELL_FORMED = st.dictionaries(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=16),
    st.text(st.characters(blacklist_characters="\n\0", blacklist_categories=["Cs"]), max_size=40),
    max_size=8,
)


@given(WELL_FORMED)
def test_notify_parse_round_trips_well_formed_assignments(assignments: dict[str, str]) -> None:
    data = "\n".join(f"{key}={value}" for key, value in assignments.items()).encode()
    assert parse_datagram(data) == assignments


@settings(max_examples=300)
@given(DATAGRAMS, PIDS)
def test_notify_any_datagram_applies_cleanly_or_changes_nothing(
    data: bytes, pid: int | None
) -> None:
    state = fresh_state()
    listener = NotifyListener(Path("/nonexistent/notify.sock"), state, clock=lambda: NOW + 1)
    version = state.version
    try:
        parse_datagram(data)
    except MalformedDatagram:
        malformed = True
    else:
        malformed = False
    outcome = listener.handle(data, pid)  # never raises: failures are counted as malformed
    # Malformed exactly when the parser says so: applying a well-formed one never failed.
    assert (outcome is None, listener.malformed) == (malformed, int(malformed))
    if malformed:
        assert state.version == version
        assert state.life.pid is None


# -- apply: assignments to state-machine calls -------------------------------------------------


def test_notify_apply_ready_makes_required_endpoints_ready() -> None:
    state = fresh_state()
    outcome = apply({"READY": "1"}, state, NOW + 1, 42)
    assert statuses(state) == {"generate": "ready"}
    assert state.status is READY
    assert state.life.pid == 42
    assert outcome == Outcome(applied=("READY",), ignored=(), pid=42)


def test_notify_apply_ready_without_required_endpoints_makes_the_status_ready() -> None:
    state = fresh_state(required=())
    apply({"READY": "1"}, state, NOW + 1)
    assert state.status is READY
    assert state.live() == (True, "")


def test_notify_apply_stopping_makes_every_endpoint_notready() -> None:
    state = fresh_state()
    apply({"READY": "1"}, state, NOW + 1)
    apply({"STOPPING": "1"}, state, NOW + 2)
    assert statuses(state) == {"generate": "notready"}
    assert state.status is NOTREADY
    assert state.alive


def test_notify_apply_ready_and_stopping_together_leave_it_notready() -> None:
    state = fresh_state()
    outcome = apply({"STOPPING": "1", "READY": "1"}, state, NOW + 1)
    assert state.status is NOTREADY
    assert outcome.applied == ("READY", "STOPPING")


def test_notify_apply_watchdog_records_a_heartbeat() -> None:
    state = fresh_state()
    apply({"WATCHDOG": "1"}, state, NOW + 3, 42)
    assert (state.life.last_heartbeat, state.life.pid) == (NOW + 3, 42)


def test_notify_apply_status_keeps_the_text() -> None:
    state = fresh_state()
    outcome = apply({"STATUS": "loading 40%"}, state, NOW + 1)
    assert state.life.status_text == "loading 40%"
    assert outcome.status == "loading 40%"
    assert state.status is NOTREADY


def test_notify_apply_status_comes_before_the_ready_transition() -> None:
    state = fresh_state()
    seen: list[tuple[str, str]] = []

    def record(transition: Transition) -> None:
        if transition.subject is Subject.WORKER:
            seen.append((transition.new, state.life.status_text))

    state.subscribe(record)
    apply(parse_datagram(b"READY=1\nSTATUS=Serving"), state, NOW + 1)
    assert seen == [("ready", "Serving")]


def test_notify_apply_mainpid_is_the_pid_of_the_other_assignments() -> None:
    state = fresh_state()
    outcome = apply(parse_datagram(b"READY=1\nSTATUS=Serving\nMAINPID=123"), state, NOW + 1, 7)
    assert (state.life.pid, state.life.status_text, state.status) == (123, "Serving", READY)
    assert outcome == Outcome(
        applied=("MAINPID", "STATUS", "READY"), ignored=(), pid=123, status="Serving"
    )


@pytest.mark.parametrize("value", ["0", "-1", "+5", " 5", "abc", "", "2147483648", "\u0661\u0662"])
def test_notify_apply_invalid_mainpid_is_ignored_for_the_senders_pid(value: str) -> None:
    state = fresh_state()
    outcome = apply({"MAINPID": value, "WATCHDOG": "1"}, state, NOW + 1, 7)
    assert state.life.pid == 7
    assert outcome.ignored == ("MAINPID",)


def test_notify_apply_mainpid_alone_changes_nothing() -> None:
    state = fresh_state()
    version = state.version
    outcome = apply({"MAINPID": "123"}, state, NOW + 1, 7)
    assert (state.version, state.life.pid) == (version, None)
    assert outcome.applied == ("MAINPID",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("20000000", 20000000), ("0", 0), ("18446744073709551615", 2**64 - 1)],
)
def test_notify_apply_watchdog_usec_is_reported(value: str, expected: int) -> None:
    state = fresh_state()
    version = state.version
    outcome = apply({"WATCHDOG_USEC": value}, state, NOW + 1)
    assert outcome.watchdog_usec == expected
    assert state.version == version


@pytest.mark.parametrize("value", ["", "-1", "1.5", "abc", "18446744073709551616", "1" * 30])
def test_notify_apply_invalid_watchdog_usec_is_ignored(value: str) -> None:
    outcome = apply({"WATCHDOG_USEC": value}, fresh_state(), NOW + 1)
    assert (outcome.watchdog_usec, outcome.ignored) == (None, ("WATCHDOG_USEC",))


def test_notify_apply_ignores_unknown_keys_and_other_values() -> None:
    state = fresh_state()
    version = state.version
    assignments = {
        "READY": "0",
        "STOPPING": "yes",
        "WATCHDOG": "trigger",
        "RELOADING": "1",
        "ERRNO": "2",
        "EXTEND_TIMEOUT_USEC": "1000",
        "FDSTORE": "1",
        "BARRIER": "1",
    }
    outcome = apply(assignments, state, NOW + 1, 7)
    assert (state.version, state.life.pid, state.life.last_signal) == (version, None, None)
    assert outcome.applied == ()
    assert outcome.ignored == (
        "READY",
        "STOPPING",
        "WATCHDOG",
        "RELOADING",
        "ERRNO",
        "EXTEND_TIMEOUT_USEC",
        "FDSTORE",
        "BARRIER",
    )


# -- the listener's handling of one datagram, without a socket -------------------------------


def test_notify_handle_counts_received_malformed_and_ignored() -> None:
    state = fresh_state()
    listener = NotifyListener(Path("/nonexistent/notify.sock"), state, clock=lambda: NOW)
    listener.handle(b"READY=1\nRELOADING=1\nERRNO=3")
    listener.handle(b"bogus")
    listener.handle(b"STATUS=Serving\nWATCHDOG_USEC=5000000")
    listener.handle(b"WATCHDOG_USEC=nope")
    assert (listener.received, listener.malformed, listener.ignored_keys) == (4, 1, 3)
    assert state.current_life().status_text == "Serving"


def test_notify_handle_failure_is_counted_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = fresh_state()

    def broken(transition: Transition) -> None:
        raise RuntimeError("boom")

    state.subscribe(broken)
    listener = NotifyListener(Path("/nonexistent/notify.sock"), state, clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert listener.handle(b"READY=1", 7) is None
    assert listener.malformed == 1
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring a malformed sd_notify datagram from pid 7: handling it failed: "
        "RuntimeError: boom (further ones are counted until a well-formed one arrives)"
    ]


def test_notify_handle_warns_once_per_run_of_malformed_datagrams(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = NotifyListener(Path("/nonexistent/notify.sock"), fresh_state(), clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for data in (b"bad", b"worse", b"\0", b"WATCHDOG=1", b"again"):
            listener.handle(data)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "ignoring a malformed sd_notify datagram: line 1 is not KEY=VALUE: 'bad' (further ones "
        "are counted until a well-formed one arrives)",
        "ignoring a malformed sd_notify datagram: line 1 is not KEY=VALUE: 'again' (further ones "
        "are counted until a well-formed one arrives)",
    ]
    assert listener.malformed == 4


# -- the real socket, on asyncio's loop and on uvloop ----------------------------------------

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = LOOPS[request.param]()
    errors: list[dict[str, Any]] = []
    event_loop.set_exception_handler(lambda _, context: errors.append(context))
    yield event_loop
    event_loop.close()
    assert errors == [], "an error escaped to the event loop"


@pytest.fixture
def notify_path() -> Iterator[Path]:
    """A socket path well under the 107-byte limit, whatever pytest's tmp_path is."""
    with tempfile.TemporaryDirectory(prefix="dhs-") as directory:
        yield Path(directory) / "notify.sock"


async def _until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


def wait_until(
    loop: asyncio.AbstractEventLoop, check: Callable[[], bool], timeout: float = TIMEOUT
) -> bool:
    """Run the loop (so the listener reads) until `check` holds or the deadline passes."""
    return loop.run_until_complete(_until(check, timeout))


def start(loop: asyncio.AbstractEventLoop, listener: NotifyListener) -> None:
    async def go() -> None:
        listener.start()

    loop.run_until_complete(go())


def send(path: Path, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, str(path))


@dataclass
class Served:
    loop: asyncio.AbstractEventLoop
    listener: NotifyListener
    state: HealthState
    path: Path

    def send(self, data: bytes) -> None:
        send(self.path, data)

    def until(self, check: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        return wait_until(self.loop, check, timeout)

    def exchange(self, *datagrams: bytes) -> None:
        """Send datagrams and wait until the listener has taken every one of them."""
        expected = self.listener.received + len(datagrams)
        for data in datagrams:
            self.send(data)
        assert self.until(lambda: self.listener.received >= expected)


@pytest.fixture
def served(loop: asyncio.AbstractEventLoop, notify_path: Path) -> Iterator[Served]:
    clock = time.monotonic
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=clock())
    listener = NotifyListener(notify_path, state, clock)
    start(loop, listener)
    yield Served(loop, listener, state, notify_path)
    listener.stop_listening()


def run_sd_notify(path: Path, *messages: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NOTIFY_SOCKET": str(path)}
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", SD_NOTIFY, *messages], env=env, stdin=subprocess.PIPE
    )


def finish(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=TIMEOUT)
        raise


def test_notify_socket_ready_makes_generate_ready_with_the_senders_pid(served: Served) -> None:
    served.exchange(b"READY=1")
    assert statuses(served.state) == {"generate": "ready"}
    assert served.state.status is READY
    assert served.state.life.pid == os.getpid()


def test_notify_socket_subprocess_sd_notify_is_seen_with_its_pid(served: Served) -> None:
    worker = run_sd_notify(served.path, "STATUS=loading 40%", "READY=1")
    try:
        assert served.until(lambda: served.listener.received == 2)
        assert served.state.status is READY
        assert served.state.life.pid == worker.pid
        assert served.state.life.status_text == "loading 40%"
    finally:
        finish(worker)


def test_notify_socket_stopping_makes_it_notready(served: Served) -> None:
    served.exchange(b"READY=1")
    worker = run_sd_notify(served.path, "STOPPING=1")
    try:
        assert served.until(lambda: served.listener.received == 2)
        assert statuses(served.state) == {"generate": "notready"}
        assert served.state.status is NOTREADY
        assert served.state.life.pid == worker.pid
    finally:
        finish(worker)


def test_notify_socket_watchdog_records_a_heartbeat(served: Served) -> None:
    before = time.monotonic()
    served.exchange(b"WATCHDOG=1")
    heartbeat = served.state.life.last_heartbeat
    assert heartbeat is not None and before <= heartbeat <= time.monotonic()


def test_notify_socket_status_text_is_kept(served: Served) -> None:
    served.exchange(b"STATUS=loading 40%")
    assert served.state.life.status_text == "loading 40%"
    assert served.state.status is NOTREADY


def test_notify_socket_multi_assignment_datagram_like_systemd_notify(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dynamo_health_sidecar")
    served.exchange(b"READY=1\nSTATUS=Serving\nMAINPID=123\nWATCHDOG_USEC=30000000\n")
    life = served.state.life
    assert (served.state.status, life.status_text, life.pid) == (READY, "Serving", 123)
    assert "the worker asks for a watchdog of 30s (WATCHDOG_USEC=30000000)" in caplog.messages


def test_notify_socket_malformed_datagrams_are_counted_and_change_nothing(served: Served) -> None:
    version = served.state.version
    bad = [b"READY", b"READY=1\0", b"READY=\xff", b"ready=1", b"READY=1\n" * 1000, b"x" * 70000]
    # The last datagram only has an ignored key: once it is taken, every bad one was too.
    served.exchange(*bad, b"RELOADING=1")
    assert (served.listener.received, served.listener.malformed) == (len(bad) + 1, len(bad))
    assert served.listener.ignored_keys == 1
    assert served.state.version == version
    assert (served.state.status, served.state.life.pid) == (NOTREADY, None)


def test_notify_socket_takes_a_burst_beyond_one_wakeup(served: Served) -> None:
    count = MAX_PER_WAKEUP * 4

    def flood() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            for _ in range(count):
                sock.sendto(b"WATCHDOG=1", str(served.path))

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        assert served.until(lambda: served.listener.received == count)
    finally:
        sender.join(timeout=TIMEOUT)
    assert served.listener.malformed == 0


def test_notify_socket_closes_passed_descriptors(served: Served) -> None:
    # sd_notify_barrier(): BARRIER=1 with a pipe's write end; the waiter sees the pipe close.
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, write_end.to_bytes(4, sys.byteorder))]
            sock.sendmsg([b"BARRIER=1"], rights, 0, str(served.path))
        os.close(write_end)

        def closed() -> bool:
            try:
                return os.read(read_end, 1) == b""
            except BlockingIOError:
                return False

        assert served.until(closed)
    finally:
        os.close(read_end)
    assert served.listener.ignored_keys == 1


def test_notify_socket_file_has_mode_0660(served: Served) -> None:
    mode = os.stat(served.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_notify_socket_creates_missing_directories(
    loop: asyncio.AbstractEventLoop, notify_path: Path
) -> None:
    path = notify_path.parent / "a" / "b" / "notify.sock"
    listener = NotifyListener(path, fresh_state(started_at=time.monotonic()), time.monotonic)
    start(loop, listener)
    try:
        send(path, b"READY=1")
        assert wait_until(loop, lambda: listener.received == 1)
    finally:
        listener.stop_listening()


def test_notify_socket_replaces_a_stale_socket(
    loop: asyncio.AbstractEventLoop, notify_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(str(notify_path))  # closed without unlinking, as a killed sidecar leaves it
    state = fresh_state(started_at=time.monotonic())
    listener = NotifyListener(notify_path, state)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        start(loop, listener)
    try:
        send(notify_path, b"READY=1")
        assert wait_until(loop, lambda: state.status is READY)
    finally:
        listener.stop_listening()
    assert f"replaced the stale socket {notify_path} left by a previous run" in caplog.messages


def test_notify_socket_refuses_a_file_that_is_not_a_socket(
    loop: asyncio.AbstractEventLoop, notify_path: Path
) -> None:
    notify_path.write_text("keep me")
    listener = NotifyListener(notify_path, fresh_state())
    with pytest.raises(NotifySocketError) as caught:
        start(loop, listener)
    assert str(caught.value) == f"{notify_path} exists and is not a socket; refusing to replace it"
    assert notify_path.read_text() == "keep me"


def test_notify_socket_refuses_a_socket_in_use(served: Served) -> None:
    second = NotifyListener(served.path, fresh_state())
    with pytest.raises(NotifySocketError) as caught:
        start(served.loop, second)
    assert str(caught.value) == (
        f"{served.path} is in use by another running process; is a sidecar already there?"
    )
    served.exchange(b"READY=1")  # the first one still has it
    assert served.state.status is READY


def test_notify_socket_refuses_a_stream_socket_in_use(
    loop: asyncio.AbstractEventLoop, notify_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(notify_path))
        stream.listen(1)
        with pytest.raises(NotifySocketError) as caught:
            start(loop, NotifyListener(notify_path, fresh_state()))
        assert str(caught.value) == (
            f"{notify_path} is a stream socket in use; refusing to replace it"
        )
        assert stat.S_ISSOCK(os.stat(notify_path).st_mode)


def test_notify_socket_close_removes_the_file(served: Served) -> None:
    served.listener.stop_listening()
    assert not served.path.exists()
    served.listener.stop_listening()  # a second close is harmless


def test_notify_socket_close_leaves_a_file_that_is_no_longer_ours(served: Served) -> None:
    served.path.unlink()
    served.path.write_text("someone else's")
    served.listener.stop_listening()
    assert served.path.read_text() == "someone else's"


def test_notify_socket_stops_reading_after_close(served: Served) -> None:
    served.listener.stop_listening()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, pytest.raises(OSError):
        sock.sendto(b"READY=1", str(served.path))
    served.until(lambda: False, timeout=0.05)  # let the loop run: nothing is read any more
    assert (served.listener.received, served.state.status) == (0, NOTREADY)


# -- the real sidecar, with DYN_SIDECAR_NOTIFY_SOCKET -----------------------------------------


def test_notify_sidecar_worker_calling_sd_notify_becomes_ready(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    notify_path = short_socket_path().with_name("notify.sock")
    sidecar = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            "DYN_SIDECAR_NOTIFY_SOCKET": str(notify_path),
        }
    )
    assert sidecar.probe("/health").status_code == 503
    worker = (
        "import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
        "s.sendto(b'READY=1\\nSTATUS=serving', os.environ['NOTIFY_SOCKET'])"
    )
    subprocess.run(
        [sys.executable, "-c", worker], env={"NOTIFY_SOCKET": str(notify_path)}, check=True
    )
    assert conftest.wait_until(lambda: sidecar.probe("/health").status_code == 200, timeout=2.0)
    assert sidecar.probe("/health").json()["endpoints"] == {"generate": "ready"}


def test_notify_sidecar_counts_malformed_datagrams_in_metrics(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    notify_path = short_socket_path().with_name("notify.sock")
    sidecar = run_sidecar({"DYN_SIDECAR_NOTIFY_SOCKET": str(notify_path)})
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"not an assignment", str(notify_path))
        sender.sendto(b"WATCHDOG=1", str(notify_path))

    def counted() -> bool:
        text = sidecar.probe("/metrics").text
        return (
            "dynamo_sidecar_notify_malformed_datagrams_total 1.0" in text
            and "dynamo_sidecar_notify_datagrams_total 2.0" in text
        )

    assert conftest.wait_until(counted, timeout=2.0)
    assert sidecar.probe("/health").json()["endpoints"] == {}
