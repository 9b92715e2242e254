"""Mirror mode against a real Dynamo-format status server (tests/upstreams.py).

`step()` is one poll over a real socket into a real `HealthState`; the `run()` tests time
each transition on the monotonic clock against its bound, with a margin for a loaded machine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from upstreams import SEED_NOTREADY, SEED_READY, StatusServer, status_server

from sidecar.health import HealthState, Status, Subject, Transition
from sidecar.upstream import POLL_TIMEOUT_CAP, UpstreamError, UpstreamMirror, parse_status

READY, NOTREADY = Status.READY, Status.NOTREADY
# What a loaded CI machine may add to any bound.
MARGIN = 0.3
INTERVAL = 0.1
LOGGER = "dynamo_health_sidecar"


@pytest.fixture
def server() -> Iterator[StatusServer]:
    with status_server("notready") as running:
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


def mirrored(
    server: StatusServer,
    required: tuple[str, ...] = ("generate",),
    interval: float = 1.0,
    misses: int = 3,
) -> tuple[HealthState, UpstreamMirror]:
    state = HealthState(required=required, starting=NOTREADY, started_at=time.monotonic())
    return state, UpstreamMirror(server.url + "/health", state, interval, misses)


def poll(mirror: UpstreamMirror, times: int = 1) -> float:
    """`times` polls in one event loop; returns how long the last one took."""

    async def main() -> float:
        took = 0.0
        try:
            for _ in range(times):
                started = time.monotonic()
                await mirror.step()
                took = time.monotonic() - started
        finally:
            await mirror.aclose()
        return took

    return asyncio.run(main())


def statuses(state: HealthState) -> dict[str, str]:
    return {name: record.status.value for name, record in sorted(state.endpoints.items())}


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


# -- the stand-in -------------------------------------------------------------------------------


def test_upstream_status_server_sends_the_seed_bytes(server: StatusServer) -> None:
    notready = httpx.get(server.url + "/health")
    server.set("ready")
    ready = httpx.get(server.url + "/health")
    assert (notready.status_code, notready.content) == (503, SEED_NOTREADY)
    assert (ready.status_code, ready.content) == (200, SEED_READY)
    assert [r.headers["content-length"] for r in (notready, ready)] == ["96", "139"]
    assert ready.headers["content-type"] == "text/plain; charset=utf-8"


# -- one poll -----------------------------------------------------------------------------------


def test_upstream_step_copies_the_map_of_a_503_answer(server: StatusServer) -> None:
    state, mirror = mirrored(server, required=())
    poll(mirror)
    assert statuses(state) == {"generate": "notready"}
    assert state.status is NOTREADY
    assert state.life.declared is NOTREADY
    assert mirror.consecutive_misses == 0


def test_upstream_step_copies_the_ready_map(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server)
    poll(mirror)
    assert statuses(state) == {
        "clear_kv_blocks": "ready",
        "generate": "ready",
        "load_metrics": "ready",
    }
    assert state.status is READY
    assert state.live() == (True, "")


def test_upstream_step_keeps_a_required_endpoint_the_server_does_not_list(
    server: StatusServer,
) -> None:
    server.set("ready")
    state, mirror = mirrored(server, required=("decode",))
    poll(mirror)
    assert statuses(state)["decode"] == "notready"
    assert state.status is NOTREADY


def test_upstream_step_drops_endpoints_the_server_no_longer_lists(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server)
    poll(mirror)
    server.set("notready")
    poll(mirror)
    assert statuses(state) == {"generate": "notready"}


def test_upstream_step_down_makes_every_endpoint_notready_at_once(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server)
    recorder = Recorder(state)
    poll(mirror)
    server.set("down")
    took = poll(mirror)
    assert took < MARGIN
    assert statuses(state) == {
        "clear_kv_blocks": "notready",
        "generate": "notready",
        "load_metrics": "notready",
    }
    assert state.alive
    assert recorder.reasons("generate")[-1] == "the status server cannot be reached"


def test_upstream_misses_in_a_row_end_the_life(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server, misses=3)
    poll(mirror)
    server.set("down")
    poll(mirror, times=2)
    assert state.alive
    poll(mirror)
    assert not state.alive
    assert state.live() == (False, "worker life 1 ended: its status server did not answer 3 times")


def test_upstream_misses_before_the_first_answer_do_not_end_the_life(
    server: StatusServer,
) -> None:
    server.set("down")
    state, mirror = mirrored(server, misses=2)
    poll(mirror, times=4)
    assert state.alive
    assert not mirror.armed
    assert mirror.consecutive_misses == 4


def test_upstream_answer_after_the_end_begins_a_new_life(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server, misses=1)
    poll(mirror)
    server.set("down")
    poll(mirror)
    assert not state.alive
    server.set("ready")
    poll(mirror)
    assert state.alive
    assert state.life.number == 2
    assert state.status is READY
    assert mirror.armed


def test_upstream_good_answer_resets_the_misses_in_a_row(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server, misses=3)
    poll(mirror)
    server.set("down")
    poll(mirror, times=2)
    server.set("ready")
    poll(mirror)
    server.set("down")
    poll(mirror, times=2)
    assert state.alive
    assert (mirror.missed, mirror.consecutive_misses) == (4, 2)


def test_upstream_slow_server_is_a_miss_after_the_poll_timeout(server: StatusServer) -> None:
    server.set("ready")
    state, mirror = mirrored(server, interval=0.2)
    poll(mirror)
    server.set("slow")
    took = poll(mirror)
    assert 0.2 <= took < 0.2 + MARGIN
    assert mirror.last_reason == "the status server did not answer within 0.2s"
    assert state.status is NOTREADY


@pytest.mark.parametrize(
    ("code", "body", "reason"),
    [
        (200, b"<html>it works</html>", "the status server's body is not JSON"),
        (404, b"not found", "the status server answered status 404"),
        (
            503,
            b'{"endpoints":{"generate":"starting"},"status":"notready"}',
            'the status server\'s body has an unknown status for generate "starting" '
            "(expected ready or notready)",
        ),
        (
            200,
            b'{"endpoints":{"generate":"ready"},"status":"healthy"}',
            'the status server\'s body has an unknown status "healthy" '
            "(expected ready or notready)",
        ),
        (
            200,
            b'{"endpoints":{"generate":"notready"},"status":"notready"}',
            "the status server answered status 200 with a body saying notready",
        ),
    ],
)
def test_upstream_unusable_answer_is_a_miss_with_its_reason(
    server: StatusServer, code: int, body: bytes, reason: str
) -> None:
    server.set("ready")
    state, mirror = mirrored(server)
    recorder = Recorder(state)
    poll(mirror)
    server.answer(code, body)
    poll(mirror)
    assert mirror.last_reason == reason
    assert recorder.reasons("generate")[-1] == reason
    assert state.status is NOTREADY


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "the status server's body is not a JSON object"),
        (b'{"endpoints":{}}', "the status server's body has no status"),
        (b'{"status":"ready"}', "the status server's body has no endpoints map"),
        (
            b'{"endpoints":["generate"],"status":"ready"}',
            "the status server's body has no endpoints map",
        ),
        (
            b'{"endpoints":{"a b":"ready"},"status":"ready"}',
            "the status server's body names an invalid endpoint 'a b'",
        ),
        (
            b'{"endpoints":{"generate":"ready"},"status":"ready","status":"ready"}',
            "the status server's body repeats the key 'status'",
        ),
        (b'{"endpoints":{},"status":NaN}', "the status server's body is not JSON"),
    ],
)
def test_upstream_parse_rejects_what_is_not_a_dynamo_body(body: bytes, reason: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        parse_status(200, body)
    assert str(raised.value) == reason


def test_upstream_parse_ignores_keys_it_does_not_use() -> None:
    body = b'{"endpoints":{"generate":"ready"},"status":"ready","uptime":{},"version":"0.9"}'
    assert parse_status(200, body) == ({"generate": READY}, READY)


def test_upstream_poll_timeout_is_the_interval_capped() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    assert UpstreamMirror("http://127.0.0.1:1/health", state, 2.0, 3).timeout == 2.0
    assert UpstreamMirror("http://127.0.0.1:1/health", state, 60.0, 3).timeout == POLL_TIMEOUT_CAP


def test_upstream_counts_polls_misses_and_latency(server: StatusServer) -> None:
    server.set("ready")
    _, mirror = mirrored(server)
    poll(mirror)
    server.set("down")
    poll(mirror, times=2)
    view = mirror.view()
    assert (mirror.polls, mirror.missed, mirror.consecutive_misses) == (3, 2, 2)
    assert mirror.last_latency is not None and 0 < mirror.last_latency < MARGIN
    assert view["polls"] == 3 and view["consecutive_misses"] == 2 and view["armed"] is True
    assert view["last_reason"] == "the status server cannot be reached"


def test_upstream_miss_warns_once_while_its_reason_lasts(
    server: StatusServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.set("down")
    _, mirror = mirrored(server)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        poll(mirror, times=4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the status server cannot be reached" in warnings[0].getMessage()


def test_upstream_run_follows_the_server_within_its_bounds(server: StatusServer) -> None:
    """notready -> ready, then down: notready at once, and the life ends after N misses."""
    state, mirror = mirrored(server, interval=INTERVAL, misses=3)
    recorder = Recorder(state)

    async def main() -> dict[str, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop))
        times: dict[str, float] = {}
        try:
            assert await until(lambda: mirror.polls >= 1, 1.0)
            assert state.status is NOTREADY
            times["ready"] = time.monotonic()
            server.set("ready")
            assert await until(lambda: state.status is READY, 1.0)
            times["down"] = time.monotonic()
            server.set("down")
            assert await until(lambda: not state.alive, 2.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 1.0)
        return times

    times = asyncio.run(main())
    became_ready = recorder.first(lambda t: t.name == "worker" and t.new == "ready")
    went_notready = recorder.first(
        lambda t: t.name == "worker" and t.new == "notready", times["down"]
    )
    ended = recorder.first(lambda t: t.subject is Subject.LIFE and t.new == "ended")
    assert became_ready is not None and went_notready is not None and ended is not None
    assert became_ready - times["ready"] < INTERVAL + MARGIN
    assert went_notready - times["down"] < INTERVAL + MARGIN
    # The third miss in a row: two intervals after the first one on the poll schedule (a late
    # poll shortens the next gap, so only "not at the first miss" is asserted below that).
    assert INTERVAL / 2 <= ended - went_notready < 2 * INTERVAL + MARGIN


def test_upstream_run_begins_a_new_life_when_the_server_is_back(server: StatusServer) -> None:
    server.set("down")
    state, mirror = mirrored(server, interval=INTERVAL, misses=1)
    state.set_endpoint("generate", READY, time.monotonic())
    recorder = Recorder(state)

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop))
        try:
            # Not armed before its first answer: down from the start ends nothing.
            await asyncio.sleep(3 * INTERVAL)
            assert state.alive and mirror.consecutive_misses >= 2
            server.set("ready")
            assert await until(lambda: state.status is READY, 1.0)
            server.set("down")
            assert await until(lambda: not state.alive, 1.0)
            back = time.monotonic()
            server.set("ready")
            assert await until(lambda: state.alive, 1.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 1.0)
        return back

    back = asyncio.run(main())
    began = recorder.first(lambda t: t.subject is Subject.LIFE and t.new == "alive", back)
    assert began is not None and began - back < INTERVAL + MARGIN
    assert state.life.number == 2
    assert state.status is READY


def test_upstream_run_polls_once_per_interval(server: StatusServer) -> None:
    server.set("ready")
    _, mirror = mirrored(server, interval=INTERVAL)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop))
        await asyncio.sleep(10 * INTERVAL + 0.05)
        stop.set()
        await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    arrivals = server.arrivals()
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert 7 <= len(arrivals) <= 12
    assert min(gaps) > INTERVAL / 2  # start to start; arrivals add the server's jitter


def test_upstream_run_stops_at_once_during_a_slow_poll(server: StatusServer) -> None:
    server.set("slow")
    _, mirror = mirrored(server, interval=2.0)

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop))
        assert await until(lambda: server.count == 1, 1.0)
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 1.0)
        return time.monotonic() - stopped

    assert asyncio.run(main()) < 0.1
    assert mirror.polls == 0
