"""Mirror mode against a real Dynamo-format status server and a real stand-in for a Dynamo
frontend's health path (tests/upstreams.py).

`probe()` is one poll over a real socket into a real `HealthState`; the `run()` tests time
each transition on the monotonic clock against its bound, with a margin for a loaded machine.
`parse_status` and `parse_frontend` are pure and tested on bytes alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from upstreams import (
    FRONTEND_DRAINING,
    FRONTEND_EMPTY,
    FRONTEND_STOPPING,
    FRONTEND_TWO,
    FRONTEND_TWO_ID,
    SEED_FRONTEND_EMPTY,
    SEED_NOTREADY,
    SEED_READY,
    FrontendServer,
    StatusServer,
    frontend_instance,
    frontend_server,
    frontend_worker,
    status_server,
)

from sidecar.core.health import HealthState
from sidecar.core.records import (
    MAX_ENDPOINTS,
    MAX_INSTANCE_BYTES,
    MAX_INSTANCES,
    Instance,
    Status,
    Subject,
    Transition,
)
from sidecar.inputs.mirror import FRONTEND, POLL_TIMEOUT_CAP, UpstreamMirror
from sidecar.inputs.mirror_judgement import (
    MAX_FRONTEND_BODY_BYTES,
    UpstreamError,
    parse_frontend,
    parse_status,
)

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
                await mirror.probe()
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


def test_upstream_state_refusing_the_map_is_a_miss_with_its_reason(server: StatusServer) -> None:
    """The server lists as many endpoints as the sidecar keeps, beside a required one it lacks."""
    endpoints = {f"e{i}": "ready" for i in range(MAX_ENDPOINTS)}
    server.answer(200, json.dumps({"endpoints": endpoints, "status": "ready"}).encode())
    state, mirror = mirrored(server, required=("decode",))
    poll(mirror)
    assert statuses(state)["decode"] == "notready"
    assert mirror.consecutive_misses == 1
    assert mirror.last_reason == (
        "the sidecar cannot keep what the status server lists "
        f"(the sidecar keeps at most {MAX_ENDPOINTS} endpoints)"
    )
    assert not mirror.armed


# -- a frontend's body, without HTTP ---------------------------------------------------------

REASON = "the status server's"
NAMES = "names are 1 to 128 characters of A-Z a-z 0-9 _ . -"
ID_RULE = "expected an integer from 0 to 18446744073709551615"


def frontend(*instances: dict[str, Any], status: str = "healthy", **keys: Any) -> bytes:
    """A frontend body listing these entries (any other top-level keys after them)."""
    return json.dumps({"status": status, "instances": list(instances), **keys}).encode()


def entry(**fields: Any) -> dict[str, Any]:
    """A 1.6.1 entry with some fields replaced (`None` removes one)."""
    base = frontend_instance("ns", "backend", "generate", 7)
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def refusal(code: int, body: bytes) -> str:
    with pytest.raises(UpstreamError) as raised:
        parse_frontend(code, body)
    return str(raised.value)


def test_frontend_parse_reads_the_1_6_1_body_before_any_worker() -> None:
    assert parse_frontend(200, FRONTEND_EMPTY) == []


def test_frontend_parse_reads_the_1_6_1_body_with_a_worker() -> None:
    clear, generate = parse_frontend(200, FRONTEND_TWO)
    assert (clear.namespace, clear.component, clear.endpoint) == (
        "ns1",
        "backend",
        "clear_kv_blocks",
    )
    assert generate.endpoint == "generate"
    assert clear.instance_id == generate.instance_id == FRONTEND_TWO_ID
    assert generate.transport == {"tcp": "127.0.0.1:38155/8f4ebc268409985b/ns1/backend/generate"}
    assert (clear.lease, generate.lease) == (None, None)


def test_frontend_parse_keeps_the_fields_it_does_not_know_in_their_order() -> None:
    _, generate = parse_frontend(200, FRONTEND_TWO)
    assert list(generate.extra.items()) == [
        ("device_type", "cuda"),
        ("request_plane_codec", "msgpack"),
    ]
    (instance,) = parse_frontend(200, frontend(entry(zeta=[1, {"b": 2}], alpha=None, beta=1.5)))
    assert list(instance.extra) == ["device_type", "request_plane_codec", "zeta", "beta"]
    assert instance.extra["zeta"] == [1, {"b": 2}]


def test_frontend_parse_sets_model_for_the_generate_endpoint_only() -> None:
    clear, generate = parse_frontend(200, FRONTEND_TWO)
    assert (clear.model, generate.model) == (False, True)


def test_frontend_parse_keeps_a_model_field_among_the_others() -> None:
    (instance,) = parse_frontend(200, frontend(entry(model=False)))
    assert instance.model is True
    assert instance.extra["model"] is False


def test_frontend_parse_reads_the_seeds_older_bodies() -> None:
    listed = (
        b'{"endpoints":["dyn://dynamo.backend.generate"],"instances":[{"component":"backend",'
        b'"endpoint":"generate","instance_id":7587888160958628000,"namespace":"dynamo",'
        b'"transport":{"nats_tcp":"dynamo_backend.generate-694d98147d54be25"}}],"status":"healthy"}'
    )
    assert parse_frontend(200, SEED_FRONTEND_EMPTY) == []
    (instance,) = parse_frontend(200, listed)
    assert instance.instance_id == 7587888160958628000
    assert instance.transport == {"nats_tcp": "dynamo_backend.generate-694d98147d54be25"}
    assert instance.extra == {}


def test_frontend_parse_takes_unhealthy_with_instances() -> None:
    assert len(parse_frontend(200, frontend(entry(), status="unhealthy"))) == 1


@pytest.mark.parametrize("body", [FRONTEND_DRAINING, FRONTEND_STOPPING])
def test_frontend_parse_reads_a_1_6_1_draining_answer_as_no_instances(body: bytes) -> None:
    assert parse_frontend(503, body) == []


def test_frontend_parse_copies_the_instances_of_a_shutting_down_answer() -> None:
    """The later sources' health.rs: 503 `shutting_down` with the list and more keys."""
    body = frontend(
        entry(),
        status="shutting_down",
        message="Service is shutting down",
        initial_discovery_complete=True,
        initial_discovery_error=None,
        endpoints=["dyn://ns.backend.generate"],
    )
    assert [i.instance_id for i in parse_frontend(503, body)] == [7]


