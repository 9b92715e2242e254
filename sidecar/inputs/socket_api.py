"""What the worker's socket accepts: every request parsed and checked before the state is touched.

The routes (`sidecar/inputs/worker_api.py`) and the held session (`sidecar/inputs/session.py`)
read their bodies, queries and path parameters through these functions, so a request that
fails changes nothing (docs/protocol.md section 4.3): each refusal is an `ApiError` with the
status code and the line the worker sees, 400 (malformed), 404, 413 (body over 64 KiB) or 422
(well-formed, invalid). The limits and rules are those of docs/protocol.md sections 4.2 and 9.6.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from sidecar.core.health import HealthState
from sidecar.core.records import (
    LEASE_ID_PATTERN,
    LEASE_TTL,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    Instance,
    Status,
)
from sidecar.inputs.instance_rules import (
    INSTANCE_FIELDS,
    INSTANCE_ID_RULE,
    MAX_DEPTH,
    MAX_INSTANCE_ID,
)
from sidecar.settings import NAME_PATTERN, NAME_RULE

MAX_BODY = 64 * 1024
MAX_PID = 2**31 - 1
INSTANCE_OPTIONAL = ("model",)
TTL_RULE = f"expected a number of seconds from {MIN_LEASE_TTL:g} to {MAX_LEASE_TTL:g}"
# An instance id in a path: at most as many digits as 2**64 - 1 has.
PATH_INSTANCE_ID = re.compile(r"[0-9]{1,20}")


class ApiError(Exception):
    """A request the sidecar refuses, with the status code and the line the worker sees."""

    def __init__(
        self, status_code: int, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = headers


def shown(value: object) -> str:
    """A value as the worker wrote it: JSON (`null`, `true`, `"a b"`), not Python."""
    return json.dumps(value, ensure_ascii=False)[:200]


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
    """A body that is an object of known fields: a misspelt field is refused, not ignored,
    so a worker learns of its mistake at once."""
    if not isinstance(value, dict):
        raise ApiError(422, f"the body must be a JSON object with the fields {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ApiError(422, f"unknown field {shown(unknown[0])}; allowed: {', '.join(allowed)}")
    return value


def check_name(value: Any, what: str) -> str:
    """A name as Dynamo allows it; `what` says which name, for the message."""
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


def instance_id_in_path(text: str) -> int:
    """The id in `DELETE /v1/instances/{instance_id}`, checked as ASCII digits before it is
    read: `int` alone would take `+7`, ` 7`, `7_0` and non-ASCII digits for numbers."""
    if not PATH_INSTANCE_ID.fullmatch(text) or int(text) > MAX_INSTANCE_ID:
        raise ApiError(422, f"instance_id {shown(text)} is invalid: {INSTANCE_ID_RULE}")
    return int(text)


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
    """A lease id as the sidecar draws them: anything else cannot be one it granted."""
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
        if not state.holds_lease(lease_id):
            return lease_id
