"""The Starlette app on the worker's Unix socket: validate, then call the state machine.

Every request is checked completely before the state is touched, so a request that fails
changes nothing (docs/protocol.md section 4). Errors are JSON `{"error": ...}` with 400 (malformed),
404 (unknown path or instance), 405, 413 (body over 64 KiB) or 422 (well-formed, invalid).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sidecar.core.health import HealthState
from sidecar.core.records import (
    LEASE_ID_PATTERN,
    LEASE_TTL,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    CapacityError,
    Instance,
    Status,
    UnknownLease,
)
from sidecar.core.verdict import Verdicts, dumps, refusal_headers
from sidecar.outputs.statefile import NotSaved
from sidecar.settings import NAME_PATTERN, NAME_RULE, Mode, Settings

JSON = "application/json"
MAX_BODY = 64 * 1024
MAX_DEPTH = 32
MAX_INSTANCE_ID = 2**64 - 1
MAX_PID = 2**31 - 1
# The socket API's own description (kept in the repository, checked by schemathesis).
OPENAPI = (importlib.resources.files("sidecar") / "openapi.json").read_bytes()
INSTANCE_ID_RULE = f"expected an integer from 0 to {MAX_INSTANCE_ID}"
INSTANCE_FIELDS = ("namespace", "component", "endpoint", "instance_id", "transport")
INSTANCE_OPTIONAL = ("model",)
TTL_RULE = f"expected a number of seconds from {MIN_LEASE_TTL:g} to {MAX_LEASE_TTL:g}"
# How many instance ids `GET /v1/worker` lists per lease (a Dynamo worker has one).
SHOWN_INSTANCE_IDS = 16


class ApiError(Exception):
    """A request the sidecar refuses, with the status code and the line the worker sees."""

    def __init__(
        self, status_code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


async def nothing_to_save() -> None:
    """The durability wait of a sidecar without a state file: every change is as durable
    as it will ever be once it is applied."""


async def once_saved(saved: Callable[[], Awaitable[None]], answer: Response) -> Response:
    """The answer, once the state file holds the change it describes: a worker never repeats
    a signal answered 2xx, so a 2xx must survive the sidecar being killed right after it.
    The answer is made before the wait, so it says what this request changed."""
    try:
        await saved()
    except NotSaved as exc:
        raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
    return answer


def shown(value: object) -> str:
    """A value as the worker wrote it: JSON (`null`, `true`, `"a b"`), not Python."""
    return json.dumps(value, ensure_ascii=False)[:200]


def json_response(
    value: object, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(dumps(value), status_code=status_code, headers=headers, media_type=JSON)


async def read_json(request: Request) -> Any:
    """The body as JSON, or `None` when there is none; 413 past 64 KiB, 400 when malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the body has {declared} bytes; the limit is {MAX_BODY}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise ApiError(413, f"the body is over the limit of {MAX_BODY} bytes")
    except ClientDisconnect:
        # Nobody is left to read an answer; this is the client's doing, not an error of ours.
        raise ApiError(400, "the client hung up before its body ended") from None
    if not body.strip():
        return None
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if _nesting(value) > MAX_DEPTH:
        raise ApiError(422, f"the body nests deeper than {MAX_DEPTH} levels of arrays and objects")
    return value