def test_frontend_parse_copies_the_instances_of_a_not_ready_answer() -> None:
    body = frontend(entry(), status="not_ready", message="Initial model discovery in progress")
    assert [i.instance_id for i in parse_frontend(503, body)] == [7]


def test_frontend_parse_ignores_the_endpoints_list() -> None:
    assert parse_frontend(200, frontend(endpoints="not a list")) == []


def test_frontend_parse_takes_the_instance_id_bounds() -> None:
    body = frontend(entry(instance_id=0), entry(instance_id=2**64 - 1))
    assert [i.instance_id for i in parse_frontend(200, body)] == [0, 2**64 - 1]


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_frontend_parse_takes_an_instance_nested_32_levels() -> None:
    # The entry is level 1, its transport level 2, and 30 lists in it make 32.
    (instance,) = parse_frontend(200, frontend(entry(transport={"tcp": nested(30)})))
    assert instance.transport == {"tcp": nested(30)}


def test_frontend_parse_refuses_a_code_other_than_200_or_503() -> None:
    assert refusal(404, FRONTEND_EMPTY) == "the status server answered status 404"


def test_frontend_parse_refuses_a_body_that_is_not_json() -> None:
    assert refusal(200, b"<html>it works</html>") == f"{REASON} body is not JSON"


def test_frontend_parse_refuses_nan() -> None:
    assert refusal(200, frontend(entry()).replace(b"7,", b"NaN,")) == f"{REASON} body is not JSON"


def test_frontend_parse_refuses_a_number_beyond_a_double() -> None:
    body = frontend(entry(weight=1.5)).replace(b"1.5", b"1e400")
    assert refusal(200, body) == f"{REASON} body is not JSON"


def test_frontend_parse_refuses_a_repeated_key() -> None:
    body = b'{"status":"healthy","instances":[],"instances":[]}'
    assert refusal(200, body) == f"{REASON} body repeats the key 'instances'"


def test_frontend_parse_refuses_a_repeated_key_in_an_instance() -> None:
    body = frontend(entry()).replace(
        b'"device_type": "cuda"', b'"device_type": "cuda", "device_type": "cpu"'
    )
    assert refusal(200, body) == f"{REASON} body repeats the key 'device_type'"


