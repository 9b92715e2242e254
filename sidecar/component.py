"""The one shape of every adapter, so that `serve` runs them all alike and knows none of them.

An adapter (an input that tells the core about the worker, an output that reads it, a
server) is built from the settings, the state and the clock, and then lives through four
steps that `serve` takes for every adapter in the same order:

1. `start()`: bind, open or restore what it needs, before any probe is answered; a reason
   it cannot is a `StartupError` with the line the user sees. Adapters are started in the
   order they are built and closed in reverse, so whatever started after another is gone
   before it.
2. `run(stopping)`: its loop, as a task beside the others, until `stopping` is set. An adapter
   with nothing to do returns at once; one whose loop must not end (a server) raises
   `AdapterStopped` when it ends anyway, and the sidecar shuts down with exit code 1.
3. `readings()` and `view()`, at any time: its metrics, read at scrape time, and its part of
   `GET /v1/worker` (top-level keys of that answer).
4. `close()`: stop and release, after `stopping` was set and every adapter built after it was
   closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum


class StartupError(Exception):
    """The sidecar cannot start for a reason outside its settings (a port in use, say)."""


class NotSaved(Exception):
    """A change is applied but the state file does not hold it yet; `str()` says why. The
    worker's socket answers 503 for it: the state file's adapter raises it, the socket's
    routes wait for it, and neither knows the other."""


class AdapterStopped(Exception):
    """A loop that runs for the sidecar's whole life ended on its own."""


class Kind(Enum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Reading:
    """One metric of an adapter; `read` is called at scrape time (None: no sample)."""

    kind: Kind
    name: str
    documentation: str
    read: Callable[[], float | None]


class Adapter:
    """An adapter with nothing to start, run, show or close; each overrides what it has."""

    def start(self) -> None:
        return None

    async def run(self, stopping: asyncio.Event) -> None:
        return None

    def readings(self) -> Sequence[Reading]:
        return ()

    def view(self) -> Mapping[str, object]:
        return {}

    async def close(self) -> None:
        return None
