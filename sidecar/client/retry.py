"""When to try a call again, and how long to wait first (docs/protocol.md, section 4.6).

The decision (`Retry.wait`) is pure, its randomness passed in; `call` and `acall` are the
two loops that apply it, sleeping as their caller's world does.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import SidecarUnavailable

T = TypeVar("T")

# Named explicitly: workers and tests filter the client's logs by this one name.
logger = logging.getLogger("sidecar.client")


@dataclass(frozen=True)
class Retry:
    """How often to try again when the sidecar is unavailable; the worker chooses.

    Only `SidecarUnavailable` is retried, never a refusal: a 4xx (or a 500) will not change.
    That includes an answer cut short, whose request may have taken effect before the sidecar
    died, and a 503 for a change applied but not yet saved. Both are safe to retry because
    every call of the clients is idempotent, doing it twice ends in the state doing it once
    does: an endpoint set to what it already is, a heartbeat, a read, an instance registered
    again (answered 200 instead of 201, with the same body) or removed again (see
    `SidecarClient.remove_instances`). A timeout after the request was sent was retried
    on the same grounds before.

    The wait before retry `n` (1-based) is uniform in `[0, min(max_backoff, backoff *
    2**(n-1))]` ("full jitter"), so many workers restarting together do not hit the sidecar
    in step. After a 503 with `Retry-After`, the wait is at least that many seconds, but never
    more than `max_backoff`: the sidecar's hint raises the floor, the worker's bound on any
    one wait stays the ceiling. The default makes one attempt.
    """

    attempts: int = 1
    backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    @classmethod
    def patient(cls) -> Retry:
        """For a worker that may start before its sidecar: 30 attempts over ~25 s (51 s at most)."""
        return cls(attempts=30, backoff=0.1, max_backoff=2.0)

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(max(retry - 1, 0), 62))
        return ceiling * rng()

    def wait(
        self, attempt: int, exc: SidecarUnavailable, rng: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` before the next one."""
        wait = self.delay(attempt, rng)
        if exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, self.max_backoff))
        return wait

    def call(self, operation: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
        """Run `operation`, retrying it while the sidecar is unavailable."""
        for attempt in range(1, self.attempts):
            try:
                return operation()
            except SidecarUnavailable as exc:
                sleep(self._note_failure(attempt, exc))
        return operation()

    async def acall(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`call` for coroutines: sleeps with `asyncio.sleep`."""
        for attempt in range(1, self.attempts):
            try:
                return await operation()
            except SidecarUnavailable as exc:
                await asyncio.sleep(self._note_failure(attempt, exc))
        return await operation()

    def _note_failure(self, attempt: int, exc: SidecarUnavailable) -> float:
        wait = self.wait(attempt, exc)
        logger.debug("attempt %d of %d: %s; retrying in %.3fs", attempt, self.attempts, exc, wait)
        return wait


# The clients' default, and each heartbeat's: there the next beat is the retry.
ONCE = Retry()