def test_frontend_parse_refuses_a_body_that_is_not_an_object() -> None:
    assert refusal(200, b"[]") == f"{REASON} body is not a JSON object"


def test_frontend_parse_refuses_a_body_without_status() -> None:
    assert refusal(200, b'{"instances":[]}') == f"{REASON} body has no status"


@pytest.mark.parametrize(
    ("status", "shown"), [("ready", '"ready"'), (1, "1"), (None, "null"), ([], "?")]
)
def test_frontend_parse_refuses_an_unknown_status(status: object, shown: str) -> None:
    assert refusal(200, frontend(status=status)) == (
        f"{REASON} body has an unknown status {shown} "
        "(expected healthy, unhealthy, shutting_down or not_ready)"
    )


@pytest.mark.parametrize("status", ["shutting_down", "not_ready"])
def test_frontend_parse_refuses_200_with_a_shutdown_status(status: str) -> None:
    assert refusal(200, frontend(status=status)) == (
        f"the status server answered status 200 with a body saying {status}"
    )


@pytest.mark.parametrize("status", ["healthy", "unhealthy"])
def test_frontend_parse_refuses_503_with_a_serving_status(status: str) -> None:
    assert refusal(503, frontend(status=status)) == (
        f"the status server answered status 503 with a body saying {status}"
    )


def test_frontend_parse_refuses_a_200_without_instances() -> None:
    body = b'{"status":"healthy","endpoints":[]}'
    assert refusal(200, body) == f"{REASON} body has no instances list"


@pytest.mark.parametrize("code", [200, 503])
def test_frontend_parse_refuses_instances_that_are_not_a_list(code: int) -> None:
    status = "healthy" if code == 200 else "shutting_down"
    body = json.dumps({"status": status, "instances": {"a": 1}}).encode()
    assert refusal(code, body) == f"{REASON} body has no instances list"


def test_frontend_parse_refuses_more_instances_than_the_sidecar_keeps() -> None:
    body = b'{"status":"healthy","instances":[' + b"0," * MAX_INSTANCES + b"0]}"
    assert refusal(200, body) == (
        f"the status server lists {MAX_INSTANCES + 1} instances; the sidecar keeps {MAX_INSTANCES}"
    )


def test_frontend_parse_refuses_an_instance_that_is_not_an_object() -> None:
    assert refusal(200, frontend(entry(), "x")) == f"{REASON} instances[1] is not a JSON object"


@pytest.mark.parametrize(
    "field", ["namespace", "component", "endpoint", "instance_id", "transport"]
)
def test_frontend_parse_refuses_an_instance_without_a_known_field(field: str) -> None:
    assert refusal(200, frontend(entry(**{field: None}))) == f"{REASON} instances[0] has no {field}"


def test_frontend_parse_refuses_a_transport_that_is_not_an_object() -> None:
    body = frontend(entry(transport="tcp://127.0.0.1:1"))
    assert refusal(200, body) == f"{REASON} instances[0] has a transport that is not a JSON object"


@pytest.mark.parametrize("field", ["namespace", "component", "endpoint"])
def test_frontend_parse_refuses_an_invalid_name(field: str) -> None:
    assert refusal(200, frontend(entry(**{field: "a b"}))) == (
        f'{REASON} instances[0] has an invalid {field} "a b" ({NAMES})'
    )


def test_frontend_parse_refuses_a_name_that_is_not_a_string() -> None:
    assert refusal(200, frontend(entry(namespace=5))) == (
        f"{REASON} instances[0] has an invalid namespace 5 ({NAMES})"
    )


def test_frontend_parse_refuses_a_name_longer_than_128_characters() -> None:
    assert refusal(200, frontend(entry(component="c" * 129))) == (
        f'{REASON} instances[0] has an invalid component "{"c" * 39} ({NAMES})'
    )


@pytest.mark.parametrize("instance_id", [2**64, -1])
def test_frontend_parse_refuses_an_instance_id_out_of_range(instance_id: int) -> None:
    assert refusal(200, frontend(entry(instance_id=instance_id))) == (
        f"{REASON} instances[0] has an invalid instance_id {instance_id} ({ID_RULE})"
    )


