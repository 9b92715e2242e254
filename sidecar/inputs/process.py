"""The process watch (`DYN_SIDECAR_WATCH_PROCESS`): notice at once when the worker's process exits.

In a pod with `shareProcessNamespace: true` the sidecar sees the worker's processes. The watch
finds the worker by a regular expression searched in its command line (the arguments joined by
spaces), tells the state when it appears (`process_started`) and when it exits
(`process_exited`), then looks for the next one.

Which process is the worker, and how a process is told from a later one with its pid, is
`process_table.py`'s.

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
import dataclasses
import errno
import logging
import os
import re
import select
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil  # type: ignore[import-untyped]

from sidecar.component import Adapter, Kind, Reading
from sidecar.core.health import HealthState
from sidecar.inputs import process_table

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
    identity: process_table.Identity
    process: Any  # psutil.Process, kept for cpu_percent's previous sample
    cmdline: str
    pidfd: int | None
    # Whether the event loop is reading the pidfd.
    reading: bool = False
    # The last snapshot and when it was taken.
    last: tuple[float, ProcessInfo] | None = None


class ProcessWatch(Adapter):
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
        found = process_table.find_oldest(self.pattern)
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
            self.close_now()

    def readings(self) -> Sequence[Reading]:
        def read(field: str) -> float | None:
            info = self.snapshot()
            return None if info is None else float(getattr(info, field))

        return (
            Reading(
                Kind.GAUGE,
                "dynamo_sidecar_worker_pid",
                "The watched worker's pid.",
                partial(read, "pid"),
            ),
            Reading(
                Kind.GAUGE,
                "dynamo_sidecar_worker_cpu_percent",
                "The watched worker's CPU use, in percent of one core.",
                partial(read, "cpu_percent"),
            ),
            Reading(
                Kind.GAUGE,
                "dynamo_sidecar_worker_resident_memory_bytes",
                "The watched worker's resident memory.",
                partial(read, "rss_bytes"),
            ),
        )

    def view(self) -> Mapping[str, object]:
        info = self.snapshot()
        return {"process": None if info is None else dataclasses.asdict(info)}

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
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
        return process_table.identify(watched.identity.pid) == watched.identity

    def _begin(self, found: tuple[process_table.Identity, str], now: float) -> None:
        identity, cmdline = found
        pid = identity.pid
        pidfd = self._open_pidfd(pid)
        # Check after opening: the pidfd then surely refers to the process we found.
        if process_table.identify(pid) != identity:
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
