"""The prober shared by the mirror and the canaries (sidecar/inputs/prober.py), and the adapter
that builds them (sidecar/inputs/active_checks.py).

The request is made against the real model server of tests/upstreams.py, one reply kind per
server mode; the timing is checked on a clock the test moves, with a check whose marks the
test sets, so each rule of `next_due` and `step` is seen alone.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from upstreams import OK_BODY, ModelServer, model_server, status_server

from sidecar.component import Kind
from sidecar.core.health import HealthState
from sidecar.core.records import Status
from sidecar.inputs.active_checks import ActiveChecks
from sidecar.inputs.prober import Ask, Prober
from sidecar.inputs.replies import (
    MAX_BODY_BYTES,
    Answer,
    Broken,
    Closed,
    Codes,
    Reply,
    TimedOut,
    TooLong,
    Unreachable,
)
from sidecar.settings import Mode, Settings

TIMEOUT = 0.2
MARGIN = 0.3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recording(Prober[Reply]):
    """A check that judges a reply as itself and keeps every one; its marks are the test's."""

    trouble = "test checks of %s failed: %r"

    def __init__(
        self, ask: Ask, *, period: float = 1.0, spacing: float = 0.0, clock: Clock
    ) -> None:
        super().__init__(
            ask, period=period, timeout=TIMEOUT, spacing=spacing, idle=0.5, clock=clock
        )
        self.marks: list[float] | None = []
        self.replies: list[Reply] = []

    def waits_from(self) -> list[float] | None:
        return None if self.marks is None else list(self.marks)

    async def judge(self, reply: Reply) -> Reply:
        return reply

    def act(self, verdict: Reply, now: float) -> None:
        self.replies.append(verdict)


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server("ok") as running:
        yield running


def reply_of(server: ModelServer, reads: Codes | None = None, max_body: int = 1024) -> Reply:
    prober = Recording(Ask("GET", server.url + "/health", max_body, reads=reads), clock=Clock())

    async def main() -> None:
        try:
            await prober.probe()
        finally:
            await prober.aclose()

    asyncio.run(main())
    (reply,) = prober.replies
    return reply


# -- one request, one reply ----------------------------------------------------------------------


def test_prober_answer_is_the_code_and_the_whole_body(server: ModelServer) -> None:
    assert reply_of(server) == Answer(200, OK_BODY)


def test_prober_reads_every_codes_body_unless_told(server: ModelServer) -> None:
    server.set("error", status=503)
    assert reply_of(server) == Answer(503, b'{"error":"engine unavailable"}')


def test_prober_leaves_the_body_of_an_unexpected_code_unread(server: ModelServer) -> None:
    server.set("error", status=503)
    assert reply_of(server, reads=((200, 299),)) == Answer(503, b"")


def test_prober_slow_answer_is_timed_out_at_the_timeout(server: ModelServer) -> None:
    server.set("freeze")
    started = time.monotonic()
    assert reply_of(server) == TimedOut(TIMEOUT)
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + MARGIN


def test_prober_server_down_is_unreachable(server: ModelServer) -> None:
    server.set("down")
    assert reply_of(server) == Unreachable()


@pytest.mark.parametrize("mode", ["close", "close_mid"])
def test_prober_connection_closed_before_the_end_is_closed(server: ModelServer, mode: str) -> None:
    server.set(mode)
    assert reply_of(server) == Closed()


def test_prober_body_past_its_bound_is_too_long(server: ModelServer) -> None:
    server.set("big", size=2048)
    assert reply_of(server, max_body=1024) == TooLong(1024)
    assert reply_of(server, max_body=2048) == Answer(200, b"x" * 2048)


def test_prober_request_that_cannot_be_made_is_broken() -> None:
    prober = Recording(Ask("GET", "http://[::1/health", MAX_BODY_BYTES), clock=Clock())
    asyncio.run(prober.probe())
    (reply,) = prober.replies
    assert reply == Broken("ValueError('Invalid IPv6 URL')")
    assert prober.sent == 1 and not prober.running


def test_prober_sends_the_asks_body_as_json(server: ModelServer) -> None:
    ask = Ask("POST", server.url + "/v1/completions", 1024, body=b'{"prompt":"hi"}')
    asyncio.run(Recording(ask, clock=Clock()).probe())
    request = server.requests[0]
    assert (request.method, request.body) == ("POST", b'{"prompt":"hi"}')
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "dynamo-health-sidecar"
    assert request.headers["connection"] == "close"


# -- timing ----------------------------------------------------------------------------------------


def unreachable(clock: Clock, period: float = 1.0, spacing: float = 0.0) -> Recording:
    return Recording(
        Ask("GET", "http://127.0.0.1:1/", 1024), period=period, spacing=spacing, clock=clock
    )


def test_prober_with_no_mark_is_due_at_once() -> None:
    clock = Clock()
    assert unreachable(clock).next_due() == clock.now


def test_prober_is_due_a_period_after_its_latest_mark() -> None:
    prober = unreachable(Clock(), period=2.0)
    prober.marks = [10.0, 50.0, 30.0]
    assert prober.next_due() == 52.0


def test_prober_is_due_a_period_after_its_last_start_start_to_start() -> None:
    prober = unreachable(Clock(), period=2.0)
    prober.last_start = 60.0
    prober.marks = [50.0]
    assert prober.next_due() == 62.0


