"""Canary requests (`DYN_SIDECAR_CANARY_*`): catch a worker that says ready but cannot serve.

A canary is one small request (`method` to `url`, with `body` as JSON) judged whole
(`sidecar/inputs/canary_judgement.py`): it passes only when the complete response, to the
end of its body or stream, arrives within `timeout` seconds with a status code in `expect`
(docs/protocol.md sections 8.2 and 10.11). The loop is the prober's (`sidecar/inputs/prober.py`).

When canaries run, one at a time, never on the probe path:
- only while the worker's life runs, the sidecar is not draining, and the worker says the
  gated `endpoint` is ready: a worker that has not said ready is never canaried (and a canary
  can never make it ready);
- only after `wait` seconds of quiet: no signal from the worker (a worker that keeps
  signalling is busy, not hung, and is not loaded with extra requests; heartbeats and a
  mirror's copies do not count, since a frozen worker's heartbeat thread may keep beating),
  no passing canary, and no canary started, within `wait`. A worker that stays quiet is
  canaried every `wait` seconds, or back to back when a canary takes longer than that; an
  upstream that is down gets one request per `wait` seconds (and never more than one per
  `MIN_SPACING`), not a storm.

The core's rule (`sidecar/core/checks.py` `Failures`) counts: `failures` failures in a row
hold the endpoint `notready` with the reason (`HealthState.canary_failed`: readiness fails,
liveness does not, what the worker said is kept); the next passing canary releases it
(`canary_passed`). While the endpoint is held it gets no traffic, so the worker's signals no
longer put canaries off: a worker that heartbeats all the time is still released when it
serves again. A new life starts the count again, and a canary that straddles the end of the
worker's life is not counted: it judged the old worker.

Detection time of a worker that freezes and falls silent, with `timeout <= wait`: the first
failing canary starts at most `wait` after the last passing one (or signal), each later one
`wait` after the previous one's start, and the last one fails `timeout` after it starts, so
the endpoint is held within `failures * wait + timeout` seconds of the freeze, and not
before `(failures - 1) * wait + timeout` (defaults 10 s, 3 s, 3 failures: 23 to 33 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import ClassVar

from sidecar.core.checks import Act, Failures
from sidecar.core.health import HealthState
from sidecar.core.records import Status
from sidecar.core.views import EndpointView
from sidecar.inputs.canary_judgement import Fail, Pass, judge_canary
from sidecar.inputs.prober import Ask, Prober
from sidecar.inputs.replies import MAX_BODY_BYTES, Codes, Reply

logger = logging.getLogger("dynamo_health_sidecar")

# The shortest time between the starts of two canaries, whatever `wait` says (it may be 0).
MIN_SPACING = 0.1
# How often to look again while no canary may run (the worker is not ready, say).
IDLE_SECONDS = 1.0

PASSED = "passed"
FAILED = "failed"


class CanaryWatch(Prober[Pass | Fail]):
    """Sends canaries to a worker that says it is ready and has been quiet; judges them whole."""

    trouble: ClassVar[str] = "canaries to %s failed and keep trying: %r"

    def __init__(
        self,
        url: str,
        method: str,
        body: str | None,
        expect: Codes,
        timeout: float,
        wait: float,
        endpoint: str,
        failures: int,
        state: HealthState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            Ask(method, url, MAX_BODY_BYTES, None if body is None else body.encode(), expect),
            period=wait,
            timeout=timeout,
            spacing=MIN_SPACING,
            idle=max(min(IDLE_SECONDS, wait), MIN_SPACING),
            clock=clock,
        )
        self.url = url
        self.method = method
        self.expect = expect
        self.endpoint = endpoint
        self.state = state
        self.rule = Failures(failures)
        # For /metrics and `status`.
        self.passed = 0
        self.failed = 0
        self.last_outcome: str | None = None
        self.last_reason: str | None = None
        self.last_at: float | None = None
        self._last_success: float | None = None
        # The life the canary in flight began in.
        self._began_in = state.current_life().number

    # -- reading -------------------------------------------------------------------------

    @property
    def consecutive_failures(self) -> int:
        return self.rule.in_a_row(self.state.current_life().number)

    @property
    def holding(self) -> bool:
        """Whether enough canaries failed in a row to hold the endpoint notready."""
        return self.rule.holding(self.state.current_life().number)

    def view(self) -> dict[str, object]:
        """What `GET /v1/worker` and `status` show of the canaries."""
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
            "failures_to_hold": self.rule.threshold,
            "holding": self.holding,
            "running": self.running,
            "last_outcome": self.last_outcome,
            "last_reason": self.last_reason,
            "last_latency_seconds": (
                None if self.last_latency is None else round(self.last_latency, 6)
            ),
            "last_seconds_ago": None if self.last_at is None else round(now - self.last_at, 3),
            "next_in_seconds": None if due is None else round(max(due - now, 0.0), 3),
        }

    # -- the prober's questions ----------------------------------------------------------

    def waits_from(self) -> list[float] | None:
        snapshot = self.state.snapshot()
        if not snapshot.alive or snapshot.draining:
            return None
        life = snapshot.life
        holding = self.rule.holding(life.number)
        endpoint = snapshot.endpoints.get(self.endpoint)
        if endpoint is None or not _says_ready(endpoint, holding):
            return None
        # While the endpoint is held it gets no traffic: the worker's signals then do not
        # put off the canary that may release it.
        signal = None if holding else life.last_activity
        return [mark for mark in (life.began_at, signal, self._last_success) if mark is not None]

    def begin(self) -> None:
        self._began_in = self.state.current_life().number

    async def judge(self, reply: Reply) -> Pass | Fail:
        return judge_canary(reply, self.expect)

    def act(self, verdict: Pass | Fail, now: float) -> None:
        self.last_at = now
        life = self.state.current_life().number
        before = self.rule.in_a_row(life)
        if isinstance(verdict, Pass):
            act = self.rule.passed(self._began_in, life)
        else:
            act = self.rule.failed(self._began_in, life)
        if act is Act.UNCOUNTED:
            logger.debug(
                "a canary straddled the end of worker life %d; not counted", self._began_in
            )
        elif isinstance(verdict, Pass):
            self._passed(before, now)
        else:
            self._failed(verdict.reason, self.rule.in_a_row(life), act, now)

    # -- internals -------------------------------------------------------------------------

    def _passed(self, failures_before: int, now: float) -> None:
        if failures_before:
            logger.info(
                "canary to %s passed after %d failures",
                self.url,
                failures_before,
                extra={"fields": {"event": "canary_passed", "endpoint": self.endpoint}},
            )
        self.passed += 1
        self.last_outcome, self.last_reason = PASSED, None
        self._last_success = now
        self.state.canary_passed(self.endpoint, now)

    def _failed(self, reason: str, in_a_row: int, act: Act, now: float) -> None:
        self.failed += 1
        if in_a_row == 1 or reason != self.last_reason:
            logger.warning(
                "canary to %s failed: %s (%d in a row; %d hold %s notready)",
                self.url,
                reason,
                in_a_row,
                self.rule.threshold,
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
        if act is Act.HOLD:
            self.state.canary_failed(self.endpoint, reason, now)


def _says_ready(endpoint: EndpointView, holding: bool) -> bool:
    """Whether the worker says the gated endpoint is ready. The view shows what readers see,
    which a hold makes `notready` whatever the worker said; so while the canaries hold it,
    it is taken as still said ready, and the canary that may release it can run."""
    return endpoint.status is Status.READY or holding