def _refuse_constant(name: str) -> None:
    # Python's json takes NaN and Infinity, which no JSON client could read back.
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    # `1e400` would be read as infinity and served back as `Infinity`, which is not JSON.
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def _nesting(value: Any) -> int:
    """How deep arrays and objects nest, without recursion: what is accepted is encoded
    again later (the state file, the health path) by code that recurses, deeper in the stack."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                pending.extend((child, depth + 1) for child in item)
    return deepest


def require_object(value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(422, f"the body must be a JSON object with the fields {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ApiError(422, f"unknown field {shown(unknown[0])}; allowed: {', '.join(allowed)}")
    return value


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ApiError(422, f"{what} {shown(value)} is invalid: names are {NAME_RULE}")
    return value


def check_status(value: Any) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise ApiError(
            422, f'status {shown(value)} is invalid: expected "ready" or "notready"'
        ) from None


def check_instance_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INSTANCE_ID:
        raise ApiError(
            422,
            f"instance_id {shown(value)} is invalid: {INSTANCE_ID_RULE}",
        )
    return value


def check_pid(body: Any) -> int | None:
    """The optional `{"pid": 123}` of a heartbeat or a session."""
    if body is None:
        return None
    pid = require_object(body, ("pid",)).get("pid")
    if pid is None:
        return None
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 <= pid <= MAX_PID:
        raise ApiError(422, f"pid {shown(pid)} is invalid: expected an integer from 1 to {MAX_PID}")
    return pid


def parse_instance(body: Any, lease: str | None = None) -> Instance:
    """An instance as the worker registered it: the known fields are checked, and the fields
    a later Dynamo adds are kept as given (bounded with the body, in size and depth)."""
    if not isinstance(body, dict):
        names = ", ".join(INSTANCE_FIELDS + INSTANCE_OPTIONAL)
        raise ApiError(422, f"the body must be a JSON object with the fields {names}")
    fields: dict[str, Any] = body
    missing = [name for name in INSTANCE_FIELDS if name not in fields]
    if missing:
        raise ApiError(
            422, f"missing field {shown(missing[0])}; required: {', '.join(INSTANCE_FIELDS)}"
        )
    transport = fields["transport"]
    if not isinstance(transport, dict):
        raise ApiError(422, 'transport must be a JSON object, such as {"nats_tcp": "subject"}')
    endpoint = check_name(fields["endpoint"], "endpoint")
    model = fields.get("model", endpoint == "generate")
    if not isinstance(model, bool):
        raise ApiError(422, f"model {shown(model)} is invalid: expected true or false")
    return Instance(
        namespace=check_name(fields["namespace"], "namespace"),
        component=check_name(fields["component"], "component"),
        endpoint=endpoint,
        instance_id=check_instance_id(fields["instance_id"]),
        transport=transport,
        model=model,
        extra={k: v for k, v in fields.items() if k not in INSTANCE_FIELDS + INSTANCE_OPTIONAL},
        lease=lease,
    )


def check_query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one the route takes."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            names = ", ".join(allowed) or "none"
            raise ApiError(422, f"unknown query parameter {shown(name)}; allowed: {names}")
        if name in params:
            raise ApiError(422, f"the query parameter {name} is given twice")
        params[name] = value
    return params


def check_lease_id(value: str) -> str:
    if not LEASE_ID_PATTERN.fullmatch(value):
        raise ApiError(
            422, f"lease {shown(value)} is invalid: expected 16 hexadecimal digits (0-9 a-f)"
        )
    return value


def check_ttl(body: Any) -> float:
    """The `{"ttl_seconds": N}` of a new lease; without a body, Dynamo's 10 seconds."""
    if body is None:
        return LEASE_TTL
    ttl = require_object(body, ("ttl_seconds",)).get("ttl_seconds", LEASE_TTL)
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not MIN_LEASE_TTL <= ttl <= MAX_LEASE_TTL
    ):
        raise ApiError(422, f"ttl_seconds {shown(ttl)} is invalid: {TTL_RULE}")
    return float(ttl)


def new_lease_id(state: HealthState) -> str:
    """64 random bits: a registrant cannot guess, and so cannot revoke, another's lease."""
    while True:
        lease_id = secrets.token_hex(8)
        if lease_id not in state.leases:
            return lease_id


def lease_views(state: HealthState, now: float) -> list[dict[str, object]]:
    """Each lease as `GET /v1/worker` shows it: who holds it and which instances it owns."""
    owned: dict[str, set[int]] = {lease_id: set() for lease_id in state.leases}
    counts = dict.fromkeys(state.leases, 0)
    for instance in state.instances.values():
        if instance.lease is not None:
            owned[instance.lease].add(instance.instance_id)
            counts[instance.lease] += 1
    views = []
    for lease_id in sorted(state.leases):
        lease = state.leases[lease_id]
        expires = lease.expires_at
        views.append(
            {
                "lease": lease_id,
                "held_by": lease.holder(),
                "ttl_seconds": lease.ttl,
                "expires_in_seconds": None if expires is None else round(max(expires - now, 0), 3),
                "instances": counts[lease_id],
                "instance_ids": sorted(owned[lease_id])[:SHOWN_INSTANCE_IDS],
            }
        )
    return views


