"""Canaries against a real model server (tests/upstreams.py) that answers, slows, freezes
mid-stream, errors, closes the connection or is down.

`step()` sends at most one canary over a real socket and judges it into a real `HealthState`;
the `run()` tests time each transition on the monotonic clock against its bound, with a
margin for a loaded machine, and count the requests that arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from upstreams import ModelServer, model_server, status_server

from sidecar.core.health import HealthState
from sidecar.core.records import EndCause, Status, Transition
from sidecar.inputs.canary import MIN_SPACING, CanaryWatch
from sidecar.inputs.mirror import UpstreamMirror
from sidecar.inputs.replies import MAX_BODY_BYTES

READY, NOTREADY = Status.READY, Status.NOTREADY
# What a loaded CI machine may add to any bound.
MARGIN = 0.3
TIMEOUT = 0.2
LOGGER = "dynamo_health_sidecar"
PROMPT = '{"model":"m","prompt":"hi","max_tokens":1,"stream":true}'


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server("ok") as running:
        yield running


class Recorder:
    """Every transition, with the monotonic time it was heard."""

    def __init__(self, state: HealthState) -> None:
        self.seen: list[tuple[float, Transition]] = []
        state.subscribe(lambda t: self.seen.append((time.monotonic(), t)))

    def first(self, match: Callable[[Transition], bool], since: float = 0.0) -> float | None:
        for at, transition in self.seen:
            if at >= since and match(transition):
                return at
        return None

    def reasons(self, name: str) -> list[str]:
        return [t.reason for _, t in self.seen if t.name == name]


def ready_state(said: Status = READY) -> HealthState:
    now = time.monotonic()
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=now)
    state.set_endpoint("generate", said, now)
    return state


def canary(
    server: ModelServer,
    state: HealthState,
    *,
    method: str = "GET",
    body: str | None = None,
    expect: tuple[tuple[int, int], ...] = ((200, 299),),
    timeout: float = 1.0,
    wait: float = 0.0,
    failures: int = 3,
    path: str = "/health",
) -> CanaryWatch:
    return CanaryWatch(
        server.url + path,
        method,
        body,
        expect,
        timeout,
        wait,
        "generate",
        failures,
        state,
    )


def send(watch: CanaryWatch, times: int = 1) -> list[float]:
    """`times` canaries, each as soon as it is due, in one loop; how long each step took."""

    async def main() -> list[float]:
        took = []
        try:
            for _ in range(times):
                due = watch.next_due()
                assert due is not None
                await asyncio.sleep(max(due - time.monotonic(), 0.0))
                started = time.monotonic()
                await watch.step()
                took.append(time.monotonic() - started)
        finally:
            await watch.aclose()
        return took

    return asyncio.run(main())


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


@contextlib.asynccontextmanager
async def running(*watches: CanaryWatch | UpstreamMirror) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(watch.run(stop)) for watch in watches]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 2.0)


# -- one canary ---------------------------------------------------------------------------------


def test_canary_complete_answer_passes(server: ModelServer) -> None:
    state = ready_state()
    watch = canary(server, state)
    took = send(watch)
    assert took[0] < MARGIN
    assert (watch.sent, watch.passed, watch.failed) == (1, 1, 0)
    assert watch.last_outcome == "passed"
    assert server.count == 1
    assert state.endpoints["generate"].status is READY


def test_canary_complete_stream_passes(server: ModelServer) -> None:
    server.set("stream", delay=0.02)
    state = ready_state()
    watch = canary(server, state)
    send(watch)
    assert watch.last_outcome == "passed"


def test_canary_post_sends_its_body_as_json(server: ModelServer) -> None:
    state = ready_state()
    send(canary(server, state, method="POST", body=PROMPT, path="/v1/completions"))
    request = server.requests[0]
    assert (request.method, request.path, request.body) == (
        "POST",
        "/v1/completions",
        PROMPT.encode(),
    )
    assert request.headers["content-type"] == "application/json"


def test_canary_get_sends_no_body(server: ModelServer) -> None:
    send(canary(server, ready_state()))
    request = server.requests[0]
    assert (request.method, request.body) == ("GET", b"")
    assert "content-type" not in request.headers


def test_canary_slow_answer_fails_after_the_timeout_and_holds_after_n(
    server: ModelServer,
) -> None:
    server.set("slow", delay=TIMEOUT + 1.0)
    state = ready_state()
    recorder = Recorder(state)
    watch = canary(server, state, timeout=TIMEOUT, failures=3)
    took = send(watch, times=2)
    assert all(TIMEOUT <= t < TIMEOUT + MARGIN for t in took)
    assert watch.consecutive_failures == 2
    assert state.endpoints["generate"].status is READY
    send(watch)
    assert state.endpoints["generate"].status is NOTREADY
    assert recorder.reasons("generate")[-1] == "canary failed: no complete answer within 0.2s"
    assert state.endpoints["generate"].said is READY


def test_canary_frozen_mid_stream_fails_though_its_first_chunk_came_at_once(
    server: ModelServer,
) -> None:
    server.set("freeze")

    async def first_chunk() -> tuple[int, bytes, float]:
        # How Dynamo judges a canary: the status and the first streamed chunk.
        async with httpx.AsyncClient(verify=False) as client:
            started = time.monotonic()
            async with client.stream("GET", server.url + "/health") as response:
                first = await anext(response.aiter_raw())
                return response.status_code, first, time.monotonic() - started

    code, first, took = asyncio.run(asyncio.wait_for(first_chunk(), 2.0))
    assert code == 200 and first.startswith(b"data: ") and took < TIMEOUT
    state = ready_state()
    watch = canary(server, state, timeout=TIMEOUT, failures=1)
    took_canary = send(watch)[0]
    assert server.frozen.is_set()
    assert TIMEOUT <= took_canary < TIMEOUT + MARGIN
    assert watch.last_reason == "no complete answer within 0.2s"
    assert state.endpoints["generate"].status is NOTREADY


@pytest.mark.parametrize("code", [500, 503])
def test_canary_error_code_fails_with_the_code(server: ModelServer, code: int) -> None:
    server.set("error", status=code)
    state = ready_state()
    watch = canary(server, state, failures=1)
    send(watch)
    assert watch.last_reason == f"status {code}"
    assert state.endpoints["generate"].status is NOTREADY


def test_canary_expect_accepts_any_listed_range(server: ModelServer) -> None:
    server.set("error", status=503)
    state = ready_state()
    watch = canary(server, state, expect=((200, 299), (503, 503)), failures=1)
    send(watch)
    assert watch.last_outcome == "passed"


@pytest.mark.parametrize("mode", ["close", "close_mid"])
def test_canary_closed_connection_fails(server: ModelServer, mode: str) -> None:
    server.set(mode)
    state = ready_state()
    watch = canary(server, state, failures=1)
    took = send(watch)[0]
    assert took < MARGIN
    assert watch.last_reason == "connection closed"
    assert state.endpoints["generate"].status is NOTREADY


def test_canary_server_down_fails_at_once(server: ModelServer) -> None:
    server.set("down")
    state = ready_state()
    watch = canary(server, state, failures=1)
    took = send(watch)[0]
    assert took < MARGIN
    assert watch.last_reason == "cannot connect"


def test_canary_oversized_answer_fails(server: ModelServer) -> None:
    server.set("big", size=MAX_BODY_BYTES + 1)
    watch = canary(server, ready_state(), failures=1)
    send(watch)
    assert watch.last_reason == f"the answer is longer than {MAX_BODY_BYTES} bytes"


def test_canary_is_not_sent_before_the_worker_says_ready(server: ModelServer) -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=time.monotonic())
    watch = canary(server, state)

    async def main() -> None:
        await watch.step()
        state.set_endpoint("generate", NOTREADY, time.monotonic())
        await watch.step()
        await watch.aclose()

    asyncio.run(main())
    assert watch.next_due() is None
    assert (server.count, watch.sent) == (0, 0)


def test_canary_is_not_sent_after_the_life_ended(server: ModelServer) -> None:
    state = ready_state()
    state.end_life("its process 7 exited", EndCause.EXITED, time.monotonic())
    watch = canary(server, state)
    asyncio.run(watch.step())
    assert (server.count, watch.sent) == (0, 0)


def test_canary_passing_restores_what_the_worker_said(server: ModelServer) -> None:
    server.set("error")
    state = ready_state()
    recorder = Recorder(state)
    watch = canary(server, state, failures=2)
    send(watch, times=2)
    assert state.endpoints["generate"].status is NOTREADY and state.status is NOTREADY
    server.set("ok")
    send(watch)
    assert state.endpoints["generate"].status is READY and state.status is READY
    assert recorder.reasons("generate")[-1] == "canary passed"
    assert watch.consecutive_failures == 0


def test_canary_pass_resets_the_failures_in_a_row(server: ModelServer) -> None:
    server.set("error")
    state = ready_state()
    watch = canary(server, state, failures=3)
    send(watch, times=2)
    server.set("ok")
    send(watch)
    server.set("error")
    send(watch, times=2)
    assert state.endpoints["generate"].status is READY
    assert (watch.failed, watch.consecutive_failures) == (4, 2)


def test_canary_straddling_the_end_of_a_life_is_not_counted(server: ModelServer) -> None:
    server.set("freeze")
    state = ready_state()
    watch = canary(server, state, timeout=TIMEOUT, failures=1)

    async def main() -> None:
        step = asyncio.create_task(watch.step())
        assert await until(server.frozen.is_set, 1.0)
        state.end_life("its process 7 exited", EndCause.EXITED, time.monotonic())
        state.set_endpoint("generate", READY, time.monotonic())
        await step
        await watch.aclose()

    asyncio.run(main())
    assert (watch.sent, watch.failed, watch.consecutive_failures) == (1, 0, 0)
    assert state.endpoints["generate"].status is READY


def test_canary_never_overlaps(server: ModelServer) -> None:
    server.set("freeze")
    watch = canary(server, ready_state(), timeout=TIMEOUT)

    async def main() -> None:
        await asyncio.gather(watch.step(), watch.step(), watch.step())
        await watch.aclose()

    asyncio.run(main())
    assert (server.count, watch.sent) == (1, 1)


def test_canary_counts_latency_and_outcome_for_status(server: ModelServer) -> None:
    server.set("error")
    watch = canary(server, ready_state(), failures=1)
    send(watch)
    view = watch.view()
    assert view["sent"] == 1 and view["failed"] == 1 and view["consecutive_failures"] == 1
    assert view["last_outcome"] == "failed" and view["last_reason"] == "status 503"
    assert view["holding"] is True and view["running"] is False
    assert isinstance(view["last_latency_seconds"], float) and view["last_latency_seconds"] < MARGIN
    assert isinstance(view["next_in_seconds"], float) and view["next_in_seconds"] <= MIN_SPACING


def test_canary_failure_warns_once_while_its_reason_lasts(
    server: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set("error")
    watch = canary(server, ready_state(), failures=2)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        send(watch, times=4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "status 503" in warnings[0].getMessage()


# -- pacing -------------------------------------------------------------------------------------


def test_canary_waits_for_quiet_after_a_signal(server: ModelServer) -> None:
    state = ready_state()
    watch = canary(server, state, wait=0.3)

    async def main() -> float:
        async with running(watch):
            for _ in range(8):  # a worker that keeps signalling for 0.8 s
                state.set_endpoint("generate", READY, time.monotonic())
                await asyncio.sleep(0.1)
            assert server.count == 0
            last = time.monotonic()
            state.set_endpoint("generate", READY, last)
            assert await until(lambda: server.count == 1, 0.3 + 2 * MARGIN)
        return last

    last = asyncio.run(main())
    assert 0.3 - 0.01 <= server.arrivals()[0] - last < 0.3 + MARGIN


def test_canary_heartbeats_do_not_put_canaries_off(server: ModelServer) -> None:
    """A frozen worker's heartbeat thread may keep beating: heartbeats are not activity."""
    state = ready_state()
    watch = canary(server, state, wait=0.2)

    async def main() -> None:
        async with running(watch):
            for _ in range(8):
                state.heartbeat(time.monotonic())
                await asyncio.sleep(0.1)

    asyncio.run(main())
    assert server.count >= 2


