"""Mirror mode (`DYN_SIDECAR_UPSTREAM_STATUS_URL`): copy a Dynamo worker's own status server,
or a Dynamo frontend's own health path (docs/protocol.md section 8.1).

Worker mode (`WORKER`): every `interval` seconds, start to start, the mirror GETs a Dynamo
worker's status server and hands its endpoint map and status to the state machine
(`HealthState.mirror`), 503 bodies included: the state then decides as it would for a worker
that had said the same through the socket. Frontend mode (`FRONTEND`, `DYN_SIDECAR_MODE=
frontend`): the instances a Dynamo frontend's `/health` lists replace those the sidecar holds
without a lease (`HealthState.mirror_frontend`). What an answer means is
`sidecar/inputs/mirror_judgement.py`'s to say; the loop is the prober's
(`sidecar/inputs/prober.py`).

A poll that gets no usable answer is a *miss*, and so is an answer the state cannot keep (past
its bounds). Each miss makes every endpoint `notready` at once and drops the instances copied
from a frontend (`HealthState.mirror_lost`), since nothing the server said can be trusted any
more. The core's rule (`sidecar/core/checks.py` `Misses`) decides when misses end the life:
`misses` in a row, once the server answered in it (docs/protocol.md sections 6.2 and 6.5), so
the live path fails and the kubelet restarts the hung worker, while a worker still importing
its libraries is not declared hung. The next good answer is a signal and begins a new life by
itself. Misses are logged once when a run of them begins, and again when the reason changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sidecar.core.checks import Act, Misses
from sidecar.core.health import HealthState
from sidecar.core.records import CapacityError, EndCause, Instance, Status
from sidecar.inputs.mirror_judgement import (
    MAX_FRONTEND_BODY_BYTES,
    Copy,
    Miss,
    judge_poll,
    parse_frontend,
    parse_status,
)
from sidecar.inputs.prober import Ask, Prober
from sidecar.inputs.replies import MAX_BODY_BYTES, Answer, Reply

logger = logging.getLogger("dynamo_health_sidecar")

# The longest one poll may take, however long the interval.
POLL_TIMEOUT_CAP = 5.0
# Bodies longer than this are parsed in a thread, off the loop that answers the probes (a
# frontend's list of thousands of instances takes tens of milliseconds to check).
INLINE_PARSE_BYTES = 64 * 1024

Answered = TypeVar("Answered")


@dataclass(frozen=True)
class Upstream(Generic[Answered]):
    """What a mirror copies: how much of an answer it reads, how the answer is checked
    (`parse`: pure, raises UpstreamError for a miss), and what the state is told of it
    (`apply`: may raise CapacityError, which is a miss too)."""

    max_body: int
    parse: Callable[[int, bytes], Answered]
    apply: Callable[[HealthState, Answered, float], None]


def _apply_status(state: HealthState, answer: tuple[dict[str, Status], Status], now: float) -> None:
    state.mirror(*answer, now)


def _apply_frontend(state: HealthState, answer: list[Instance], now: float) -> None:
    state.mirror_frontend(answer, now)


# A Dynamo worker's system status server (DYN_SIDECAR_MODE=worker).
WORKER: Upstream[tuple[dict[str, Status], Status]] = Upstream(
    MAX_BODY_BYTES, parse_status, _apply_status
)
# A Dynamo frontend's own health path (DYN_SIDECAR_MODE=frontend).
FRONTEND: Upstream[list[Instance]] = Upstream(
    MAX_FRONTEND_BODY_BYTES, parse_frontend, _apply_frontend
)


class UpstreamMirror(Prober[Copy[Any] | Miss]):
    """Polls a Dynamo status server (or a frontend's health path, with `upstream=FRONTEND`)
    and copies what it says into the state."""

    trouble: ClassVar[str] = "mirror of %s failed and keeps polling: %r"

    def __init__(
        self,
        url: str,
        state: HealthState,
        interval: float,
        misses: int,
        clock: Callable[[], float] = time.monotonic,
        upstream: Upstream[Any] = WORKER,
    ) -> None:
        super().__init__(
            Ask("GET", url, upstream.max_body),
            period=interval,
            timeout=min(interval, POLL_TIMEOUT_CAP),
            spacing=0.0,
            idle=interval,
            clock=clock,
        )
        self.url = url
        self.state = state
        self.upstream = upstream
        self.rule = Misses(misses)
        # For /metrics and `status`.
        self.polls = 0
        self.missed = 0
        self.last_reason: str | None = None
        # The last usable answer and its verdict: a frontend's list, unchanged from poll to
        # poll, is checked once.
        self._last: tuple[Reply, Copy[Any]] | None = None

    # -- reading -------------------------------------------------------------------------

    @property
    def consecutive_misses(self) -> int:
        return self.rule.in_a_row

    @property
    def armed(self) -> bool:
        """Whether misses can end the current life (the server answered in it)."""
        return self.rule.armed(self.state.current_life().number)

    def view(self) -> dict[str, object]:
        """What `GET /v1/worker` shows of the mirror."""
        return {
            "url": self.url,
            "interval_seconds": self.period,
            "polls": self.polls,
            "misses": self.missed,
            "consecutive_misses": self.consecutive_misses,
            "misses_to_end_life": self.rule.threshold,
            "armed": self.armed,
            "last_latency_seconds": (
                None if self.last_latency is None else round(self.last_latency, 6)
            ),
            "last_reason": self.last_reason,
        }

    # -- the prober's questions ----------------------------------------------------------

    def waits_from(self) -> list[float]:
        """No mark but the last start: the mirror polls every interval, whatever the worker
        does, since its answers are how a silent worker is seen."""
        return []

    async def judge(self, reply: Reply) -> Copy[Any] | Miss:
        last = self._last
        if last is not None and last[0] == reply:
            return last[1]
        parse = self.upstream.parse
        if isinstance(reply, Answer) and len(reply.body) > INLINE_PARSE_BYTES:
            verdict = await asyncio.to_thread(judge_poll, reply, parse)
        else:
            verdict = judge_poll(reply, parse)
        if isinstance(verdict, Copy):
            self._last = (reply, verdict)
        return verdict

    def act(self, verdict: Copy[Any] | Miss, now: float) -> None:
        self.polls += 1
        if isinstance(verdict, Miss):
            self._missed(verdict.reason, now)
            return
        try:
            self.upstream.apply(self.state, verdict.answer, now)
        except CapacityError as exc:
            self._missed(f"the sidecar cannot keep what the status server lists ({exc})", now)
            return
        self._answered()

    # -- internals -------------------------------------------------------------------------

    def _answered(self) -> None:
        if self.rule.in_a_row:
            logger.info(
                "the status server %s answers again after %d missed polls",
                self.url,
                self.rule.in_a_row,
                extra={"fields": {"event": "upstream_back", "misses": self.rule.in_a_row}},
            )
        # The life the answer was copied into: a new one, when it began one.
        self.rule.answered(self.state.current_life().number)
        self.last_reason = None

    def _missed(self, reason: str, now: float) -> None:
        self.missed += 1
        act = self.rule.missed(self.state.current_life().number)
        if reason != self.last_reason:
            logger.warning(
                "mirror of %s: %s (miss %d; %d in a row end the worker's life)",
                self.url,
                reason,
                self.rule.in_a_row,
                self.rule.threshold,
                extra={"fields": {"event": "upstream_miss", "reason": reason}},
            )
        else:
            logger.debug("mirror of %s: %s (miss %d)", self.url, reason, self.rule.in_a_row)
        self.last_reason = reason
        self.state.mirror_lost(reason, now)
        if act is Act.END_LIFE:
            self.state.end_life(self.rule.end_reason, EndCause.UNRESPONSIVE, now)