@pytest.mark.parametrize(("instance_id", "shown"), [("7", '"7"'), (True, "true"), (7.0, "7.0")])
def test_frontend_parse_refuses_an_instance_id_that_is_not_an_integer(
    instance_id: object, shown: str
) -> None:
    assert refusal(200, frontend(entry(instance_id=instance_id))) == (
        f"{REASON} instances[0] has an invalid instance_id {shown} ({ID_RULE})"
    )


def test_frontend_parse_refuses_an_instance_nested_deeper_than_32_levels() -> None:
    body = frontend(entry(), entry(instance_id=8, transport={"tcp": nested(31)}))
    assert refusal(200, body) == (
        f"{REASON} instances[1] nests deeper than 32 levels of arrays and objects"
    )


def test_frontend_parse_refuses_an_instance_listed_twice() -> None:
    body = frontend(entry(), entry(instance_id=8), entry(device_type="cpu"))
    assert refusal(200, body) == f"{REASON} instances[2] repeats instances[0]"


# -- mirroring a frontend ----------------------------------------------------------------------

WORKER_ENDPOINTS = ("generate", "clear_kv_blocks")


@pytest.fixture
def front() -> Iterator[FrontendServer]:
    with frontend_server() as running:
        yield running


def mirrored_frontend(
    server: FrontendServer, interval: float = 1.0, misses: int = 3
) -> tuple[HealthState, UpstreamMirror]:
    state = HealthState(required=(), starting=NOTREADY, started_at=time.monotonic())
    mirror = UpstreamMirror(
        server.url + "/health", state, interval, misses, time.monotonic, FRONTEND
    )
    return state, mirror


def ids(state: HealthState) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for instance in state.instances.values():
        found.setdefault(instance.instance_id, set()).add(instance.endpoint)
    return found


