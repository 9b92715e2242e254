"""Kubernetes reporting as an adapter: events on the pod and a readiness-gate condition, sent
beside the event loop (docs/protocol.md section 7.5).

Every transition of the health state becomes zero or more reports: an Event on the pod
(core/v1, what `kubectl describe pod` lists under Events) and the desired state of one pod
condition (patched on `pods/status`, so `spec.readinessGates` can wait for it). Three parts,
each with one job:

- `Recorder`, on the event loop: describes a transition (`reports.describe`), stamps it with
  the wall clock and puts it in the outbox; a few microseconds, never a wait for the API.
- `Outbox`: the bounded queue both sides share, under one lock (`outbox.py`).
- `Sender`, its own daemon thread: correlates, sends, retries, and owns every interval
  (`sender.py`).

A slow, unreachable or forbidding API server costs the loop nothing and the process a fixed
amount of memory. The `kubernetes` package is imported only by `api.official_api`, that is
only when reporting is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

from sidecar.component import Adapter, Kind, Reading
from sidecar.core.health import HealthState
from sidecar.core.records import Subject, Transition
from sidecar.kube.api import KubeApi
from sidecar.kube.correlator import EventCorrelator
from sidecar.kube.discovery import PodRef
from sidecar.kube.outbox import QUEUE_SIZE, Outbox
from sidecar.kube.reports import READS_SNAPSHOT, ConditionSpec, current_condition, describe
from sidecar.kube.sender import CALL_TIMEOUT, DEFAULT_BACKOFF, Backoff, Sender

logger = logging.getLogger("dynamo_health_sidecar")

# How long `close` lets the sender flush: the drain's last events go out if the API answers
# within this.
FLUSH_SECONDS = 2.0


class Recorder:
    """The event loop's side: hears the state's transitions and puts their reports in the
    outbox. It keeps what the condition should be, so that an unchanged one is not queued
    again, and a draining pod's condition never goes back to True."""

    def __init__(self, state: HealthState, outbox: Outbox, wall_clock: Callable[[], float]) -> None:
        self._state = state
        self._outbox = outbox
        self._wall_clock = wall_clock
        self._desired: ConditionSpec | None = None
        self._desired_since = 0.0
        self._draining = False
        self._broken = False

    def attach(self) -> None:
        """Hear every transition of the state, and report the condition it calls for now."""
        snapshot = self._state.snapshot()
        self._draining = snapshot.draining
        self._state.subscribe(self.on_transition)
        self._want(current_condition(snapshot))

    def on_transition(self, transition: Transition) -> None:
        """Turn a transition into reports and queue them; never waits for the API, never
        raises: reporting must not break the state machine that calls it."""
        try:
            if transition.subject is Subject.DRAIN:
                self._draining = True
            snapshot = self._state.snapshot() if transition.subject in READS_SNAPSHOT else None
            report = describe(transition, snapshot)
            if report.events:
                wall = self._wall_clock()
                for spec in report.events:
                    self._outbox.add_event(spec, wall)
            if report.condition is not None:
                self._want(report.condition)
        except Exception:
            if not self._broken:
                logger.exception("cannot turn a transition into Kubernetes reports")
            self._broken = True

    def _want(self, spec: ConditionSpec) -> None:
        if spec.status and self._draining:
            return  # a draining pod stays not ready
        if spec == self._desired:
            return
        if self._desired is None or spec.status != self._desired.status:
            self._desired_since = self._wall_clock()
        self._desired = spec
        self._outbox.want_condition(spec, self._desired_since)


def kube_readings(outbox: Outbox, sender: Sender) -> tuple[Reading, ...]:
    """What /metrics shows of Kubernetes reporting (docs/protocol.md section 3.7)."""
    counters: tuple[tuple[str, str, Callable[[], float]], ...] = (
        ("events_created", "Events created on the pod.", lambda: sender.events_created),
        (
            "events_updated",
            "Events whose count was raised instead of another.",
            lambda: sender.events_updated,
        ),
        ("condition_patches", "Patches of the pod condition.", lambda: sender.condition_patches),
        ("failures", "Calls to the API server that failed.", lambda: sender.failures),
        (
            "dropped",
            "Reports dropped because the queue was full (oldest first).",
            lambda: outbox.dropped,
        ),
        (
            "filtered_events",
            "Events held back by the spam filter, as the kubelet's.",
            lambda: sender.filtered,
        ),
        ("abandoned_events", "Events given up after their retries.", lambda: sender.abandoned),
    )
    return (
        *(
            Reading(Kind.COUNTER, f"dynamo_sidecar_kube_{name}", documentation, read)
            for name, documentation, read in counters
        ),
        Reading(
            Kind.GAUGE,
            "dynamo_sidecar_kube_queue_length",
            "Reports waiting to be sent to the API server.",
            outbox.waiting,
        ),
    )


class KubeReporting(Adapter):
    """Events on the pod and its readiness-gate condition, for every transition of `state`.

    `clock` measures every interval (backoff, spam filter, flush deadline); `wall_clock`
    stamps the Events and the condition's lastTransitionTime.
    """

    def __init__(
        self,
        pod: PodRef,
        api: KubeApi,
        condition_type: str,
        state: HealthState,
        clock: Callable[[], float],
        *,
        wall_clock: Callable[[], float] = time.time,
        flush_seconds: float = FLUSH_SECONDS,
        queue_size: int = QUEUE_SIZE,
        call_timeout: float = CALL_TIMEOUT,
        backoff: Backoff = DEFAULT_BACKOFF,
        rand: Callable[[], float] = random.random,
        correlator: EventCorrelator | None = None,
    ) -> None:
        self._pod = pod
        self._condition_type = condition_type
        self._flush_seconds = flush_seconds
        self._outbox = Outbox(queue_size)
        self._recorder = Recorder(state, self._outbox, wall_clock)
        self._sender = Sender(
            self._outbox,
            pod,
            api,
            condition_type,
            clock,
            call_timeout=call_timeout,
            backoff=backoff,
            rand=rand,
            correlator=correlator,
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Hear the state's transitions and start the sender thread (a daemon: it never holds
        the process at exit).

        Start it BEFORE the state file restores the state (docs/protocol.md section 1.3): the
        restoration is then reported too, a StateRestored event and the condition the
        restored life calls for.
        """
        self._recorder.attach()
        self._thread = threading.Thread(target=self._sender.run, name="kube-reporter", daemon=True)
        self._thread.start()
        logger.info(
            "reporting to Kubernetes: events on pod %s/%s and its condition %s",
            self._pod.namespace,
            self._pod.name,
            self._condition_type,
        )

    def readings(self) -> Sequence[Reading]:
        return kube_readings(self._outbox, self._sender)

    async def close(self) -> None:
        """Let the sender flush for at most `flush_seconds`, then say what was not sent.

        The sender tells when it has stopped (flushed, or at its deadline); the wait for its
        word is bounded by the same time because a call in flight cannot be cut short."""
        if self._thread is not None:
            self._thread = None
            loop = asyncio.get_running_loop()
            stopped: asyncio.Future[None] = loop.create_future()

            def tell() -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, stopped)

            self._outbox.stop(self._flush_seconds, tell)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped, self._flush_seconds)
        unsent = self._outbox.unsent()
        if unsent:
            logger.warning("%d report(s) to the Kubernetes API were not sent before exit", unsent)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the wait may have timed out meanwhile
        future.set_result(None)
