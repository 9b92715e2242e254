"""Repeated events, correlated as client-go's `EventCorrelator` does for the kubelet
(`tools/record/events_cache.go`; docs/protocol.md sections 7.4 and 7.5), pure: the times are
passed in.

An identical event raises `count` and `lastTimestamp` of the Event already there instead of
creating another; from the 10th distinct message of one reason and type within 10 minutes of
each other, they go into one "(combined from similar events): ..." Event; and one pod gets a
burst of 25 events, then one every 5 minutes (a token bucket). Like the kubelet's, the counts
go on rising while the spam filter holds events back, so the next one sent carries the true
count.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from sidecar.kube.reports import EventSpec

# client-go's EventCorrelator defaults (tools/record/events_cache.go).
LRU_CACHE_ENTRIES = 4096
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL_SECONDS = 600.0
SPAM_BURST = 25
SPAM_RATE = 1.0 / 300.0
COMBINED_PREFIX = "(combined from similar events): "


@dataclass(frozen=True)
class CorrelatedEvent:
    """An event after correlation: new (`count` 1) or a repeat of the Event named `name`."""

    name: str
    type: str
    reason: str
    message: str
    count: int
    first_timestamp: float
    last_timestamp: float

    @property
    def is_repeat(self) -> bool:
        return self.count > 1


@dataclass
class _Similar:
    messages: dict[str, None]
    last: float


@dataclass
class _Seen:
    name: str
    first_timestamp: float
    count: int


class TokenBucket:
    """golang.org/x/time/rate's limiter as client-go uses it: starts full, refills at `rate`."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None:
            elapsed = max(now - self.last, 0.0)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class EventCorrelator:
    """Counts identical events, combines similar ones, and filters a flood (see the module doc).

    Every event here is about one object (the pod) from one source, so the keys of client-go
    reduce to (type, reason, message) and (type, reason); the spam filter is one bucket.
    `now` (the sender's clock, as client-go's correlator reads its clock in the goroutine that
    writes to the API) measures intervals; `wall` (when the event happened) stamps the Event
    and names it.
    """

    def __init__(
        self,
        object_name: str,
        *,
        max_similar: int = AGGREGATE_MAX_EVENTS,
        interval: float = AGGREGATE_INTERVAL_SECONDS,
        burst: int = SPAM_BURST,
        rate: float = SPAM_RATE,
        cache_size: int = LRU_CACHE_ENTRIES,
    ) -> None:
        # Event names are `<object>.<hex nanoseconds>`, as the kubelet's; 253 characters at most.
        self.prefix = object_name[: 253 - 17]
        self.max_similar = max_similar
        self.interval = interval
        self.cache_size = cache_size
        self.spam = TokenBucket(burst, rate)
        self._similar: collections.OrderedDict[tuple[str, str], _Similar] = (
            collections.OrderedDict()
        )
        self._seen: collections.OrderedDict[tuple[str, ...], _Seen] = collections.OrderedDict()
        self._last_nanos = 0

    def correlate(self, event: EventSpec, now: float, wall: float) -> CorrelatedEvent | None:
        """The event to send, or None when the spam filter holds it back."""
        similar_key = (event.type, event.reason)
        similar = self._similar.get(similar_key)
        if similar is None or now - similar.last > self.interval:
            similar = _Similar({}, now)
        similar.messages[event.message] = None
        similar.last = now
        self._remember(self._similar, similar_key, similar)
        message = event.message
        key: tuple[str, ...] = ("event", event.type, event.reason, event.message)
        if len(similar.messages) >= self.max_similar:
            # Keep the set below the limit (client-go pops any; the oldest here, for tests).
            del similar.messages[next(iter(similar.messages))]
            key = ("combined", event.type, event.reason)
            message = COMBINED_PREFIX + event.message
        seen = self._seen.get(key)
        if seen is None:
            seen = _Seen(self._new_name(wall), wall, 0)
        seen.count += 1
        self._remember(self._seen, key, seen)
        if not self.spam.allow(now):
            return None
        return CorrelatedEvent(
            seen.name, event.type, event.reason, message, seen.count, seen.first_timestamp, wall
        )

    def _new_name(self, wall: float) -> str:
        nanos = max(int(wall * 1e9), self._last_nanos + 1)
        self._last_nanos = nanos
        return f"{self.prefix}.{nanos:x}"

    def _remember(self, cache: collections.OrderedDict[Any, Any], key: Any, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