def test_frontend_step_copies_the_listed_instances(front: FrontendServer) -> None:
    front.add(frontend_worker("ns1", "backend", FRONTEND_TWO_ID, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front)
    poll(mirror)
    assert ids(state) == {FRONTEND_TWO_ID: set(WORKER_ENDPOINTS)}
    assert mirror.armed and mirror.consecutive_misses == 0
    generate = state.instances[("ns1", "backend", "generate", FRONTEND_TWO_ID)]
    assert generate.extra == {"device_type": "cuda", "request_plane_codec": "msgpack"}


def test_frontend_step_drops_an_instance_the_frontend_no_longer_lists(
    front: FrontendServer,
) -> None:
    front.add(frontend_worker("ns", "backend", 1, WORKER_ENDPOINTS))
    front.add(frontend_worker("ns", "backend", 2, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front)
    poll(mirror)
    front.remove(1)
    poll(mirror)
    assert ids(state) == {2: set(WORKER_ENDPOINTS)}


def test_frontend_step_keeps_the_instances_of_leases(front: FrontendServer) -> None:
    state, mirror = mirrored_frontend(front)
    now = time.monotonic()
    state.grant_lease("0123456789abcdef", 60.0, now)
    leased = Instance("ns", "other", "generate", 9, {}, True, lease="0123456789abcdef")
    state.register_instance(leased, now)
    front.add(frontend_worker("ns", "backend", 1, ("generate",)))
    poll(mirror)
    front.set("down")
    poll(mirror)
    assert ids(state) == {9: {"generate"}}


def test_frontend_step_down_drops_the_mirrored_instances_at_once(front: FrontendServer) -> None:
    front.add(frontend_worker("ns", "backend", 1, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front)
    poll(mirror)
    front.set("down")
    poll(mirror)
    assert state.instances == {}
    assert state.alive
    assert mirror.last_reason == "the status server cannot be reached"


def test_frontend_misses_in_a_row_end_the_life(front: FrontendServer) -> None:
    state, mirror = mirrored_frontend(front, misses=3)
    poll(mirror)
    front.set("down")
    poll(mirror, times=2)
    assert state.alive
    poll(mirror)
    assert state.live() == (False, "worker life 1 ended: its status server did not answer 3 times")


def test_frontend_misses_before_the_first_answer_do_not_end_the_life(
    front: FrontendServer,
) -> None:
    front.set("down")
    state, mirror = mirrored_frontend(front, misses=2)
    poll(mirror, times=3)
    assert state.alive and not mirror.armed


def test_frontend_answer_after_the_end_begins_a_new_life_with_its_instances(
    front: FrontendServer,
) -> None:
    state, mirror = mirrored_frontend(front, misses=1)
    poll(mirror)
    front.set("down")
    poll(mirror)
    assert not state.alive
    front.add(frontend_worker("ns", "backend", 1, ("generate",)))
    front.set("serving")
    poll(mirror)
    assert state.alive and state.life.number == 2
    assert ids(state) == {1: {"generate"}}


def test_frontend_draining_answer_is_not_a_miss(front: FrontendServer) -> None:
    """1.6.1's 503 `not_ready`: the frontend answers, so nothing counts toward the misses; it
    lists no instance, so none is copied."""
    front.add(frontend_worker("ns", "backend", 1, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front, misses=1)
    poll(mirror)
    front.set("draining")
    poll(mirror, times=3)
    assert state.alive and mirror.armed
    assert (mirror.missed, mirror.consecutive_misses, mirror.last_reason) == (0, 0, None)
    assert state.instances == {}


def test_frontend_unusable_answer_is_a_miss_with_its_reason(front: FrontendServer) -> None:
    front.add(frontend_worker("ns", "backend", 1, ("generate",)))
    state, mirror = mirrored_frontend(front)
    poll(mirror)
    front.answer(200, b'{"status":"healthy","endpoints":[]}')
    poll(mirror)
    assert mirror.last_reason == "the status server's body has no instances list"
    assert state.instances == {}


def test_frontend_instances_the_state_cannot_keep_are_a_miss_with_its_reason(
    front: FrontendServer,
) -> None:
    """One instance whose record alone is larger than the state file keeps for instances."""
    big = frontend_instance("ns", "backend", "generate", 1)
    big["transport"] = {"tcp": "x" * MAX_INSTANCE_BYTES}
    front.add([big])
    state, mirror = mirrored_frontend(front)
    poll(mirror)
    assert state.instances == {} and not mirror.armed
    assert mirror.last_reason is not None
    assert mirror.last_reason.startswith(
        "the sidecar cannot keep what the status server lists (the instances would take "
    )
    assert mirror.last_reason.endswith(f"the sidecar keeps at most {MAX_INSTANCE_BYTES})")


def test_frontend_body_past_its_bound_is_a_miss(front: FrontendServer) -> None:
    front.answer(200, b" " * (MAX_FRONTEND_BODY_BYTES + 1))
    _, mirror = mirrored_frontend(front)
    poll(mirror)
    assert mirror.last_reason == (
        "the status server's body is too long "
        f"(the answer is longer than {MAX_FRONTEND_BODY_BYTES} bytes)"
    )


def test_frontend_body_bound_holds_every_list_the_state_can_keep() -> None:
    assert MAX_FRONTEND_BODY_BYTES >= 2 * MAX_INSTANCE_BYTES


def test_frontend_unchanged_list_is_checked_once(front: FrontendServer) -> None:
    front.add(frontend_worker("ns", "backend", 1, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front)
    parsed: list[int] = []

    def counting(code: int, body: bytes) -> list[Instance]:
        parsed.append(code)
        return parse_frontend(code, body)

    mirror.upstream = dataclasses.replace(FRONTEND, parse=counting)
    poll(mirror, times=3)
    front.remove(1)
    poll(mirror)
    assert len(parsed) == 2
    assert mirror.polls == 4 and state.instances == {}


def test_frontend_long_list_is_copied_whole(front: FrontendServer) -> None:
    """Thousands of instances (parsed off the event loop) arrive in one poll."""
    for worker in range(1000):
        front.add(frontend_worker("ns", "backend", worker, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front)
    poll(mirror)
    assert len(state.instances) == 2000


def test_frontend_run_drops_a_leaving_instance_within_one_interval(front: FrontendServer) -> None:
    front.add(frontend_worker("ns", "backend", 1, WORKER_ENDPOINTS))
    front.add(frontend_worker("ns", "backend", 2, WORKER_ENDPOINTS))
    state, mirror = mirrored_frontend(front, interval=INTERVAL)

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(mirror.run(stop))
        try:
            assert await until(lambda: len(state.instances) == 4, 1.0)
            left = time.monotonic()
            front.remove(1)
            assert await until(lambda: ids(state) == {2: set(WORKER_ENDPOINTS)}, 1.0)
            return time.monotonic() - left
        finally:
            stop.set()
            await asyncio.wait_for(task, 1.0)

    assert asyncio.run(main()) < INTERVAL + MARGIN