def test_canary_passing_ones_come_once_per_wait(server: ModelServer) -> None:
    state = ready_state()
    watch = canary(server, state, wait=0.2)

    async def main() -> None:
        async with running(watch):
            await asyncio.sleep(1.1)

    asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(server.arrivals())]
    assert 4 <= server.count <= 6
    assert min(gaps) >= 0.2 - 0.05  # start to start; arrivals add the jitter


@pytest.mark.parametrize("mode", ["down", "error", "close"])
def test_canary_no_storm_when_the_worker_fails_fast(server: ModelServer, mode: str) -> None:
    server.set(mode)
    state = ready_state()
    watch = canary(server, state, wait=0.2, failures=1)

    async def main() -> None:
        async with running(watch):
            await asyncio.sleep(1.0)

    asyncio.run(main())
    # One at the start (the worker has been quiet since it said ready 0.2 s before), then
    # one per wait: at most 1 + 1.0 / 0.2.
    assert 3 <= watch.sent <= 6
    assert watch.failed == watch.sent or watch.running
    if mode != "down":
        assert server.count == watch.sent
        gaps = [b - a for a, b in itertools.pairwise(server.arrivals())]
        assert min(gaps) >= 0.2 - 0.05  # start to start; arrivals add the jitter


def test_canary_no_storm_with_no_wait(server: ModelServer) -> None:
    server.set("down")
    watch = canary(server, ready_state(), wait=0.0, failures=1)

    async def main() -> None:
        async with running(watch):
            await asyncio.sleep(0.5)

    asyncio.run(main())
    assert watch.sent <= 0.5 / MIN_SPACING + 1