class SessionEndpoint:
    """`POST /v1/session`: a response held open for as long as the worker lives.

    The kernel closes the worker's end even on SIGKILL, so the connection closing is the
    most reliable sign of the worker's death that needs no shared process namespace. When
    the sidecar itself stops, the response is ended instead and the life goes on. The
    session holds a lease (a new one, or with `?lease=ID` the one it held before a sidecar
    restart): the instances registered with it leave the moment the connection closes.
    """

    def __init__(
        self,
        state: HealthState,
        clock: Callable[[], float],
        stopping: asyncio.Event,
        saved: Callable[[], Awaitable[None]],
    ):
        self.state = state
        self.clock = clock
        self.stopping = stopping
        self.saved = saved

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            pid = check_pid(await read_json(request))
            if self.stopping.is_set():
                # Opened now, it would be ended at once: a reconnecting client would spin.
                raise ApiError(
                    503, "the sidecar is stopping; open the session again", {"Retry-After": "1"}
                )
            lease_id = self._lease(request)
            token = self.state.open_session(self.clock(), pid, lease_id)
        except CapacityError as exc:
            await json_response({"error": str(exc)}, 422)(scope, receive, send)
            return
        except ApiError as exc:
            refusal = json_response({"error": exc.message}, exc.status_code, exc.headers)
            await refusal(scope, receive, send)
            return
        life = self.state.life.number
        # The first line names the life, which the session may have begun: it waits for the
        # file like any answer. A file that cannot be written does not refuse the session:
        # the held connection is how the sidecar sees the worker die, saved or not.
        with contextlib.suppress(NotSaved):
            await self.saved()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-ndjson")],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": dumps({"lease": lease_id, "life": life, "session": "open"}) + b"\n",
                "more_body": True,
            }
        )
        if await self._wait_for_disconnect(receive):
            self.state.close_session(token, self.clock())
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _lease(self, request: Request) -> str:
        held = check_query(request, ("lease",)).get("lease")
        if held is None:
            return new_lease_id(self.state)
        if check_lease_id(held) not in self.state.leases:
            raise ApiError(404, str(UnknownLease(held)))
        return held

    async def _wait_for_disconnect(self, receive: Receive) -> bool:
        """True when the worker closed the connection, False when the sidecar is stopping."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                message = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait(
                    {message, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if message in done:
                    if message.result()["type"] == "http.disconnect":
                        return True
                    continue
                message.cancel()
                return False
        finally:
            stopping.cancel()


def worker_view(
    state: HealthState, now: float, process: Mapping[str, object] | None
) -> dict[str, object]:
    """`GET /v1/worker`: the worker's life, for `status` and operators."""
    life = state.life
    live, reason = state.live()
    deadline = state.heartbeat_deadline()
    return {
        "life": life.number,
        "alive": state.alive,
        "ever_ready": life.ever_ready,
        "end_reason": life.end_reason or None,
        "live": live,
        "reason": reason or None,
        "status": "notready" if state.draining else state.status.value,
        "draining": state.draining,
        "pid": life.pid,
        "status_text": life.status_text or None,
        "sessions": len(life.sessions),
        "life_seconds": round(now - life.began_at, 3),
        "heartbeat_deadline_seconds": None if deadline is None else round(deadline - now, 3),
        "endpoints": {
            name: {
                "status": record.status.value,
                "since_seconds": round(now - record.since, 3),
                "transitions": record.transitions,
            }
            for name, record in state.endpoints.items()
        },
        "instances": len(state.instances),
        "leases": lease_views(state, now),
        "process": process,
    }


