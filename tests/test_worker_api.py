"""The worker's API (docs/protocol.md section 4) one route at a time, without a socket.

Each test builds a `WorkerApi` on a state of its own and calls one method with a request
made by hand, so what a route does is seen alone: its answer, its refusal, and what it leaves
in the state. tests/test_control_socket.py covers the same routes through the real socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

import sidecar
from sidecar.component import NotSaved
from sidecar.core.health import HealthState
from sidecar.core.records import EndCause, Instance, Status
from sidecar.core.verdict import Verdicts
from sidecar.inputs.socket_api import ApiError
from sidecar.inputs.worker_api import WorkerApi, build_control_app
from sidecar.settings import Settings

NOW = 100.0
LEASE = "0011223344556677"


def request(
    method: str, path: str, body: bytes = b"", path_params: Mapping[str, str] | None = None
) -> Request:
    """A request as Starlette's router hands it to a route: its body in one message."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "path_params": dict(path_params or {}),
    }
    return Request(scope, receive)


def worker_api(
    state: HealthState,
    adapter_views: Callable[[], Mapping[str, object]] = dict,
    saved: Callable[[], Awaitable[None]] | None = None,
) -> WorkerApi:
    extra: dict[str, Any] = {} if saved is None else {"saved": saved}
    return WorkerApi(
        Settings(),
        state,
        Verdicts(state),
        asyncio.Event(),
        clock=lambda: NOW,
        adapter_views=adapter_views,
        **extra,
    )


def new_state() -> HealthState:
    return HealthState(required=(), starting=Status.NOTREADY, started_at=0.0)


def body_of(response: Response) -> Any:
    return json.loads(bytes(response.body))


def instance(endpoint: str, instance_id: int, lease: str | None = None) -> Instance:
    return Instance("dynamo", "backend", endpoint, instance_id, {"nats_tcp": "x"}, True, {}, lease)


def test_get_worker_merges_the_adapters_views_as_top_level_keys() -> None:
    views = {"process": {"pid": 42}, "canary": {"generate": "passing"}}
    api = worker_api(new_state(), adapter_views=lambda: views)
    answer = body_of(asyncio.run(api.get_worker(request("GET", "/v1/worker"))))
    assert (answer["process"], answer["canary"], answer["upstream"]) == (
        {"pid": 42},
        {"generate": "passing"},
        None,
    )


def test_get_worker_without_adapters_has_exactly_the_documented_fields() -> None:
    document = json.loads((Path(sidecar.__file__).parent / "openapi.json").read_text())
    required = document["components"]["schemas"]["WorkerView"]["required"]
    answer = body_of(asyncio.run(worker_api(new_state()).get_worker(request("GET", "/v1/worker"))))
    assert sorted(answer) == sorted(required)


def test_get_worker_counts_a_leases_instances_but_shows_each_id_once() -> None:
    state = new_state()
    state.grant_lease(LEASE, 10.0, NOW)
    for endpoint in ("generate", "clear_kv_blocks"):
        state.register_instance(instance(endpoint, 7, LEASE), NOW)
    answer = body_of(asyncio.run(worker_api(state).get_worker(request("GET", "/v1/worker"))))
    (lease,) = answer["leases"]
    assert (lease["lease"], lease["instances"], lease["instance_ids"]) == (LEASE, 2, [7])


def test_delete_of_an_unknown_instance_after_the_life_ended_begins_no_life() -> None:
    state = new_state()
    state.end_life("its session connection closed", EndCause.EXITED, NOW)
    call = worker_api(state).delete_instance(
        request("DELETE", "/v1/instances/7", path_params={"instance_id": "7"})
    )
    with pytest.raises(ApiError) as refused:
        asyncio.run(call)
    assert (refused.value.status_code, refused.value.message) == (
        404,
        "no instance has instance_id 7",
    )
    assert (state.alive, state.current_life().number) == (False, 1)


def test_put_endpoint_with_an_invalid_status_changes_nothing() -> None:
    state = new_state()
    before = state.version
    call = worker_api(state).put_endpoint(
        request("PUT", "/v1/endpoints/generate", b'{"status":"busy"}', {"name": "generate"})
    )
    with pytest.raises(ApiError) as refused:
        asyncio.run(call)
    assert refused.value.message == 'status "busy" is invalid: expected "ready" or "notready"'
    assert (refused.value.status_code, state.version, state.snapshot().endpoints) == (
        422,
        before,
        {},
    )


def test_a_change_the_state_file_cannot_hold_is_503_with_retry_after() -> None:
    async def not_saved() -> None:
        raise NotSaved("the state file cannot be written: disk full")

    api = worker_api(new_state(), saved=not_saved)
    with pytest.raises(ApiError) as refused:
        asyncio.run(api.post_heartbeat(request("POST", "/v1/heartbeat")))
    assert (refused.value.status_code, refused.value.message, refused.value.headers) == (
        503,
        "the state file cannot be written: disk full",
        {"Retry-After": "1"},
    )


def test_the_routers_405_is_json_with_the_methods_the_path_serves_sorted() -> None:
    async def post_status() -> httpx.Response:
        app = build_control_app(worker_api(new_state()))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            return await client.post("/v1/status")

    response = asyncio.run(post_status())
    assert (response.status_code, response.headers["allow"]) == (405, "GET, HEAD")
    assert response.content == b'{"error":"POST is not allowed on /v1/status; allowed: GET, HEAD"}'
