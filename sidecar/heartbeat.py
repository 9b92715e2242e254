"""The heartbeat deadline (`DYN_SIDECAR_HEARTBEAT_TIMEOUT`): a hung worker's life ends.

The state machine knows the deadline; this loop only wakes up at it. A signal can only move
the deadline later, so sleeping until an older one and asking again is always correct.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sidecar.health import HealthState

# How often to look while no deadline is armed (before the first heartbeat of a life).
IDLE_SECONDS = 1.0


class HeartbeatWatch:
    """Ends the worker's life when it has been silent past its deadline."""

    def __init__(self, state: HealthState, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.clock = clock

    def step(self) -> float:
        """Check the deadline once; return how long to sleep before the next check."""
        now = self.clock()
        self.state.check_heartbeat(now)
        deadline = self.state.heartbeat_deadline()
        if deadline is None:
            return IDLE_SECONDS
        return max(deadline - now, 0.0)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            delay = self.step()
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                continue