def build_control_app(
    settings: Settings,
    state: HealthState,
    verdicts: Verdicts,
    stopping: asyncio.Event,
    clock: Callable[[], float] = time.monotonic,
    process_info: Callable[[], Mapping[str, object] | None] = lambda: None,
    checks_info: Callable[[], Mapping[str, object]] = dict,
    saved: Callable[[], Awaitable[None]] = nothing_to_save,
) -> Starlette:
    """The worker's API for one state; `process_info` is what the process watch sees, and
    `saved` waits until the state file holds every change made so far."""

    async def endpoint_answer(name: str, status: Status) -> Response:
        try:
            record = state.set_endpoint(name, status, clock())
        except CapacityError as exc:
            raise ApiError(422, str(exc)) from None
        answer = {
            "endpoint": name,
            "life": state.life.number,
            "overall": verdicts.worker_status().value,
            "status": record.status.value,
        }
        return await once_saved(saved, json_response(answer))

    # Each handler reads the body before judging the path: refusing early would close the
    # connection under a client still sending its body (a broken pipe instead of an answer).
    async def put_endpoint(request: Request) -> Response:
        body = await read_json(request)
        name = check_name(request.path_params["name"], "endpoint name")
        body = require_object(body, ("status",))
        if "status" not in body:
            raise ApiError(
                422, 'missing field "status"; expected {"status": "ready"} or "notready"'
            )
        return await endpoint_answer(name, check_status(body["status"]))

    async def post_ready(request: Request) -> Response:
        await read_json(request)
        name = check_name(request.path_params["name"], "endpoint name")
        return await endpoint_answer(name, Status.READY)

    async def post_notready(request: Request) -> Response:
        await read_json(request)
        name = check_name(request.path_params["name"], "endpoint name")
        return await endpoint_answer(name, Status.NOTREADY)

    async def post_instance(request: Request) -> Response:
        body = await read_json(request)
        lease = check_query(request, ("lease",)).get("lease")
        instance = parse_instance(body, None if lease is None else check_lease_id(lease))
        try:
            is_new = state.register_instance(instance, clock())
        except (CapacityError, UnknownLease) as exc:
            raise ApiError(422, str(exc)) from None
        body = {
            "instance_id": instance.instance_id,
            "instances": len(state.instances),
            "url": instance.url,
        }
        return await once_saved(saved, json_response(body, 201 if is_new else 200))

    async def delete_instance(request: Request) -> Response:
        await read_json(request)
        text = request.path_params["instance_id"]
        if not re.fullmatch(r"[0-9]{1,20}", text) or int(text) > MAX_INSTANCE_ID:
            raise ApiError(
                422,
                f"instance_id {shown(text)} is invalid: {INSTANCE_ID_RULE}",
            )
        instance_id = int(text)
        if not any(key[3] == instance_id for key in state.instances):
            raise ApiError(404, f"no instance has instance_id {instance_id}")
        removed = state.remove_instances(instance_id, clock())
        answer = json_response({"instance_id": instance_id, "removed": removed})
        return await once_saved(saved, answer)

    async def post_lease(request: Request) -> Response:
        ttl = check_ttl(await read_json(request))
        try:
            lease = state.grant_lease(new_lease_id(state), ttl, clock())
        except CapacityError as exc:
            raise ApiError(422, str(exc)) from None
        answer = json_response({"lease": lease.lease_id, "ttl_seconds": lease.ttl}, 201)
        return await once_saved(saved, answer)

    def lease_in_path(request: Request) -> str:
        return check_lease_id(request.path_params["lease"])

    async def put_lease(request: Request) -> Response:
        await read_json(request)
        lease_id = lease_in_path(request)
        try:
            lease = state.renew_lease(lease_id, clock())
        except UnknownLease as exc:
            raise ApiError(404, str(exc)) from None
        # A renewal changes nothing the state file keeps (a restored lease gets a full TTL).
        return json_response({"lease": lease_id, "ttl_seconds": lease.ttl})

    async def delete_lease(request: Request) -> Response:
        await read_json(request)
        lease_id = lease_in_path(request)
        try:
            removed = state.revoke_lease(lease_id, clock())
        except UnknownLease as exc:
            raise ApiError(404, str(exc)) from None
        return await once_saved(saved, json_response({"lease": lease_id, "removed": removed}))

    async def post_heartbeat(request: Request) -> Response:
        pid = check_pid(await read_json(request))
        state.heartbeat(clock(), pid)
        answer = json_response({"life": state.life.number, "status": "alive"})
        return await once_saved(saved, answer)

    async def get_status(request: Request) -> Response:
        if settings.mode is Mode.FRONTEND:
            answer = verdicts.frontend_health()
        else:
            answer = verdicts.health(clock())
        return Response(answer.body, media_type=JSON)

    async def get_openapi(request: Request) -> Response:
        return Response(OPENAPI, media_type=JSON)

    async def get_worker(request: Request) -> Response:
        return json_response({**worker_view(state, clock(), process_info()), **checks_info()})

    async def refuse(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            return json_response({"error": exc.message}, exc.status_code, exc.headers)
        assert isinstance(exc, HTTPException)
        headers = refusal_headers(exc.headers)
        if exc.status_code == 405:
            allowed = headers.get("Allow", "")
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        else:
            message = f"no such path: {request.url.path}"
        return Response(
            dumps({"error": message}),
            status_code=exc.status_code,
            headers=headers,
            media_type=JSON,
        )

    routes = [
        Route("/v1/endpoints/{name}", put_endpoint, methods=["PUT"]),
        Route("/v1/endpoints/{name}/ready", post_ready, methods=["POST"]),
        Route("/v1/endpoints/{name}/notready", post_notready, methods=["POST"]),
        Route("/v1/instances", post_instance, methods=["POST"]),
        Route("/v1/instances/{instance_id}", delete_instance, methods=["DELETE"]),
        Route("/v1/leases", post_lease, methods=["POST"]),
        Route("/v1/leases/{lease}", put_lease, methods=["PUT"]),
        Route("/v1/leases/{lease}", delete_lease, methods=["DELETE"]),
        Route("/v1/heartbeat", post_heartbeat, methods=["POST"]),
        Route("/v1/session", SessionEndpoint(state, clock, stopping, saved), methods=["POST"]),
        Route("/v1/status", get_status, methods=["GET"]),
        Route("/v1/worker", get_worker, methods=["GET"]),
        Route("/v1/openapi.json", get_openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: refuse, ApiError: refuse})
    # A redirect is not an answer a worker's client expects: `/v1/status/` is simply unknown.
    app.router.redirect_slashes = False
    return app