def test_prober_keeps_its_spacing_whatever_the_period() -> None:
    prober = unreachable(Clock(), period=0.0, spacing=0.1)
    prober.last_start = 60.0
    assert prober.next_due() == pytest.approx(60.1)


def test_prober_that_may_not_run_looks_again_when_idle() -> None:
    prober = unreachable(Clock())
    prober.marks = None
    assert prober.next_due() is None
    assert asyncio.run(prober.step()) == 0.5
    assert prober.sent == 0


def test_prober_step_before_its_due_sleeps_until_then() -> None:
    clock = Clock()
    prober = unreachable(clock, period=2.0)
    prober.marks = [clock.now - 0.5]
    assert asyncio.run(prober.step()) == pytest.approx(1.5)
    assert prober.sent == 0


def test_prober_step_when_due_sends_and_sleeps_a_period() -> None:
    clock = Clock()
    prober = unreachable(clock, period=2.0)
    assert asyncio.run(prober.step()) == pytest.approx(2.0)
    assert prober.replies == [Unreachable()] and prober.last_start == clock.now


def test_prober_run_keeps_going_after_a_check_fails(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(Recording):
        def act(self, verdict: Reply, now: float) -> None:
            super().act(verdict, now)
            raise RuntimeError("the state refused it")

    prober = Failing(Ask("GET", "http://127.0.0.1:1/", 1024), period=0.05, clock=Clock())
    prober.clock = time.monotonic

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(prober.run(stop))
        # A failed look is followed by the next one `idle` (0.5 s) later.
        await asyncio.sleep(0.8)
        stop.set()
        await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert len(prober.replies) == 2
    assert "test checks of http://127.0.0.1:1/ failed: RuntimeError" in caplog.text


# -- the adapter ---------------------------------------------------------------------------------


def adapter(**settings: object) -> ActiveChecks:
    state = HealthState(required=("generate",), starting=Status.NOTREADY, started_at=0.0)
    return ActiveChecks(Settings(**settings), state, time.monotonic)  # type: ignore[arg-type]


def test_adapter_with_both_checks_off_shows_none_and_runs_nothing() -> None:
    checks = adapter()
    assert checks.view() == {"upstream": None, "canary": None}
    assert checks.readings() == []

    async def main() -> None:
        await asyncio.wait_for(checks.run(asyncio.Event()), 0.5)
        await checks.close()

    asyncio.run(main())


def test_adapter_with_both_checks_off_imports_no_httpx() -> None:
    code = (
        "import sys, time\n"
        "from sidecar.core.health import HealthState\n"
        "from sidecar.core.records import Status\n"
        "from sidecar.inputs.active_checks import ActiveChecks\n"
        "from sidecar.settings import Settings\n"
        "state = HealthState(required=(), starting=Status.NOTREADY, started_at=0.0)\n"
        "ActiveChecks(Settings(), state, time.monotonic)\n"
        "print('httpx' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_adapter_readings_are_the_checks_metrics() -> None:
    checks = adapter(
        upstream_status_url="http://127.0.0.1:1/health",
        canary_url="http://127.0.0.1:1/v1/completions",
        canary_endpoint="generate",
    )
    assert [(r.kind, r.name, r.documentation) for r in checks.readings()] == [
        (Kind.COUNTER, "dynamo_sidecar_upstream_polls", "Polls of the mirrored status server."),
        (Kind.COUNTER, "dynamo_sidecar_upstream_misses", "Polls it did not answer usably."),
        (Kind.GAUGE, "dynamo_sidecar_upstream_consecutive_misses", "Misses in a row."),
        (Kind.GAUGE, "dynamo_sidecar_upstream_latency_seconds", "The last poll's latency."),
        (Kind.COUNTER, "dynamo_sidecar_canary_requests", "Canary requests sent."),
        (Kind.COUNTER, "dynamo_sidecar_canary_passed", "Canaries that passed."),
        (Kind.COUNTER, "dynamo_sidecar_canary_failed", "Canaries that failed."),
        (Kind.GAUGE, "dynamo_sidecar_canary_consecutive_failures", "Failed canaries in a row."),
        (Kind.GAUGE, "dynamo_sidecar_canary_latency_seconds", "The last canary's latency."),
    ]
    assert [r.read() for r in checks.readings()] == [0, 0, 0, None, 0, 0, 0, 0, None]


def test_adapter_runs_the_mirror_until_stopped_and_shows_it() -> None:
    with status_server("ready") as upstream:
        checks = adapter(upstream_status_url=upstream.url + "/health", upstream_interval=0.05)

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(checks.run(stop))
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, 1.0)
            await checks.close()

        asyncio.run(main())
    view = checks.view()
    assert view["canary"] is None
    mirror = view["upstream"]
    assert isinstance(mirror, dict) and mirror["polls"] >= 2 and mirror["armed"] is True
    assert {r.name: r.read() for r in checks.readings()}["dynamo_sidecar_upstream_misses"] == 0


def test_adapter_in_frontend_mode_mirrors_a_frontend() -> None:
    checks = adapter(upstream_status_url="http://127.0.0.1:1/health", mode=Mode.FRONTEND)
    view = checks.view()["upstream"]
    assert isinstance(view, dict) and view["url"] == "http://127.0.0.1:1/health"
