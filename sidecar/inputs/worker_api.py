"""The worker's API on its Unix socket: one method per route, then the state machine.

`WorkerApi` is built from what its routes need and `build_control_app` serves it; each route
reads its request through `sidecar/inputs/socket_api.py`, so a request that fails changes
nothing (docs/protocol.md section 4.3), and reads the state only through the core's views.
The routes, bodies and answers are those of docs/protocol.md section 4.2, and
`sidecar/openapi.json` describes the same API.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sidecar.component import NotSaved
from sidecar.core.health import HealthState
from sidecar.core.records import CapacityError, Status, UnknownLease
from sidecar.core.verdict import Verdicts
from sidecar.core.views import LeaseView, Snapshot
from sidecar.http_answers import JSON, error_response, json_response, routing_refusal
from sidecar.inputs.session import SessionEndpoint
from sidecar.inputs.socket_api import (
    ApiError,
    check_lease_id,
    check_name,
    check_pid,
    check_query,
    check_status,
    check_ttl,
    instance_id_in_path,
    new_lease_id,
    parse_instance,
    read_json,
    require_object,
)
from sidecar.settings import Mode, Settings

# The socket API's own description (kept in the repository, checked by schemathesis).
OPENAPI = (importlib.resources.files("sidecar") / "openapi.json").read_bytes()
# How many instance ids `GET /v1/worker` lists per lease (a Dynamo worker has one).
SHOWN_INSTANCE_IDS = 16
# The fields of `GET /v1/worker` that adapters fill (the process watch, the active checks):
# each is `null` while its adapter is off, so the answer always has every field of
# docs/protocol.md section 4.5.
ADAPTER_FIELDS = ("process", "upstream", "canary")


async def nothing_to_save() -> None:
    """The durability wait of a sidecar without a state file: every change is as durable
    as it will ever be once it is applied."""


class WorkerApi:
    """The routes of the worker's socket (docs/protocol.md section 4.2), as methods.

    `adapter_views` gives the adapters' parts of `GET /v1/worker`, top-level keys merged into
    its answer; `saved` waits until the state file holds every change made so far.
    """

    def __init__(
        self,
        settings: Settings,
        state: HealthState,
        verdicts: Verdicts,
        stopping: asyncio.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
        adapter_views: Callable[[], Mapping[str, object]] = dict,
        saved: Callable[[], Awaitable[None]] = nothing_to_save,
    ) -> None:
        self.settings = settings
        self.state = state
        self.verdicts = verdicts
        self.clock = clock
        self.adapter_views = adapter_views
        self.saved = saved
        self.session = SessionEndpoint(state, clock, stopping, saved)

    def routes(self) -> list[Route]:
        """Each route of docs/protocol.md section 4.2 and the method that answers it; paths
        match exactly, and a `GET` route answers `HEAD` too (Starlette adds it)."""
        return [
            Route("/v1/endpoints/{name}", self.put_endpoint, methods=["PUT"]),
            Route("/v1/endpoints/{name}/ready", self.post_ready, methods=["POST"]),
            Route("/v1/endpoints/{name}/notready", self.post_notready, methods=["POST"]),
            Route("/v1/instances", self.post_instance, methods=["POST"]),
            Route("/v1/instances/{instance_id}", self.delete_instance, methods=["DELETE"]),
            Route("/v1/leases", self.post_lease, methods=["POST"]),
            Route("/v1/leases/{lease}", self.put_lease, methods=["PUT"]),
            Route("/v1/leases/{lease}", self.delete_lease, methods=["DELETE"]),
            Route("/v1/heartbeat", self.post_heartbeat, methods=["POST"]),
            Route("/v1/session", self.session, methods=["POST"]),
            Route("/v1/status", self.get_status, methods=["GET"]),
            Route("/v1/worker", self.get_worker, methods=["GET"]),
            Route("/v1/openapi.json", self.get_openapi, methods=["GET"]),
        ]

    async def _once_saved(self, answer: Response) -> Response:
        """The answer, once the state file holds the change it describes: a worker never
        repeats a signal answered 2xx, so a 2xx must survive the sidecar being killed right
        after it (docs/protocol.md section 9.2). The answer is made before the wait, so it
        says what this request changed."""
        try:
            await self.saved()
        except NotSaved as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        return answer

    # Each route reads the body before judging the path: refusing early would close the
    # connection under a client still sending its body (a broken pipe instead of an answer).

    async def put_endpoint(self, request: Request) -> Response:
        body = await read_json(request)
        name = check_name(request.path_params["name"], "endpoint name")
        body = require_object(body, ("status",))
        if "status" not in body:
            raise ApiError(
                422, 'missing field "status"; expected {"status": "ready"} or "notready"'
            )
        return await self._endpoint_answer(name, check_status(body["status"]))

    async def post_ready(self, request: Request) -> Response:
        await read_json(request)
        name = check_name(request.path_params["name"], "endpoint name")
        return await self._endpoint_answer(name, Status.READY)

    async def post_notready(self, request: Request) -> Response:
        await read_json(request)
        name = check_name(request.path_params["name"], "endpoint name")
        return await self._endpoint_answer(name, Status.NOTREADY)

    async def _endpoint_answer(self, name: str, status: Status) -> Response:
        try:
            record = self.state.set_endpoint(name, status, self.clock())
        except CapacityError as exc:
            raise ApiError(422, str(exc)) from None
        answer = {
            "endpoint": name,
            "life": self.state.current_life().number,
            "overall": self.verdicts.worker_status().value,
            "status": record.status.value,
        }
        return await self._once_saved(json_response(answer))

    async def post_instance(self, request: Request) -> Response:
        body = await read_json(request)
        lease = check_query(request, ("lease",)).get("lease")
        instance = parse_instance(body, None if lease is None else check_lease_id(lease))
        try:
            is_new = self.state.register_instance(instance, self.clock())
        except (CapacityError, UnknownLease) as exc:
            raise ApiError(422, str(exc)) from None
        answer = {
            "instance_id": instance.instance_id,
            "instances": self.state.instance_count,
            "url": instance.url,
        }
        return await self._once_saved(json_response(answer, 201 if is_new else 200))

    async def delete_instance(self, request: Request) -> Response:
        await read_json(request)
        instance_id = instance_id_in_path(request.path_params["instance_id"])
        # Looked up before the removal: a removal is a word from the worker, which would begin
        # a new life after one ended, and a refused request changes nothing (section 4.3).
        if not any(i.instance_id == instance_id for i in self.state.sorted_instances()):
            raise ApiError(404, f"no instance has instance_id {instance_id}")
        removed = self.state.remove_instances(instance_id, self.clock())
        return await self._once_saved(
            json_response({"instance_id": instance_id, "removed": removed})
        )

    async def post_lease(self, request: Request) -> Response:
        ttl = check_ttl(await read_json(request))
        try:
            lease = self.state.grant_lease(new_lease_id(self.state), ttl, self.clock())
        except CapacityError as exc:
            raise ApiError(422, str(exc)) from None
        answer = json_response({"lease": lease.lease_id, "ttl_seconds": lease.ttl}, 201)
        return await self._once_saved(answer)

    async def put_lease(self, request: Request) -> Response:
        await read_json(request)
        lease_id = check_lease_id(request.path_params["lease"])
        try:
            lease = self.state.renew_lease(lease_id, self.clock())
        except UnknownLease as exc:
            raise ApiError(404, str(exc)) from None
        # A renewal changes nothing the state file keeps (a restored lease gets a full TTL).
        return json_response({"lease": lease_id, "ttl_seconds": lease.ttl})

    async def delete_lease(self, request: Request) -> Response:
        await read_json(request)
        lease_id = check_lease_id(request.path_params["lease"])
        try:
            removed = self.state.revoke_lease(lease_id, self.clock())
        except UnknownLease as exc:
            raise ApiError(404, str(exc)) from None
        return await self._once_saved(json_response({"lease": lease_id, "removed": removed}))

    async def post_heartbeat(self, request: Request) -> Response:
        pid = check_pid(await read_json(request))
        self.state.heartbeat(self.clock(), pid)
        answer = {"life": self.state.current_life().number, "status": "alive"}
        return await self._once_saved(json_response(answer))

    async def get_status(self, request: Request) -> Response:
        if self.settings.mode is Mode.FRONTEND:
            answer = self.verdicts.frontend_health()
        else:
            answer = self.verdicts.health(self.clock())
        return Response(answer.body, media_type=JSON)

    async def get_worker(self, request: Request) -> Response:
        now = self.clock()
        seen = worker_view(self.state.snapshot(), self.state.lease_views(), now)
        return json_response({**seen, **dict.fromkeys(ADAPTER_FIELDS), **self.adapter_views()})

    async def get_openapi(self, request: Request) -> Response:
        return Response(OPENAPI, media_type=JSON)


def worker_view(seen: Snapshot, leases: Sequence[LeaseView], now: float) -> dict[str, object]:
    """The state's part of `GET /v1/worker` (docs/protocol.md section 4.5), for `status` and
    operators: durations from `now`, rounded to milliseconds."""
    life = seen.life
    live, reason = seen.live
    deadline = seen.heartbeat_deadline
    return {
        "life": life.number,
        "alive": seen.alive,
        "ever_ready": life.ever_ready,
        "end_reason": life.end_reason or None,
        "live": live,
        "reason": reason or None,
        "status": "notready" if seen.draining else seen.status.value,
        "draining": seen.draining,
        "pid": life.pid,
        "status_text": life.status_text or None,
        "sessions": life.sessions,
        "life_seconds": round(now - life.began_at, 3),
        "heartbeat_deadline_seconds": None if deadline is None else round(deadline - now, 3),
        "endpoints": {
            name: {
                "status": record.status.value,
                "since_seconds": round(now - record.since, 3),
                "transitions": record.transitions,
            }
            for name, record in seen.endpoints.items()
        },
        "instances": seen.instances,
        "leases": [lease_json(lease, now) for lease in leases],
    }


def lease_json(lease: LeaseView, now: float) -> dict[str, object]:
    """A lease as `GET /v1/worker` shows it: who holds it and which instances it owns. A
    worker registers one instance per endpoint under one id, so the ids are shown distinct."""
    expires = lease.expires_at
    return {
        "lease": lease.lease_id,
        "held_by": lease.held_by,
        "ttl_seconds": lease.ttl,
        "expires_in_seconds": None if expires is None else round(max(expires - now, 0), 3),
        "instances": len(lease.instance_ids),
        "instance_ids": sorted(set(lease.instance_ids))[:SHOWN_INSTANCE_IDS],
    }


def explain_refusal(request: Request, code: int, allowed: str) -> str:
    """What the router's refusal says: the path, and on a 405 the methods it serves."""
    if code == 405:
        return f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
    return f"no such path: {request.url.path}"


async def refuse(request: Request, exc: Exception) -> Response:
    """Every refusal as `{"error": ...}` (docs/protocol.md section 4.3): a route's own, and
    the router's 404 and 405."""
    if isinstance(exc, ApiError):
        return error_response(exc.message, exc.status_code, exc.headers)
    return routing_refusal(request, exc, explain_refusal)


def build_control_app(api: WorkerApi) -> Starlette:
    """The app uvicorn serves on the worker's socket."""
    app = Starlette(
        routes=api.routes(), exception_handlers={HTTPException: refuse, ApiError: refuse}
    )
    # A redirect is not an answer a worker's client expects: `/v1/status/` is simply unknown.
    app.router.redirect_slashes = False
    return app