def test_canary_held_endpoint_is_canaried_despite_signals(server: ModelServer) -> None:
    server.set("error")
    state = ready_state()
    watch = canary(server, state, wait=0.2, failures=1)

    async def main() -> None:
        async with running(watch):
            assert await until(lambda: watch.holding, 1.0)
            server.set("ok")
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and state.endpoints["generate"].status is NOTREADY:
                state.heartbeat(time.monotonic())
                await asyncio.sleep(0.05)

    asyncio.run(main())
    assert state.endpoints["generate"].status is READY


def test_canary_mirror_polls_do_not_put_canaries_off(server: ModelServer) -> None:
    with status_server("ready") as upstream:
        state = HealthState(required=("generate",), starting=NOTREADY, started_at=time.monotonic())
        mirror = UpstreamMirror(upstream.url + "/health", state, 0.1, 3)
        watch = canary(server, state, wait=0.2)

        async def main() -> None:
            async with running(mirror, watch):
                await asyncio.sleep(1.0)

        asyncio.run(main())
        assert upstream.count >= 5
    assert server.count >= 3
    assert watch.passed == watch.sent


# -- the event loop and the whole story ---------------------------------------------------------


def test_canary_hanging_leaves_the_event_loop_responsive(server: ModelServer) -> None:
    """The probe path's stand-in: a task on the same loop that should wake every millisecond,
    measured while one canary hangs mid-stream for its whole timeout."""
    server.set("freeze")
    state = ready_state()
    watch = canary(server, state, timeout=1.0, failures=1)

    async def main() -> tuple[list[float], float]:
        lateness: list[float] = []
        async with running(watch):
            assert await until(server.frozen.is_set, 1.0)
            began = time.perf_counter()
            while not watch.failed:
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                lateness.append(time.perf_counter() - start - 0.001)
            measured = time.perf_counter() - began
        return lateness, measured

    lateness, measured = asyncio.run(main())
    lateness.sort()
    p99 = lateness[int(len(lateness) * 0.99)]
    assert measured > 0.8  # the canary hung for most of its second, and it was all measured
    assert watch.last_latency is not None and watch.last_latency >= 1.0
    assert watch.last_reason == "no complete answer within 1s"
    assert p99 < 0.005, f"p99 loop lateness {p99 * 1e3:.2f} ms"
    # A canary that blocked the loop would show as one tick late by its whole timeout.
    assert lateness[-1] < 0.1, f"max loop lateness {lateness[-1] * 1e3:.1f} ms"


def test_canary_detects_a_frozen_worker_within_its_bound(server: ModelServer) -> None:
    """The defaults (wait 10 s, timeout 3 s, 3 failures) scaled by 1/10: a worker that freezes
    right after a passing canary is held within 3 * wait + timeout (33 s unscaled)."""
    wait, timeout, failures = 1.0, 0.3, 3
    state = ready_state()
    recorder = Recorder(state)
    watch = canary(server, state, wait=wait, timeout=timeout, failures=failures)

    async def main() -> float:
        async with running(watch):
            assert await until(lambda: watch.passed == 1, 2 * wait)
            frozen = time.monotonic()
            server.set("freeze")
            assert await until(lambda: watch.holding, failures * wait + timeout + MARGIN)
        return frozen

    frozen = asyncio.run(main())
    held = recorder.first(lambda t: t.name == "generate" and t.new == "notready")
    assert held is not None
    detection = held - frozen
    bound = failures * wait + timeout
    assert bound - 0.05 <= detection < bound + MARGIN, f"detected after {detection:.3f}s"
    assert recorder.reasons("generate")[-1] == "canary failed: no complete answer within 0.3s"
