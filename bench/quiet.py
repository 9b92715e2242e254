"""Other processes on a shared machine: how much CPU they take during each phase (shown
under the table, since they skew the figures), and an optional wait for them to quiet
down before measuring (`--wait-quiet`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import procfs
from fleet import Fleet
from progress import log

QUIET_SHARE = 0.10  # other processes using more of the machine than this: noisy figures


class Quiet:
    """The background share of the machine per phase, and the quiet gate."""

    def __init__(self, fleet: Fleet, wait_quiet: float = 0.0) -> None:
        self.fleet = fleet
        self.wait_quiet = wait_quiet
        self.background: dict[str, float] = {}
        # Seconds spent waiting for quiet, and others' share x those seconds: left out of
        # the phase's share, which is about the time spent measuring.
        self._gated = [0.0, 0.0]

    def our_cpu_seconds(self) -> float:
        """CPU of the bench, every load tool it waited for, and every server running."""
        return procfs.own_cpu_seconds() + sum(procfs.cpu_seconds(p.pid) for p in self.fleet.running)

    def background_share(self, seconds: float = 1.0) -> float:
        """The share of the machine's CPU other processes use, sampled over `seconds`
        (time spent here is left out of the phase's share)."""
        busy, ours = procfs.machine_busy_seconds(), self.our_cpu_seconds()
        began = time.monotonic()
        time.sleep(seconds)
        share = self._others(busy, ours, began)
        wall = time.monotonic() - began
        self._gated[0] += wall
        self._gated[1] += share * wall
        return share

    def _others(self, busy: float, ours: float, began: float) -> float:
        """Others' share of every CPU since `began`: the machine's busy time less ours."""
        wall = time.monotonic() - began
        others = (procfs.machine_busy_seconds() - busy) - (self.our_cpu_seconds() - ours)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))

    def gate(self, name: str) -> None:
        """With --wait-quiet: wait (bounded) until other processes leave the machine."""
        if self.wait_quiet <= 0:
            return
        deadline = time.monotonic() + self.wait_quiet
        waited = False
        while (share := self.background_share(0.5)) > QUIET_SHARE:
            if time.monotonic() > deadline:
                log(f"{name}: other processes still use {share:.0%}; measuring anyway")
                return
            if not waited:
                log(f"{name}: waiting for a quieter machine (others use {share:.0%})")
                waited = True
        if waited:
            log(f"{name}: quiet enough ({share:.0%}); measuring")

    def phase(self, name: str, run: Callable[[], None]) -> None:
        """Run one group of measurements; note how busy the rest of the machine was."""
        self.gate(name)
        busy, ours = procfs.machine_busy_seconds(), self.our_cpu_seconds()
        began = time.monotonic()
        gated_before = list(self._gated)
        run()
        wall = time.monotonic() - began
        share = self._others(busy, ours, began)
        gate_wall = self._gated[0] - gated_before[0]
        gate_share_seconds = self._gated[1] - gated_before[1]
        if wall - gate_wall > 1.0:
            share = max(0.0, share * wall - gate_share_seconds) / (wall - gate_wall)
        self.background[name] = share
        if share > QUIET_SHARE:
            log(f"{name}: other processes used {share:.0%} of the machine meanwhile")
