"""The deadlines that time alone reaches: a hung worker's heartbeat, a lease's expiry.

The state machine knows the deadlines; this loop only wakes up at the earliest one. A signal
or a renewal can only move a deadline later, so sleeping until an older one and asking again
is always correct; a change that may arm an earlier one (a first heartbeat, a new lease)
wakes the loop at once. With nothing armed it sleeps until such a change: no idle ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from sidecar.component import Adapter
from sidecar.core.health import HealthState


class DeadlineWatch(Adapter):
    """Ends a silent worker's life and drops expired leases, each at its moment."""

    def __init__(self, state: HealthState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock
        self._changed = asyncio.Event()
        state.on_change(self._changed.set)

    def step(self) -> float | None:
        """Apply what is due; return how long until the next deadline, None when none is armed."""
        now = self.clock()
        self.state.check_deadlines(now)
        deadline = self.state.next_deadline()
        return None if deadline is None else max(deadline - now, 0.0)

    async def run(self, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._changed.clear()
                delay = self.step()
                changed = asyncio.ensure_future(self._changed.wait())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait(
                        {changed, stopped}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                    )
                changed.cancel()
        finally:
            stopped.cancel()
