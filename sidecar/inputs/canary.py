"""Canary requests (`DYN_SIDECAR_CANARY_*`): catch a worker that says ready but cannot serve.

A canary is one small request (`method` to `url`, with `body` as JSON) judged whole: it
passes only when the complete response, to the end of its body or stream, arrives within
`timeout` seconds with a status code in `expect`. Dynamo judges its canaries by the first
streamed chunk, so a worker that froze mid-stream passes forever (ai-dynamo/dynamo issue
13429); here that worker's canary times out and fails (docs/protocol.md section 8).

When canaries run, one at a time, never on the probe path:
- only while the worker's life runs and it says the gated `endpoint` is ready: a worker that
  has not said ready is never canaried (and a canary can never make it ready);
- only after `wait` seconds of quiet: no signal from the worker (a worker that keeps
  signalling is busy, not hung, and is not loaded with extra requests), no passing canary,
  and no canary started, within `wait`. A worker that stays quiet is canaried every `wait`
  seconds, or back to back when a canary takes longer than that; an upstream that is down
  gets one request per `wait` seconds (and never more than one per `MIN_SPACING`), not a
  storm.

`failures` failures in a row hold the endpoint `notready` with the reason
(`HealthState.canary_failed`: readiness fails, liveness does not, what the worker said is
kept); the next passing canary releases it (`canary_passed`) and resets the count. While the
endpoint is held it gets no traffic, so the worker's signals no longer put canaries off: a
worker that heartbeats all the time is still released when it serves again. A canary
that straddles the end of the worker's life is not counted: it judged the old worker.

Detection time of a worker that freezes and falls silent, with `timeout <= wait`: the first
failing canary starts at most `wait` after the last passing one (or signal), each later one
`wait` after the previous one's start, and the last one fails `timeout` after it starts, so
the endpoint is held within `failures * wait + timeout` seconds of the freeze, and not
before `(failures - 1) * wait + timeout` (defaults 10 s, 3 s, 3 failures: 23 to 33 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from sidecar.core.health import HealthState
from sidecar.core.records import Status
from sidecar.inputs.mirror import (
    MAX_BODY_BYTES,
    BodyTooLarge,
    open_client,
    read_body,
    sleep_unless_stopped,
    unless_stopped,
)

logger = logging.getLogger("dynamo_health_sidecar")

# The shortest time between the starts of two canaries, whatever `wait` says (it may be 0).
MIN_SPACING = 0.1
# How often to look again while no canary may run (the worker is not ready, say).
IDLE_SECONDS = 1.0

PASSED = "passed"
FAILED = "failed"


class CanaryWatch:
    """Sends canaries to a worker that says it is ready and has been quiet; judges them whole."""

    def __init__(
        self,
        url: str,
        method: str,
        body: str | None,
        expect: tuple[tuple[int, int], ...],
        timeout: float,
        wait: float,
        endpoint: str,
        failures: int,
        state: HealthState,
        clock: Callable[[], float] = time.monotonic,
        *,
        worker_signal: Callable[[], float | None] | None = None,
    ) -> None:
        self.url = url
        self.method = method
        self.body = body
        self.expect = expect
        self.timeout = timeout
        self.wait = wait
        self.endpoint = endpoint
        self.failures = failures
        self.state = state
        self.clock = clock
        # When the worker last said what it serves: heartbeats and a mirror's copies do not
        # count, since a frozen worker's heartbeat thread may keep beating (Dynamo #13429).
        self.worker_signal = worker_signal or (lambda: self.state.life.last_activity)
        # For /metrics and `status`.
        self.sent = 0
        self.passed = 0
        self.failed = 0
        self.consecutive_failures = 0
        self.last_latency: float | None = None
        self.last_outcome: str | None = None
        self.last_reason: str | None = None
        self.last_at: float | None = None
        self._client: httpx.AsyncClient | None = None
        self._running = False
        self._last_start: float | None = None
        self._last_success: float | None = None
        self._life = state.life.number

    # -- reading -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a canary is in flight."""
        return self._running

    @property
    def holding(self) -> bool:
        """Whether enough canaries failed in a row to hold the endpoint notready."""
        return self.consecutive_failures >= self.failures

    def next_due(self) -> float | None:
        """When the next canary may start (clock time); None while none may run at all."""
        self._follow_life()
        state = self.state
        if not state.alive or state.draining:
            return None
        record = state.endpoints.get(self.endpoint)
        if record is None or record.said is not Status.READY:
            return None
        # While the endpoint is held it gets no traffic: the worker's signals then do not
        # put off the canary that may release it.
        signal = None if self.holding else self.worker_signal()
        marks = [state.life.began_at]
        marks += [
            mark for mark in (signal, self._last_success, self._last_start) if mark is not None
        ]
        due = max(marks) + self.wait
        if self._last_start is not None:
            due = max(due, self._last_start + MIN_SPACING)
        return due

    def view(self) -> dict[str, object]:
        """What `GET /v1/worker` and `status` show of the canaries."""
        self._follow_life()
        now = self.clock()
        due = self.next_due()
        return {
            "url": self.url,
            "method": self.method,
            "endpoint": self.endpoint,
            "sent": self.sent,
            "passed": self.passed,
            "failed": self.failed,
            "consecutive_failures": self.consecutive_failures,
            "failures_to_hold": self.failures,
            "holding": self.holding,
            "running": self._running,
            "last_outcome": self.last_outcome,
            "last_reason": self.last_reason,
            "last_latency_seconds": (
                None if self.last_latency is None else round(self.last_latency, 6)
            ),
            "last_seconds_ago": None if self.last_at is None else round(now - self.last_at, 3),
            "next_in_seconds": None if due is None else round(max(due - now, 0.0), 3),
        }

    # -- running -------------------------------------------------------------------------

    async def step(self) -> float:
        """Send one canary if one is due and judge it; return how long to sleep before the
        next look. A failing request never raises (it is a failed canary), and no canary
        starts while one is in flight."""
        if self._running:
            return self._idle()
        due = self.next_due()
        if due is None:
            return self._idle()
        now = self.clock()
        if now < due:
            return due - now
        await self._canary(now)
        due = self.next_due()
        if due is None:
            return self._idle()
        return max(due - self.clock(), 0.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Canary until `stop` is set; a canary in flight is cancelled and not counted."""
        try:
            while not stop.is_set():
                step = asyncio.ensure_future(self._guarded_step())
                if not await unless_stopped(stop, step):
                    break
                await sleep_unless_stopped(stop, step.result())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _guarded_step(self) -> float:
        try:
            return await self.step()
        except Exception as exc:  # a worker_signal callback failed, say: log it, keep going
            logger.warning("canaries to %s failed and keep trying: %r", self.url, exc)
            return self._idle()

    def _idle(self) -> float:
        return max(min(IDLE_SECONDS, self.wait), MIN_SPACING)

    def _follow_life(self) -> None:
        """A new life is a new worker: earlier failures say nothing about it."""
        if self.state.life.number != self._life:
            self._life = self.state.life.number
            self.consecutive_failures = 0

    async def _canary(self, now: float) -> None:
        self._running = True
        self._last_start = now
        life = self.state.life.number
        self.sent += 1
        started = time.perf_counter()
        try:
            reason = await self._send()
        except Exception as exc:  # never escapes: whatever it is, the canary failed
            reason = f"the canary could not be sent ({exc!r})"
        finally:
            self._running = False
        self.last_latency = time.perf_counter() - started
        now = self.clock()
        self.last_at = now
        if self.state.life.number != life:
            logger.debug("a canary straddled the end of worker life %d; not counted", life)
            return
        if reason is None:
            self._passed(now)
        else:
            self._failed(reason, now)

    async def _send(self) -> str | None:
        """One canary; None when it passed, else why it failed."""
        if self._client is None:
            self._client = await open_client(self.url, self.timeout)
        headers = {"accept": "*/*"}
        content = None
        if self.body is not None:
            headers["content-type"] = "application/json"
            content = self.body.encode()
        try:
            async with (
                asyncio.timeout(self.timeout),
                self._client.stream(
                    self.method, self.url, content=content, headers=headers
                ) as response,
            ):
                code = response.status_code
                if not any(low <= code <= high for low, high in self.expect):
                    return f"status {code}"
                await read_body(response, MAX_BODY_BYTES)
        except (TimeoutError, httpx.TimeoutException):
            return f"no complete answer within {self.timeout:g}s"
        except httpx.ConnectError:
            return "cannot connect"
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            return "connection closed"
        except BodyTooLarge:
            return f"the answer is longer than {MAX_BODY_BYTES} bytes"
        except httpx.HTTPError as exc:
            return f"request failed ({type(exc).__name__})"
        return None

    def _passed(self, now: float) -> None:
        if self.consecutive_failures:
            logger.info(
                "canary to %s passed after %d failures",
                self.url,
                self.consecutive_failures,
                extra={"fields": {"event": "canary_passed", "endpoint": self.endpoint}},
            )
        self.passed += 1
        self.consecutive_failures = 0
        self.last_outcome, self.last_reason = PASSED, None
        self._last_success = now
        self.state.canary_passed(self.endpoint, now)

    def _failed(self, reason: str, now: float) -> None:
        self.failed += 1
        self.consecutive_failures += 1
        if self.consecutive_failures == 1 or reason != self.last_reason:
            logger.warning(
                "canary to %s failed: %s (%d in a row; %d hold %s notready)",
                self.url,
                reason,
                self.consecutive_failures,
                self.failures,
                self.endpoint,
                extra={
                    "fields": {
                        "event": "canary_failed",
                        "endpoint": self.endpoint,
                        "reason": reason,
                    }
                },
            )
        else:
            logger.debug("canary to %s failed again: %s", self.url, reason)
        self.last_outcome, self.last_reason = FAILED, reason
        if self.holding:
            self.state.canary_failed(self.endpoint, reason, now)
