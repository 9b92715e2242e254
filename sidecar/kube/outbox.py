"""The reports waiting for the Kubernetes API: all that the event loop and the sender thread
share, under one lock (docs/protocol.md sections 7.5 and 9.6).

The loop only puts in: an event's occurrence, or the newest desired condition, which replaces
one not sent yet. The sender takes out one report at a time and puts back what failed and may
work later. Neither holds the lock during anything slow: the sender correlates, sends and
sleeps outside it, so the loop never waits longer than a few dictionary operations of the
other thread. Time is not read here: every interval is the sender's.

Waking: the loop wakes the sender only when it gives work to an empty outbox, which is when
the sender waits for work; a sender busy with a call or waiting out a backoff finds the work
when it is done, and is not woken to compete with the loop for the GIL. A request to stop
always wakes it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.kube.reports import ConditionSpec, EventSpec

# Reports waiting for the API; the oldest is dropped past this.
QUEUE_SIZE = 128


@dataclass
class EventWork:
    """One event waiting to be sent.

    The loop counts the occurrences the sender has not correlated yet, with the wall times of
    the first and the last of them: identical events take one place, and a flood of them
    costs no memory. `body` is the Event an earlier correlation made, kept when an attempt
    failed and the event was put back; `repeat` says whether that Event may exist already
    (patch it) or not (create it).
    """

    spec: EventSpec
    occurrences: int = 0
    first_wall: float = 0.0
    last_wall: float = 0.0
    body: dict[str, Any] | None = None
    repeat: bool = False
    attempts: int = 0

    def occurred(self, wall: float) -> None:
        if self.occurrences == 0:
            self.first_wall = wall
        self.last_wall = wall
        self.occurrences += 1


@dataclass(frozen=True)
class ConditionWork:
    """The condition to patch, and when (wall clock) its status took its present value."""

    spec: ConditionSpec
    changed_at: float


Work = EventWork | ConditionWork


@dataclass(frozen=True)
class StopRequest:
    """Flush for at most `seconds`, then call `tell` (from the sender's thread)."""

    seconds: float
    tell: Callable[[], None]


class Outbox:
    """Events in order, oldest first, at most `size` of them, and one condition."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        if size < 1:
            raise ValueError("the outbox must hold at least one report")
        self._size = size
        # Reports lost to a full outbox, read at scrape time; changed under the lock only.
        self.dropped = 0
        # Its lock guards every attribute below.
        self._changed = threading.Condition()
        self._events: collections.OrderedDict[EventSpec, EventWork] = collections.OrderedDict()
        self._condition: ConditionWork | None = None
        # The sender holds a report it took (in a call to the API, or just before one).
        self._sending = False
        self._stop: StopRequest | None = None

    # -- the event loop's side -------------------------------------------------------------

    def add_event(self, spec: EventSpec, wall: float) -> None:
        """Queue an occurrence: counted in the place of an identical event not sent yet, else
        appended, the oldest report dropped when the outbox is full."""
        with self._changed:
            idle = self._idle()
            work = self._events.get(spec)
            if work is None:
                if len(self._events) >= self._size:
                    self._events.popitem(last=False)
                    self.dropped += 1
                work = self._events[spec] = EventWork(spec)
            work.occurred(wall)
            if idle:
                self._changed.notify()

    def want_condition(self, spec: ConditionSpec, changed_at: float) -> None:
        """Only the newest condition matters: it replaces one not sent yet."""
        with self._changed:
            idle = self._idle()
            self._condition = ConditionWork(spec, changed_at)
            if idle:
                self._changed.notify()

    def stop(self, seconds: float, tell: Callable[[], None]) -> None:
        with self._changed:
            self._stop = StopRequest(max(seconds, 0.0), tell)
            self._changed.notify()

    def waiting(self) -> int:
        """Reports waiting to be sent: events, and the condition when it has changed."""
        with self._changed:
            return len(self._events) + (self._condition is not None)

    def unsent(self) -> int:
        """What waits, and the report the sender holds: what is lost if the process ends now."""
        with self._changed:
            return len(self._events) + (self._condition is not None) + self._sending

    # -- the sender's side -----------------------------------------------------------------

    def take(self) -> Work | None:
        """The next report to send, the condition first: it is what a readiness gate waits for.
        The sender holds it until `finished`."""
        with self._changed:
            work: Work | None = None
            if self._condition is not None:
                work, self._condition = self._condition, None
            elif self._events:
                work = self._events.popitem(last=False)[1]
            self._sending = work is not None
            return work

    def finished(self, work: Work, retry: bool) -> bool:
        """The sender is done with `work`; with `retry`, put it back in front. Returns whether it
        will still be sent (by itself, or carried by a newer report)."""
        with self._changed:
            self._sending = False
            if not retry:
                return False
            if isinstance(work, ConditionWork):
                if self._condition is None:  # else a newer condition replaced it
                    self._condition = work
                return True
            if work.spec in self._events:
                return True  # an identical event came meanwhile: its newer count carries this one
            if len(self._events) >= self._size:
                self.dropped += 1  # the outbox filled meanwhile: this is its oldest report
                return False
            self._events[work.spec] = work
            self._events.move_to_end(work.spec, last=False)
            return True

    def stop_request(self) -> StopRequest | None:
        with self._changed:
            return self._stop

    def pause(self, seconds: float | None, stopping: bool) -> None:
        """Sleep for `seconds` (None: until there is work), less when the loop gives work to an
        empty outbox or asks to stop. `stopping`: the sender knows already, so only work or the
        time ends the pause. Checked and slept under the lock, so no wakeup is lost."""
        with self._changed:
            if self._stop is not None and not stopping:
                return
            if seconds is None and not self._idle():
                return  # work came since the sender looked
            self._changed.wait(seconds)

    def _idle(self) -> bool:
        return not self._events and self._condition is None
