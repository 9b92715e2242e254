"""State to HTTP, pure: codes and bytes of every probe answer, against Dynamo's own examples."""

from __future__ import annotations

import json

import pytest
from upstreams import FRONTEND_EMPTY, FRONTEND_TWO

from sidecar.core.health import HealthState
from sidecar.core.records import EndCause, Instance, Liveness, Status
from sidecar.core.verdict import FrontendShape, Verdicts
from sidecar.inputs.socket_api import parse_instance

READY, NOTREADY = Status.READY, Status.NOTREADY

# Dynamo's documented answers (dynamo-health-checks.txt), compacted as Dynamo sends them.
SEED_NOTREADY = (
    b'{"endpoints":{"generate":"notready"},"status":"notready",'
    b'"uptime":{"nanos":313803539,"secs":12}}'
)
SEED_READY = (
    b'{"endpoints":{"clear_kv_blocks":"ready","generate":"ready","load_metrics":"ready"},'
    b'"status":"ready","uptime":{"nanos":356504530,"secs":18}}'
)
SEED_FRONTEND_EMPTY = b'{"instances":[],"message":"No endpoints available","status":"unhealthy"}'
SEED_INSTANCE_ID = 7587888160958628000


def with_uptime(body: bytes, secs: int, nanos: int) -> bytes:
    decoded = json.loads(body)
    decoded["uptime"] = {"nanos": nanos, "secs": secs}
    return json.dumps(decoded, separators=(",", ":"), sort_keys=True).encode()


def worker_state(required: tuple[str, ...] = ("generate",), **kwargs: object) -> HealthState:
    return HealthState(required=required, starting=NOTREADY, started_at=0.0, **kwargs)  # type: ignore[arg-type]


def frontend_state() -> HealthState:
    return HealthState(required=(), starting=NOTREADY, started_at=0.0, frontend=True)


def seed_instance(endpoint: str) -> Instance:
    return Instance(
        "dynamo",
        "backend",
        endpoint,
        SEED_INSTANCE_ID,
        {"nats_tcp": f"dynamo_backend.{endpoint}-694d98147d54be25"},
        endpoint == "generate",
    )


def test_verdict_health_before_endpoints_are_served_is_the_seed_503() -> None:
    answer = Verdicts(worker_state()).health(12.5)
    assert answer.code == 503
    assert answer.body == with_uptime(SEED_NOTREADY, 12, 500_000_000)
    assert len(answer.body) == 96


def test_verdict_health_after_endpoints_are_served_is_the_seed_200() -> None:
    state = worker_state()
    for name in ("generate", "clear_kv_blocks", "load_metrics"):
        state.set_endpoint(name, READY, 1.0)
    answer = Verdicts(state).health(18.25)
    assert answer.code == 200
    assert answer.body == with_uptime(SEED_READY, 18, 250_000_000)
    assert len(answer.body) == 139


def test_verdict_frontend_health_before_instances_is_the_seed_body() -> None:
    answer = Verdicts(worker_state(())).frontend_health()
    assert answer.code == 200
    assert answer.body == SEED_FRONTEND_EMPTY
    assert len(answer.body) == 72


def test_verdict_frontend_health_after_instances_is_the_seed_609_bytes() -> None:
    state = worker_state(())
    for name in ("load_metrics", "generate", "clear_kv_blocks"):
        state.register_instance(seed_instance(name), 1.0)
    answer = Verdicts(state).frontend_health()
    assert answer.code == 200
    assert len(answer.body) == 609
    decoded = json.loads(answer.body)
    assert decoded["endpoints"] == ["dyn://dynamo.backend.generate"]
    assert [i["endpoint"] for i in decoded["instances"]] == [
        "clear_kv_blocks",
        "generate",
        "load_metrics",
    ]
    assert str(SEED_INSTANCE_ID).encode() in answer.body


def test_verdict_frontend_instance_id_keeps_every_digit() -> None:
    state = worker_state(())
    state.register_instance(Instance("dynamo", "backend", "generate", 2**64 - 1, {}, True), 1.0)
    assert b'"instance_id":18446744073709551615' in Verdicts(state).frontend_health().body


def test_verdict_frontend_live_is_dynamos_body() -> None:
    answer = Verdicts(frontend_state()).frontend_live()
    assert (answer.code, answer.body) == (200, b'{"message":"Service is live","status":"live"}')


def test_verdict_live_body_adds_live_and_reason_when_failing() -> None:
    answer = Verdicts(worker_state()).live(1.0)
    assert answer.code == 503
    decoded = json.loads(answer.body)
    assert decoded["live"] is False
    assert decoded["reason"] == "the worker has not been ready yet in this life"
    assert list(decoded) == sorted(decoded)


def test_verdict_live_body_has_no_reason_when_live() -> None:
    state = worker_state()
    state.set_endpoint("generate", READY, 1.0)
    decoded = json.loads(Verdicts(state).live(2.0).body)
    assert decoded["live"] is True
    assert "reason" not in decoded


def test_verdict_live_with_health_liveness_follows_the_health_code() -> None:
    state = worker_state(liveness=Liveness.HEALTH)
    verdicts = Verdicts(state)
    state.set_endpoint("generate", READY, 1.0)
    state.set_endpoint("generate", NOTREADY, 2.0)
    assert verdicts.live(3.0).code == verdicts.health(3.0).code == 503


def test_verdict_drain_fails_health_and_keeps_live() -> None:
    state = worker_state()
    state.set_endpoint("generate", READY, 1.0)
    state.drain(2.0)
    verdicts = Verdicts(state)
    health = verdicts.health(3.0)
    assert health.code == 503
    assert json.loads(health.body)["draining"] is True
    assert json.loads(health.body)["status"] == "notready"
    assert verdicts.live(3.0).code == 200


