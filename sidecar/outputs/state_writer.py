"""The state file kept up to date (docs/protocol.md section 9.1): restored at start, written
after every visible change with group commit, written a last time at the end.

An answered signal is durable: the socket API answers a change only once `saved()` says
the file holds it. The format itself is in `statefile.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sidecar.component import Adapter, Kind, NotSaved, Reading
from sidecar.core.health import HealthState
from sidecar.outputs import statefile

logger = logging.getLogger("dynamo_health_sidecar")

# A failed write is tried again after this, doubling up to the maximum.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0


class StateFileWriter:
    """Keeps the state file up to date, beside the event loop, with group commit.

    `saved()` returns once the file holds everything visible when it was called: every
    request that arrives while a write is in flight shares the next write, so answering
    only after the change is durable costs one write per burst, not one per request. A
    failed write is tried again with backoff even when nothing changes, so a disk that
    recovers while the worker is quiet does not leave a stale file; until one succeeds,
    `saved()` refuses at once.
    """

    def __init__(
        self, path: Path, state: HealthState, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.state = state
        self.wall_clock = wall_clock
        self.writes = 0
        self.failures = 0
        self._held = -1  # the state's version the file holds; none yet
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._changed = asyncio.Event()
        self._error: str | None = None
        self._closed = False
        state.on_change(self._changed.set)

    async def saved(self) -> None:
        """Wait until the file holds the state as it is now; `NotSaved` when it cannot."""
        if self._closed:
            raise NotSaved("the sidecar is stopping and takes no more changes")
        version = self.state.version
        if self._held >= version:
            return
        if self._error is not None:
            # Refused at once: waiting for the next try would stall the worker for nothing.
            raise NotSaved(self._error)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((version, waiter))
        self._changed.set()
        await waiter

    async def run(self, stop: asyncio.Event) -> None:
        """Write each change until `stop`; then write what is left once and close."""
        stopped = asyncio.ensure_future(stop.wait())
        retry = RETRY_FIRST_SECONDS
        try:
            while not stop.is_set():
                if self._error is None:
                    changed = asyncio.ensure_future(self._changed.wait())
                    await asyncio.wait({changed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    changed.cancel()
                else:
                    # Backing off: a full disk is not tried again at the rate of the signals.
                    await asyncio.wait({stopped}, timeout=retry)
                    retry = min(retry * 2, RETRY_MAX_SECONDS)
                if self._pending():
                    await self.write()
                if self._error is None:
                    retry = RETRY_FIRST_SECONDS
            if self._pending():
                await self.write()
        finally:
            stopped.cancel()
            self._close()

    def _pending(self) -> bool:
        return self._held < self.state.version or bool(self._waiters)

    async def write(self) -> None:
        """Write the state as it is now: the snapshot is taken on the loop, so it is one
        consistent state (immutable from then on), and encoded and written in a thread, so
        neither a large state nor a slow disk delays a probe."""
        self._changed.clear()
        version = self.state.version
        saved, written_at = self.state.save(), self.wall_clock()
        try:
            await asyncio.to_thread(statefile.encode_and_write, self.path, saved, written_at)
        except OSError as exc:
            self._failed(version, exc)
            return
        if self._error is not None:
            logger.info(
                "the state file %s is written again; changes are acknowledged again", self.path
            )
        self._error = None
        self._held = max(self._held, version)
        self.writes += 1
        self._settle(version, None)

    def _failed(self, version: int, exc: OSError) -> None:
        self.failures += 1
        if self._error is None:
            logger.warning(
                "cannot write the state file %s: %s; trying again with backoff, and changes "
                "are answered 503 until it is written",
                self.path,
                exc,
            )
        self._error = (
            f"the change is applied but the state file {self.path} cannot be written: "
            f"[Errno {exc.errno}] {exc.strerror}"
        )
        self._settle(version, NotSaved(self._error))

    def _settle(self, version: int, error: NotSaved | None) -> None:
        """Answer every waiter the attempt at `version` covered."""
        remaining = []
        for wanted, waiter in self._waiters:
            if wanted > version:
                remaining.append((wanted, waiter))
            elif not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        self._waiters = remaining

    def _close(self) -> None:
        self._closed = True
        reason = self._error or "the sidecar stopped before the state file was written"
        self._settle(self.state.version + 1, NotSaved(reason))


class StateFile(Adapter):
    """The state file as an adapter: restored at `start`, before any probe is answered, then
    written until `close`, which comes after the worker's socket and every input stopped, so
    the last write holds everything that was ever answered.

    `process_gone(pid)` says whether a saved worker's process is gone; None when the pod does
    not share its process namespace and pids cannot be checked.
    """

    def __init__(
        self,
        path: Path,
        state: HealthState,
        clock: Callable[[], float],
        process_gone: Callable[[int], bool] | None,
    ) -> None:
        self.path, self.state, self.clock = path, state, clock
        self.process_gone = process_gone
        self.writer = StateFileWriter(path, state)
        self._closing = asyncio.Event()

    def start(self) -> None:
        statefile.remove_leftovers(self.path)
        restore(self.state, self.path, self.clock(), self.process_gone)

    async def run(self, stopping: asyncio.Event) -> None:
        await self.writer.run(self._closing)

    def readings(self) -> Sequence[Reading]:
        return (
            Reading(
                Kind.COUNTER,
                "dynamo_sidecar_state_file_writes",
                "Writes of the state file.",
                lambda: self.writer.writes,
            ),
            Reading(
                Kind.COUNTER,
                "dynamo_sidecar_state_file_write_failures",
                "Writes of the state file that failed (each is tried again with backoff).",
                lambda: self.writer.failures,
            ),
        )

    async def close(self) -> None:
        self._closing.set()


def restore(
    state: HealthState, path: Path, now: float, process_gone: Callable[[int], bool] | None
) -> None:
    """Continue the worker's life from the state file, or start fresh when it can't be trusted:
    a saved live life whose process is gone is another worker life's file."""
    try:
        saved = statefile.read(path)
    except statefile.CorruptStateFile as exc:
        logger.warning("ignoring the state file %s: %s; starting fresh", path, exc)
        return
    if saved is None:
        return
    pid = saved.pid
    if process_gone is not None and saved.alive and pid is not None and process_gone(pid):
        logger.warning(
            "ignoring the state file %s: it is from another worker life (process %d is gone); "
            "starting fresh",
            path,
            pid,
        )
        return
    state.restore(saved, now)
