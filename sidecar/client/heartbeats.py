"""The loops that send heartbeats (or lease renewals): a thread's and an asyncio task's.

A worker whose heartbeats stop is restarted as hung (docs/protocol.md, section 6.4), so both
loops count a failure and go on rather than raise. They only schedule: what a beat sends is a
callable of the client that started them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

# Named explicitly: workers and tests filter the client's logs by this one name.
logger = logging.getLogger("sidecar.client")


def next_beat(previous: float, interval: float, now: float) -> float:
    """When the beat after the one due at `previous` is due, on `now`'s clock.

    Scheduled from a fixed start, so a slow beat does not push every later one back; a beat
    that took longer than `interval` is followed at once, not by a burst to catch up.
    """
    return max(previous + interval, now)


class HeartbeatStats:
    """What a heartbeat loop has done, for the worker's logs and metrics."""

    def __init__(self, interval: float) -> None:
        if not interval > 0:
            raise ValueError(f"the heartbeat interval must be positive, not {interval!r}")
        self.interval = interval
        self.sent = 0
        self.failures = 0
        self.last_error: Exception | None = None

    def _succeeded(self) -> None:
        self.sent += 1

    def _failed(self, exc: Exception) -> None:
        # Debug only: a sidecar that restarts makes a few beats fail, and that is fine.
        self.failures += 1
        self.last_error = exc
        logger.debug("heartbeat failed (%d so far): %s", self.failures, exc, exc_info=exc)


class Heartbeats(HeartbeatStats):
    """A daemon thread that sends heartbeats on a fixed schedule until stopped.

    A failure is counted and logged, never raised: the loop keeps going, because a worker
    whose heartbeats stopped for good would be restarted as hung.
    """

    def __init__(self, send: Callable[[], object], interval: float) -> None:
        super().__init__(interval)
        self._send = send
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sidecar-heartbeats", daemon=True)

    def start(self) -> Heartbeats:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop sending; waits for a heartbeat in flight (at most the client's timeout)."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Heartbeats:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stopping.is_set():
            self._beat()
            due = next_beat(due, self.interval, time.monotonic())
            self._stopping.wait(due - time.monotonic())

    def _beat(self) -> None:
        try:
            self._send()
        except Exception as exc:
            self._failed(exc)
        else:
            self._succeeded()


class AsyncHeartbeats(HeartbeatStats):
    """A task that sends heartbeats until `await stop()`; failures are counted, not raised."""

    def __init__(self, send: Callable[[], Awaitable[object]], interval: float) -> None:
        super().__init__(interval)
        self._send = send
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        # wait() rather than await: the task's own cancellation is expected, the caller's is not.
        await asyncio.wait([self._task])

    async def __aenter__(self) -> AsyncHeartbeats:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self._beat()
            due = next_beat(due, self.interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _beat(self) -> None:
        try:
            await self._send()
        except Exception as exc:
            self._failed(exc)
        else:
            self._succeeded()
