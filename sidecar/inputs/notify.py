"""systemd's notify protocol (sd_notify(3)) on a Unix datagram socket, into state-machine calls.

A worker that already calls `sd_notify()` works unchanged with `NOTIFY_SOCKET` pointed at
`DYN_SIDECAR_NOTIFY_SOCKET` (docs/protocol.md section 5). Each datagram is newline-separated
`KEY=VALUE` assignments; the kernel adds the sender's pid (`SO_PASSCRED`).

Three layers, each testable alone:
- `parse_datagram(data)`: bytes to assignments, or `MalformedDatagram` naming what is wrong.
- `apply(assignments, state, now, pid)`: assignments to `HealthState` calls, returning an
  `Outcome` that says what was applied and what was ignored.
- `NotifyListener`: the socket, registered with the running event loop (asyncio or uvloop).

What each key does (whatever their order in the datagram, in this order):
- `MAINPID=N` (1..2147483647): N is the pid of the other assignments, not the sender's.
- `STATUS=text`: `state.notify_status`; first, so the transitions below already see it.
- `READY=1`: `state.notify_ready`: every required and announced endpoint ready (none: status ready).
- `STOPPING=1`: `state.notify_stopping`: every endpoint not ready; the worker stays alive.
- `WATCHDOG=1`: `state.heartbeat`.
- `WATCHDOG_USEC=N`: recorded as `NotifyListener.watchdog_usec` (the latest); no state change.
- Anything else is ignored and counted: other keys (`RELOADING=1`, `ERRNO=`, `FDSTORE=1`, ...)
  and other values of these (`READY=0`, `MAINPID=abc`).

Decisions:
- A datagram holds at most `MAX_DATAGRAM` (4096) bytes: systemd's own limit (`NOTIFY_BUFFER_MAX`,
  `PIPE_BUF`). A longer one is malformed as a whole.
- A key given twice in one datagram: the last one counts.
- A sender pid of 0 (the sender is in a pid namespace the sidecar cannot see) is no pid.
- File descriptors passed along (`FDSTORE=1`, `sd_notify_barrier`'s `BARRIER=1`) are closed at
  once: the sidecar keeps none, and closing is what releases a barrier's waiter.
- `WATCHDOG_USEC=` is only recorded and exposed; `0` is kept as 0 (systemd reads it as "no
  watchdog"). Whoever wires the listener may arm a heartbeat timeout from it.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.component import Adapter, Kind, Reading, StartupError
from sidecar.core.health import HealthState
from sidecar.unix_socket import SocketFileError, remove_stale_socket

logger = logging.getLogger("dynamo_health_sidecar")

# systemd's NOTIFY_BUFFER_MAX (PIPE_BUF): a longer datagram is malformed.
MAX_DATAGRAM = 4096
MAX_PID = 2**31 - 1
MAX_USEC = 2**64 - 1
SOCKET_MODE = 0o660
# Datagrams handled per wakeup; the reader is level-triggered, so the rest come next wakeup
# and a flooding sender cannot starve the probe servers that share the loop.
MAX_PER_WAKEUP = 256
# Room for one SCM_CREDENTIALS (pid, uid, gid) and a few passed descriptors (closed at once).
_CREDENTIALS = struct.Struct("3i")
_MAX_FDS = 16
ANCILLARY_SPACE = socket.CMSG_SPACE(_CREDENTIALS.size) + socket.CMSG_SPACE(
    _MAX_FDS * array.array("i").itemsize
)

KNOWN_KEYS = frozenset({"MAINPID", "STATUS", "READY", "STOPPING", "WATCHDOG", "WATCHDOG_USEC"})

_KEY = re.compile(r"[A-Z0-9_]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]{1,20}", re.ASCII)
_SHOWN = 40


class MalformedDatagram(ValueError):
    """A datagram that is not sd_notify's `KEY=VALUE` lines; nothing of it is applied."""