def test_verdict_frontend_drain_answers_503_shutting_down() -> None:
    state = worker_state(())
    state.drain(2.0)
    answer = Verdicts(state).frontend_health()
    assert answer.code == 503
    assert json.loads(answer.body)["status"] == "shutting_down"


def test_verdict_cached_endpoint_json_follows_every_change() -> None:
    state = worker_state()
    verdicts = Verdicts(state)
    assert json.loads(verdicts.health(1.0).body)["endpoints"] == {"generate": "notready"}
    state.set_endpoint("generate", READY, 1.0)
    assert json.loads(verdicts.health(1.0).body)["endpoints"] == {"generate": "ready"}
    state.end_life("test", EndCause.EXITED, 2.0)
    assert json.loads(verdicts.health(2.0).body)["endpoints"] == {"generate": "notready"}


def test_verdict_uptime_counts_from_the_sidecar_start() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=50.0)
    decoded = json.loads(Verdicts(state).health(53.75).body)
    assert decoded["uptime"] == {"nanos": 750_000_000, "secs": 3}


# -- the Dynamo 1.6.1 frontend shape (docs/protocol.md section 3.6) --------------------------


def dynamo_1_6_1(state: HealthState) -> Verdicts:
    return Verdicts(state, FrontendShape.DYNAMO_1_6_1)


def registered(state: HealthState, *records: dict[str, object]) -> HealthState:
    for record in records:
        state.register_instance(parse_instance(record), 1.0)
    return state


def bare(namespace: str, component: str, endpoint: str, instance_id: int) -> dict[str, object]:
    return {
        "namespace": namespace,
        "component": component,
        "endpoint": endpoint,
        "instance_id": instance_id,
        "transport": {"tcp": "127.0.0.1:1"},
    }


def test_verdict_1_6_1_health_before_instances_is_healthy_with_empty_lists() -> None:
    answer = dynamo_1_6_1(worker_state(())).frontend_health()
    assert (answer.code, answer.body) == (200, FRONTEND_EMPTY)


def test_verdict_1_6_1_health_serves_real_records_back_byte_for_byte() -> None:
    records = json.loads(FRONTEND_TWO)["instances"]
    state = registered(worker_state(()), *reversed(records))
    answer = dynamo_1_6_1(state).frontend_health()
    assert (answer.code, answer.body) == (200, FRONTEND_TWO)
    assert len(answer.body) == 583


def test_verdict_1_6_1_health_lists_every_endpoint_not_only_the_models() -> None:
    state = registered(worker_state(()), bare("ns", "backend", "load_metrics", 1))
    assert json.loads(dynamo_1_6_1(state).frontend_health().body)["endpoints"] == [
        "dyn://ns.backend.load_metrics"
    ]
    # The documented shape lists only the endpoints that serve a model.
    assert json.loads(Verdicts(state).frontend_health().body)["endpoints"] == []


def test_verdict_1_6_1_instances_sort_as_dynamo_sorts_strings() -> None:
    ids = [4461388007575221651, 17724347960537578201, 16908527274292830767]
    state = registered(
        worker_state(()),
        *(bare("nsb", "backend", "generate", i) for i in ids),
        bare("ns", "backend", "generate", 1),
        bare("ns", "backend-x", "generate", 1),
    )
    body = json.loads(dynamo_1_6_1(state).frontend_health().body)
    order = [(i["namespace"], i["component"], i["instance_id"]) for i in body["instances"]]
    assert order == [
        ("ns", "backend-x", 1),
        ("ns", "backend", 1),
        ("nsb", "backend", 16908527274292830767),
        ("nsb", "backend", 17724347960537578201),
        ("nsb", "backend", 4461388007575221651),
    ]
    assert body["endpoints"] == [
        "dyn://ns.backend-x.generate",
        "dyn://ns.backend.generate",
        "dyn://nsb.backend.generate",
    ]


def test_verdict_1_6_1_drain_answers_503_not_ready_draining() -> None:
    state = registered(worker_state(()), bare("ns", "backend", "generate", 1))
    state.drain(2.0)
    answer = dynamo_1_6_1(state).frontend_health()
    assert answer.code == 503
    assert (
        answer.body == b'{"status":"not_ready","stage":"draining","message":"Service is not ready"}'
    )


def test_verdict_1_6_1_live_is_dynamos_body_in_its_order() -> None:
    answer = dynamo_1_6_1(frontend_state()).frontend_live()
    assert (answer.code, answer.body) == (200, b'{"status":"live","message":"Service is live"}')


@pytest.mark.parametrize(
    ("shape", "body"),
    [
        (FrontendShape.DOCUMENTED, b'{"message":"worker life 1 ended: gone","status":"not_live"}'),
        (
            FrontendShape.DYNAMO_1_6_1,
            b'{"status":"not_live","message":"worker life 1 ended: gone"}',
        ),
    ],
)
def test_verdict_frontend_live_fails_once_the_frontends_life_ended(
    shape: FrontendShape, body: bytes
) -> None:
    state = frontend_state()
    state.end_life("gone", EndCause.EXITED, 3.0)
    answer = Verdicts(state, shape).frontend_live()
    assert (answer.code, answer.body) == (503, body)


def test_verdict_frontend_live_stays_200_while_draining() -> None:
    state = frontend_state()
    state.drain(2.0)
    assert dynamo_1_6_1(state).frontend_live().code == 200
    assert Verdicts(state).frontend_live().code == 200
