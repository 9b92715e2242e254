"""The process watch (`DYN_SIDECAR_WATCH_PROCESS`): notice at once when the worker's process exits.

In a pod with `shareProcessNamespace: true` the sidecar sees the worker's processes. The watch
finds the worker by a regular expression searched in its command line (the arguments joined by
spaces), tells the state when it appears (`process_started`) and when it exits
(`process_exited`), then looks for the next one.

Which process is the worker:
- every process whose command line matches, except zombies, the sidecar itself, its ancestors
  (a shell that started the sidecar with the pattern as a flag) and its descendants that are
  copies of it (forks share the sidecar's command line, pattern included). A child that runs
  another program (as `demo` starts its simulated worker) is watched like any other process;
- of several, the oldest (lowest start time, then lowest pid): the worker's main process, not
  the children it forked, which share its command line.

A process is identified by its pid and its start time, so a pid reused by a later process is a
new worker. The start time is read as the kernel keeps it, in clock ticks after boot: unlike
psutil's `create_time()`, it does not move when the wall clock is set, so a clock step cannot
look like a restart.

Noticing the exit: on Linux a pidfd (`os.pidfd_open`, which works for processes that are not
our children) becomes readable the moment the process exits, zombie or not; `run` hands it to
the event loop (`add_reader`, asyncio's own loops and uvloop alike), so the state hears of the
exit within milliseconds, and polls only as a slow safety net. Where pidfd_open is missing or
refused (old kernels, seccomp profiles answering ENOSYS or EPERM) the watch polls the process
every `scan_interval` instead.

Everything here runs on the event loop's thread. A scan reads two small files per process in
`/proc` (a few milliseconds for a hundred processes) and runs only while no worker is known.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]

from sidecar.core.health import HealthState

logger = logging.getLogger("dynamo_health_sidecar")

# How often to look for the worker while none is known (and to poll it without a pidfd).
SCAN_SECONDS = 0.5
# How often to check a worker whose exit the pidfd will announce anyway.
SAFETY_SECONDS = 5.0
# How much of the worker's command line `snapshot` reports.
CMDLINE_CHARS = 200
# The shortest CPU sample: snapshots closer together than this share one measurement (a shorter
# one is mostly noise, counted in clock ticks of 10 ms), so that `status` and each gauge of one
# scrape may all ask.
CPU_SAMPLE_SECONDS = 0.1

# pidfd_open refused for every process, not just this one: stop trying.
_PIDFD_REFUSED = (errno.ENOSYS, errno.EPERM, errno.EACCES)
_SCAN_ATTRS = ["pid", "ppid", "cmdline", "status"]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, order=True)
class Identity:
    """One process over time: its pid, and when it started (seconds after boot).

    Ordered by start time, then pid: the smaller of two is the older process.
    """

    started: float
    pid: int


@dataclass(frozen=True)
class ProcessInfo:
    """The watched worker process as `status` and `/metrics` show it."""

    pid: int
    # Percent of one CPU since the previous snapshot (psutil's `cpu_percent(None)`): above 100
    # for a process busy on several CPUs, 0.0 on the first snapshot of a process.
    cpu_percent: float
    rss_bytes: int
    # Seconds since the epoch, for display.
    create_time: float
    # The command line, shortened to CMDLINE_CHARS.
    cmdline: str


def identify(pid: int) -> Identity | None:
    """The identity of the running process with this pid; None when it is gone or a zombie."""
    try:
        if psutil.LINUX:
            with open(f"{psutil.PROCFS_PATH}/{pid}/stat", "rb") as stat:
                data = stat.read()
            # The name (field 2) is in parentheses and may hold anything, spaces included.
            fields = data[data.rindex(b")") + 2 :].split()
            # fields[0] is the state (field 3), fields[19] the start time in ticks (field 22).
            if fields[0] in (b"Z", b"X", b"x"):
                return None
            return Identity(int(fields[19]) / _CLOCK_TICKS, pid)
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return Identity(float(process.create_time()), pid)
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _shorten(cmdline: str) -> str:
    if len(cmdline) <= CMDLINE_CHARS:
        return cmdline
    return cmdline[: CMDLINE_CHARS - 3] + "..."


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(eq=False)
class _Watched:
    identity: Identity
    process: Any  # psutil.Process, kept for cpu_percent's previous sample
    cmdline: str
    pidfd: int | None
    # Whether the event loop is reading the pidfd.
    reading: bool = False
    # The last snapshot and when it was taken.
    last: tuple[float, ProcessInfo] | None = None


class ProcessWatch:
    """Finds the worker's process by its command line and reports its start and exit."""

    def __init__(
        self,
        pattern: re.Pattern[str],
        state: HealthState,
        clock: Callable[[], float] = time.monotonic,
        scan_interval: float = SCAN_SECONDS,
        *,
        use_pidfd: bool = True,
        safety_interval: float = SAFETY_SECONDS,
    ) -> None:
        self.pattern = pattern
        self.state = state
        self.clock = clock
        self.scan_interval = scan_interval
        self.safety_interval = safety_interval
        self.use_pidfd = use_pidfd
        # Set while no worker process is known: at first, and from its exit to the next one.
        self.absent = asyncio.Event()
        self.absent.set()
        self._current: _Watched | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._last_warning: str | None = None

    # -- reading -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of the worker process being watched, if any."""
        return None if self._current is None else self._current.identity.pid

    @property
    def event_driven(self) -> bool:
        """Whether the event loop announces the worker's exit (a pidfd) rather than a poll."""
        return self._current is not None and self._current.reading

    def snapshot(self) -> ProcessInfo | None:
        """The watched worker's pid, CPU and memory; None when no live worker is known.

        Reads a few small files in /proc and never raises. The CPU percentage covers the time
        since the previous snapshot; one taken within CPU_SAMPLE_SECONDS of the previous one
        is that one again.
        """
        watched = self._current
        if watched is None:
            return None
        try:
            if not self._running(watched):
                return None
            now = self.clock()
            if watched.last is not None and now - watched.last[0] < CPU_SAMPLE_SECONDS:
                return watched.last[1]
            process = watched.process
            with process.oneshot():
                cpu = float(process.cpu_percent(None))
                rss = int(process.memory_info().rss)
                create_time = float(process.create_time())
            info = ProcessInfo(watched.identity.pid, cpu, rss, create_time, watched.cmdline)
            watched.last = (now, info)
        except Exception:  # the process vanished, or psutil failed: nothing to report
            return None
        return info

    # -- watching --------------------------------------------------------------------------

    def step(self, now: float | None = None) -> None:
        """Check the watched process once, or look for one; report what changed to the state."""
        now = self.clock() if now is None else now
        watched = self._current
        if watched is not None:
            if self._running(watched):
                return
            self._exited(watched, now)
        found = self._find()
        if found is not None:
            self._begin(found, now)

    async def run(self, stop: asyncio.Event) -> None:
        """Watch until `stop` is set: scan while no worker is known, then wait for its exit."""
        self._loop = asyncio.get_running_loop()
        if self._current is not None:
            self._attach(self._current)  # found by a `step` before the loop ran
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                self._guarded_step()
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait(
                    {stopped, woken}, timeout=self._delay(), return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
        finally:
            stopped.cancel()
            self.close()

    def close(self) -> None:
        """Stop watching and close the pidfd; the worker's life is left as it is."""
        watched, self._current = self._current, None
        if watched is not None:
            self._release(watched)
        self.absent.set()
        self._loop = None

    # -- internals -------------------------------------------------------------------------

    def _guarded_step(self) -> None:
        try:
            self.step()
        except Exception as exc:
            self._warn(f"the process watch failed and keeps trying: {exc!r}")
        else:
            self._last_warning = None

    def _warn(self, message: str) -> None:
        """Log a problem once, not on every scan while it lasts."""
        if message != self._last_warning:
            logger.warning(message)
            self._last_warning = message
        else:
            logger.debug(message)

    def _delay(self) -> float:
        watched = self._current
        if watched is not None and watched.reading:
            return self.safety_interval
        return self.scan_interval

    def _running(self, watched: _Watched) -> bool:
        if watched.pidfd is not None:
            # Exact: the pidfd refers to this very process, whatever happens to its pid.
            return not _readable(watched.pidfd)
        return identify(watched.identity.pid) == watched.identity

    def _find(self) -> tuple[Identity, str] | None:
        """The oldest matching process that is not the sidecar or one of its copies."""
        me = os.getpid()
        parents: dict[int, int] = {}
        cmdlines: dict[int, str] = {}
        matches: list[int] = []
        for process in psutil.process_iter(_SCAN_ATTRS):
            info = process.info
            pid = int(info["pid"])
            parents[pid] = int(info["ppid"] or 0)
            arguments = info["cmdline"]
            if not arguments or info["status"] == psutil.STATUS_ZOMBIE:
                continue  # kernel threads, zombies, and what we may not read
            cmdline = " ".join(arguments)
            cmdlines[pid] = cmdline
            if self.pattern.search(cmdline):
                matches.append(pid)
        if not matches:
            return None
        excluded = _ancestors(me, parents) | _copies(me, parents, cmdlines)
        candidates = [
            identity
            for pid in matches
            if pid not in excluded and (identity := identify(pid)) is not None
        ]
        if not candidates:
            return None
        oldest = min(candidates)
        return oldest, cmdlines[oldest.pid]

    def _begin(self, found: tuple[Identity, str], now: float) -> None:
        identity, cmdline = found
        pid = identity.pid
        pidfd = self._open_pidfd(pid)
        # Check after opening: the pidfd then surely refers to the process we found.
        if identify(pid) != identity:
            if pidfd is not None:
                os.close(pidfd)
            return  # gone already; the next scan looks again
        try:
            process = psutil.Process(pid)
            process.cpu_percent(None)  # the first sample, so the first snapshot means something
        except psutil.Error:
            if pidfd is not None:
                os.close(pidfd)
            return
        watched = _Watched(identity, process, _shorten(cmdline), pidfd)
        self._current = watched
        self.absent.clear()
        self._attach(watched)
        how = (
            "a pidfd announces its exit"
            if pidfd is not None
            else f"polled every {self.scan_interval:g}s"
        )
        logger.info(
            "watching worker process %d (%s); %s",
            pid,
            watched.cmdline,
            how,
            extra={"fields": {"event": "process_found", "pid": pid, "cmdline": watched.cmdline}},
        )
        self.state.process_started(pid, now)

    def _exited(self, watched: _Watched, now: float) -> None:
        if self._current is not watched:
            return
        self._current = None
        self._release(watched)
        self.absent.set()
        pid = watched.identity.pid
        logger.info(
            "worker process %d exited",
            pid,
            extra={"fields": {"event": "process_exited", "pid": pid}},
        )
        self.state.process_exited(pid, now)

    def _open_pidfd(self, pid: int) -> int | None:
        if not self.use_pidfd:
            return None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            self.use_pidfd = False
            logger.info("pidfd_open is not available here; polling the worker process")
            return None
        try:
            return int(pidfd_open(pid))
        except ProcessLookupError:
            return None  # gone already: found out by the check that follows
        except OSError as exc:
            if exc.errno in _PIDFD_REFUSED:
                self.use_pidfd = False
            self._warn(
                f"cannot watch process {pid} with pidfd_open ({exc.strerror or exc}); "
                f"polling it every {self.scan_interval:g}s instead"
            )
            return None

    def _attach(self, watched: _Watched) -> None:
        loop = self._loop
        if loop is None or watched.pidfd is None or watched.reading:
            return
        try:
            loop.add_reader(watched.pidfd, self._on_readable, watched)
        except (NotImplementedError, OSError, RuntimeError, ValueError) as exc:
            self._warn(
                f"the event loop cannot wait on a pidfd ({exc!r}); "
                f"polling the worker process every {self.scan_interval:g}s instead"
            )
            return
        watched.reading = True

    def _on_readable(self, watched: _Watched) -> None:
        """The event loop's callback: the watched process has exited."""
        try:
            if self._current is watched:
                self._exited(watched, self.clock())
            else:
                self._release(watched)
        except Exception as exc:
            self._warn(f"the process watch failed and keeps trying: {exc!r}")
        finally:
            self._wake.set()  # look for the next worker at once

    def _release(self, watched: _Watched) -> None:
        pidfd, watched.pidfd = watched.pidfd, None
        if pidfd is None:
            return
        if watched.reading:
            watched.reading = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(pidfd)
        os.close(pidfd)


def _ancestors(pid: int, parents: dict[int, int]) -> set[int]:
    """The process itself and its parent chain."""
    chain: set[int] = set()
    while pid and pid not in chain:
        chain.add(pid)
        pid = parents.get(pid, 0)
    return chain


def _copies(pid: int, parents: dict[int, int], cmdlines: dict[int, str]) -> set[int]:
    """The descendants of a process that still run its command line (its forks)."""
    own = cmdlines.get(pid)
    if own is None:
        return set()
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    copies: set[int] = set()
    seen = {pid}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        if cmdlines.get(child) == own:
            copies.add(child)
        todo.extend(children.get(child, []))
    return copies