class NotifySocketError(StartupError):
    """The notify socket cannot be created at its path (in use, not a socket, no permission).

    `str(error)` is the whole message, for the one line a user sees; `errno` is kept.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


def parse_datagram(data: bytes) -> dict[str, str]:
    """Split one datagram into its assignments; empty lines are skipped, the last key wins."""
    if len(data) > MAX_DATAGRAM:
        raise MalformedDatagram(f"datagram over the {MAX_DATAGRAM}-byte limit")
    nul = data.find(b"\0")
    if nul >= 0:
        raise MalformedDatagram(f"NUL byte at offset {nul}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedDatagram(f"not UTF-8 at offset {exc.start}") from None
    assignments: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise MalformedDatagram(f"line {number} is not KEY=VALUE: {_shorten(line)!r}")
        if not _KEY.fullmatch(key):
            raise MalformedDatagram(
                f"line {number} has an invalid key {_shorten(key)!r}: "
                "keys are one or more of A-Z 0-9 _"
            )
        assignments[key] = value
    return assignments


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _decimal(value: str, limit: int) -> int | None:
    """A plain decimal integer from 0 to `limit`, or None."""
    if not _DECIMAL.fullmatch(value):
        return None
    number = int(value)
    return number if number <= limit else None


@dataclass(frozen=True)
class Outcome:
    """What one datagram did: the keys applied and ignored, in the order they were handled."""

    applied: tuple[str, ...]
    ignored: tuple[str, ...]
    pid: int | None
    status: str | None = None
    watchdog_usec: int | None = None


def apply(
    assignments: Mapping[str, str], state: HealthState, now: float, pid: int | None = None
) -> Outcome:
    """Turn one datagram's assignments into state-machine calls, attributed to `pid`.

    Order, whatever the datagram's: MAINPID, STATUS, READY, STOPPING, WATCHDOG, WATCHDOG_USEC.
    `READY=1` and `STOPPING=1` together leave the worker not ready (stopping comes later).
    """
    applied: list[str] = []
    ignored: list[str] = []
    status: str | None = None
    watchdog_usec: int | None = None

    def wants(key: str, value: str | None = None) -> bool:
        given = assignments.get(key)
        if given is None:
            return False
        if value is None or given == value:
            applied.append(key)
            return True
        ignored.append(key)
        return False

    if "MAINPID" in assignments:
        main_pid = _decimal(assignments["MAINPID"], MAX_PID)
        if main_pid is None or main_pid == 0:
            ignored.append("MAINPID")
        else:
            applied.append("MAINPID")
            pid = main_pid
    if wants("STATUS"):
        status = assignments["STATUS"]
        state.notify_status(status, now, pid)
    if wants("READY", "1"):
        state.notify_ready(now, pid)
    if wants("STOPPING", "1"):
        state.notify_stopping(now, pid)
    if wants("WATCHDOG", "1"):
        state.heartbeat(now, pid)
    if "WATCHDOG_USEC" in assignments:
        watchdog_usec = _decimal(assignments["WATCHDOG_USEC"], MAX_USEC)
        (ignored if watchdog_usec is None else applied).append("WATCHDOG_USEC")
    ignored.extend(key for key in assignments if key not in KNOWN_KEYS)
    return Outcome(tuple(applied), tuple(ignored), pid, status, watchdog_usec)


class NotifyListener(Adapter):
    """The sd_notify datagram socket: `start()` binds and listens, `close()` removes it.

    Counters for metrics: `received` (every datagram), `malformed` (rejected as a whole, or
    whose handling failed), `ignored_keys` (assignments that changed nothing).
    """

    def __init__(
        self, path: Path, state: HealthState, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.state = state
        self.clock = clock
        self.received = 0
        self.malformed = 0
        self.ignored_keys = 0
        # The latest valid WATCHDOG_USEC=, so that only a change is logged.
        self._watchdog_usec: int | None = None
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # A run of bad datagrams logs one warning; a good one re-arms it.
        self._failing = False

    # -- the socket ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket (mode 0660) and handle its datagrams on the running event loop."""
        if self._sock is not None:
            raise RuntimeError("the notify listener is already started")
        loop = asyncio.get_running_loop()
        sock = bind_notify_socket(self.path)
        try:
            info = os.stat(self.path)
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        self._sock, self._loop = sock, loop
        self._identity = (info.st_dev, info.st_ino)
        logger.info("listening for sd_notify datagrams on %s", self.path)

    def readings(self) -> Sequence[Reading]:
        return (
            Reading(
                Kind.COUNTER,
                "dynamo_sidecar_notify_datagrams",
                "sd_notify datagrams received.",
                lambda: self.received,
            ),
            Reading(
                Kind.COUNTER,
                "dynamo_sidecar_notify_malformed_datagrams",
                "sd_notify datagrams ignored because they were malformed.",
                lambda: self.malformed,
            ),
            Reading(
                Kind.COUNTER,
                "dynamo_sidecar_notify_ignored_assignments",
                "sd_notify assignments that changed nothing (keys the sidecar does not act on).",
                lambda: self.ignored_keys,
            ),
        )

    async def close(self) -> None:
        self.stop_listening()

    def stop_listening(self) -> None:
        """Stop listening, close the socket, and remove its file if it is still ours."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()

    def _on_readable(self) -> None:
        sock = self._sock
        for _ in range(MAX_PER_WAKEUP):
            if sock is None or sock.fileno() < 0:
                return
            try:
                data, ancdata, _, _ = sock.recvmsg(MAX_DATAGRAM + 1, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("cannot read the sd_notify socket %s: %s", self.path, exc)
                return
            # A datagram over the limit arrives cut to MAX_DATAGRAM + 1 bytes: still too long.
            self.handle(data, _take_ancillary(ancdata))

    # -- one datagram ----------------------------------------------------------------------

    def handle(self, data: bytes, sender: int | None = None) -> Outcome | None:
        """Parse and apply one datagram from process `sender`; None when it was malformed.

        Never raises: whatever goes wrong is counted as malformed and logged.
        """
        self.received += 1
        try:
            assignments = parse_datagram(data)
            outcome = apply(assignments, self.state, self.clock(), sender)
        except MalformedDatagram as exc:
            self._reject(sender, str(exc))
            return None
        except Exception as exc:
            self._reject(sender, f"handling it failed: {type(exc).__name__}: {exc}")
            logger.debug("sd_notify handling failed", exc_info=True)
            return None
        if self._failing:
            logger.info("sd_notify datagrams are well-formed again")
        self._failing = False
        self.ignored_keys += len(outcome.ignored)
        if outcome.ignored:
            logger.debug("sd_notify: ignored %s", ", ".join(outcome.ignored))
        usec = outcome.watchdog_usec
        if usec is not None and usec != self._watchdog_usec:
            asks = f"a watchdog of {usec / 1e6:g}s" if usec else "no watchdog"
            logger.info("the worker asks for %s (WATCHDOG_USEC=%d)", asks, usec)
            self._watchdog_usec = usec
        return outcome

    def _reject(self, sender: int | None, reason: str) -> None:
        self.malformed += 1
        if self._failing:
            logger.debug("ignoring a malformed sd_notify datagram: %s", reason)
            return
        self._failing = True
        origin = "" if sender is None else f" from pid {sender}"
        logger.warning(
            "ignoring a malformed sd_notify datagram%s: %s (further ones are counted until a "
            "well-formed one arrives)",
            origin,
            reason,
        )


def _take_ancillary(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The sender's pid from SCM_CREDENTIALS; any passed descriptors are closed."""
    sender: int | None = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDENTIALS.size:
            pid, _uid, _gid = _CREDENTIALS.unpack_from(payload)
            sender = pid if 0 < pid <= MAX_PID else None
        elif kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return sender


def bind_notify_socket(path: Path) -> socket.socket:
    """Create the datagram socket with mode 0660 and `SO_PASSCRED`, replacing a stale one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NotifySocketError(
            f"cannot create the notify socket's directory {path.parent}: {exc}", exc.errno
        ) from None
    try:
        remove_stale_socket(path, socket.SOCK_DGRAM)
    except SocketFileError as exc:
        raise NotifySocketError(str(exc), exc.errno) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        old_umask = os.umask(0o117)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, SOCKET_MODE)
    except OSError as exc:
        sock.close()
        raise NotifySocketError(
            f"cannot create the notify socket {path}: {exc}", exc.errno
        ) from None
    return sock
