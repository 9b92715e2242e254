"""What a mirrored status server's answer means: the endpoints or instances to copy, or a miss
and why (docs/protocol.md section 8.1).

Pure: bytes and a status code in, a value out, no I/O. The mirror (`sidecar/inputs/mirror.py`)
hands every reply of its prober to `judge_poll` with the parse of what it mirrors:

- `parse_status`, a Dynamo worker's system status server (`DYN_SYSTEM_ENABLED=true`): `200`
  when it is ready and `503` when it is not, with the same JSON body either way,
  `{"endpoints": {...}, "status": "ready"|"notready", "uptime": {...}}`; 503 bodies are
  answers too, copied as the worker's word;
- `parse_frontend`, a Dynamo frontend's own `/health`: `200
  {"status":"healthy","endpoints":[...],"instances":[...]}` (1.6.1, also before any worker,
  with empty lists; the seed's older frontend says `"status":"unhealthy"` with no instance).
  A frontend that shuts down answers `503` with `not_ready` (1.6.1:
  `{"status":"not_ready","stage":"draining",...}`, no list) or `shutting_down` (later sources,
  with the list): an answer, not a miss, since the frontend is neither hung nor gone.

Anything else is a miss, with the reason the transitions and logs show: nothing listens, no
answer within the poll's timeout, a status code other than 200 or 503, a body that is not
Dynamo's (not JSON, no endpoint map or instance list, an unknown status, an invalid name, a
code that contradicts the body's status).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, assert_never

from sidecar.core.records import MAX_ENDPOINTS, MAX_INSTANCE_BYTES, MAX_INSTANCES, Instance, Status
from sidecar.inputs.instance_rules import (
    INSTANCE_FIELDS,
    INSTANCE_ID_RULE,
    MAX_DEPTH,
    MAX_INSTANCE_ID,
)
from sidecar.inputs.replies import (
    MAX_BODY_BYTES,
    Answer,
    Broken,
    Closed,
    HttpFailure,
    Reply,
    TimedOut,
    TooLong,
    Unreachable,
)
from sidecar.settings import NAME_PATTERN, NAME_RULE

# The most of a frontend's body that is read: every body whose instances the state can keep.
# Its instances take at most what their records take in the state file (MAX_INSTANCE_BYTES:
# a record holds the same names, id, transport and other fields, plus `extra`, `lease` and
# `model`), its `endpoints` list at most as much again (one URL per distinct endpoint, each
# shorter than the record of an instance that serves it), and the rest is a few keys: so
# twice MAX_INSTANCE_BYTES, plus MAX_BODY_BYTES for spacing and keys the sidecar ignores
# (13 MiB). A longer body lists more than the state could keep, and is a miss unread.
MAX_FRONTEND_BODY_BYTES = 2 * MAX_INSTANCE_BYTES + MAX_BODY_BYTES
_STATUSES = {status.value: status for status in Status}
# What a frontend's health path says, and the code it says it with: 1.6.1 answers `healthy`
# (also with no instance), the seed's older frontend `unhealthy` with none; shutting down,
# 1.6.1 answers `not_ready` (with `stage`, without instances) and later sources
# `shutting_down` (and `not_ready` while their first discovery runs), with them.
FRONTEND_STATUSES = {"healthy": 200, "unhealthy": 200, "shutting_down": 503, "not_ready": 503}


class UpstreamError(Exception):
    """A body that is not the mirrored server's answer; `str()` is the reason, shown in
    transitions."""


# -- the status body ------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise UpstreamError(f"the status server's body repeats the key {key[:40]!r}")
        data[key] = value
    return data


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # `1e400` would be read as infinity, kept, and served back as `Infinity`, which is not JSON.
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def _loads(body: bytes, *, finite: bool = False) -> Any:
    """The body as JSON: no repeated key at any level, no NaN or Infinity, and with `finite`
    no number beyond a double (what is kept is served again)."""
    try:
        return json.loads(
            body,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float if finite else float,
        )
    except UpstreamError:
        raise
    except (ValueError, RecursionError):
        raise UpstreamError("the status server's body is not JSON") from None


def _shown(value: object) -> str:
    """A value as the server wrote it (JSON), cut to 40 characters; `?` for an array or object."""
    return json.dumps(value)[:40] if isinstance(value, str | int | float | bool | None) else "?"


def _status(value: object, what: str) -> Status:
    status = _STATUSES.get(value) if isinstance(value, str) else None
    if status is None:
        shown = json.dumps(value)[:40] if isinstance(value, str | int | float | bool) else "?"
        raise UpstreamError(
            f"the status server's body has an unknown {what} {shown} (expected ready or notready)"
        )
    return status


def parse_status(code: int, body: bytes) -> tuple[dict[str, Status], Status]:
    """The endpoint map and status of a Dynamo status server's answer.

    Raises UpstreamError, with the reason, for anything that is not such an answer. Keys
    other than `endpoints` and `status` (`uptime`, and any a later Dynamo adds) are ignored.
    """
    if code not in (200, 503):
        raise UpstreamError(f"the status server answered status {code}")
    data = _loads(body)
    if not isinstance(data, dict):
        raise UpstreamError("the status server's body is not a JSON object")
    if "status" not in data:
        raise UpstreamError("the status server's body has no status")
    status = _status(data["status"], "status")
    raw = data.get("endpoints")
    if not isinstance(raw, dict):
        raise UpstreamError("the status server's body has no endpoints map")
    if len(raw) > MAX_ENDPOINTS:
        raise UpstreamError(
            f"the status server lists {len(raw)} endpoints; the sidecar keeps {MAX_ENDPOINTS}"
        )
    endpoints: dict[str, Status] = {}
    for name, value in raw.items():
        if not NAME_PATTERN.fullmatch(name):
            raise UpstreamError(f"the status server's body names an invalid endpoint {name[:40]!r}")
        endpoints[name] = _status(value, f"status for {name}")
    if (code == 200) != (status is Status.READY):
        raise UpstreamError(
            f"the status server answered status {code} with a body saying {status.value}"
        )
    return endpoints, status


# -- the frontend's body ---------------------------------------------------------------------


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` levels (the value itself is level
    1), without recursion, as the worker's socket measures a body."""
    if not isinstance(value, dict | list):
        return False
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _frontend_instance(index: int, value: object) -> Instance:
    """One entry of a frontend's `instances`, checked as the worker's socket checks a
    registration (docs/protocol.md section 4.2); the fields it does not know are kept in order."""
    where = f"the status server's instances[{index}]"
    if not isinstance(value, dict):
        raise UpstreamError(f"{where} is not a JSON object")
    if _nests_deeper(value, MAX_DEPTH):
        raise UpstreamError(f"{where} nests deeper than {MAX_DEPTH} levels of arrays and objects")
    fields: dict[str, Any] = value
    for name in INSTANCE_FIELDS:
        if name not in fields:
            raise UpstreamError(f"{where} has no {name}")
    if not isinstance(fields["transport"], dict):
        raise UpstreamError(f"{where} has a transport that is not a JSON object")
    for name in ("endpoint", "namespace", "component"):
        text = fields[name]
        if not isinstance(text, str) or not NAME_PATTERN.fullmatch(text):
            raise UpstreamError(
                f"{where} has an invalid {name} {_shown(text)} (names are {NAME_RULE})"
            )
    instance_id = fields["instance_id"]
    if (
        isinstance(instance_id, bool)
        or not isinstance(instance_id, int)
        or not 0 <= instance_id <= MAX_INSTANCE_ID
    ):
        raise UpstreamError(
            f"{where} has an invalid instance_id {_shown(instance_id)} ({INSTANCE_ID_RULE})"
        )
    return Instance(
        namespace=fields["namespace"],
        component=fields["component"],
        endpoint=fields["endpoint"],
        instance_id=instance_id,
        transport=fields["transport"],
        # A frontend's record has no `model` (one that had it keeps it among the others): the
        # worker's socket's default, so `endpoints` lists the instances that serve `generate`.
        model=fields["endpoint"] == "generate",
        extra={k: v for k, v in fields.items() if k not in INSTANCE_FIELDS},
    )


def parse_frontend(code: int, body: bytes) -> list[Instance]:
    """The instances a Dynamo frontend's health path lists, in its order.

    Raises UpstreamError, with the reason, for anything that is not such an answer. A 200
    must say `healthy` or `unhealthy` and hold an `instances` list; a 503 must say
    `shutting_down` or `not_ready` (the frontend drains or has not discovered yet: it
    answers, so it is not a miss) and may hold none, which copies none. `endpoints` is
    ignored (the sidecar lists its own from the instances), as are `message`, `stage` and any
    key a later Dynamo adds.
    """
    if code not in (200, 503):
        raise UpstreamError(f"the status server answered status {code}")
    data = _loads(body, finite=True)
    if not isinstance(data, dict):
        raise UpstreamError("the status server's body is not a JSON object")
    if "status" not in data:
        raise UpstreamError("the status server's body has no status")
    status = data["status"]
    expected = FRONTEND_STATUSES.get(status) if isinstance(status, str) else None
    if expected is None:
        raise UpstreamError(
            f"the status server's body has an unknown status {_shown(status)} "
            "(expected healthy, unhealthy, shutting_down or not_ready)"
        )
    if code != expected:
        raise UpstreamError(f"the status server answered status {code} with a body saying {status}")
    raw = data.get("instances", [] if code == 503 else None)
    if not isinstance(raw, list):
        raise UpstreamError("the status server's body has no instances list")
    if len(raw) > MAX_INSTANCES:
        raise UpstreamError(
            f"the status server lists {len(raw)} instances; the sidecar keeps {MAX_INSTANCES}"
        )
    instances: list[Instance] = []
    seen: dict[tuple[str, str, str, int], int] = {}
    for index, value in enumerate(raw):
        instance = _frontend_instance(index, value)
        first = seen.setdefault(instance.key, index)
        if first != index:
            raise UpstreamError(
                f"the status server's instances[{index}] repeats instances[{first}]"
            )
        instances.append(instance)
    return instances


# -- one reply -------------------------------------------------------------------------------

Copied = TypeVar("Copied")


@dataclass(frozen=True)
class Copy(Generic[Copied]):
    """A usable answer: what the state is told the worker said."""

    answer: Copied


@dataclass(frozen=True)
class Miss:
    """No usable answer; `reason` is what every endpoint's transition says."""

    reason: str


def judge_poll(reply: Reply, parse: Callable[[int, bytes], Copied]) -> Copy[Copied] | Miss:
    """One poll's reply, judged by `parse` when it is an answer. Never raises: a parse that
    fails in any way is a miss, since nothing the server said can be trusted then."""
    match reply:
        case Answer(code, body):
            try:
                return Copy(parse(code, body))
            except UpstreamError as exc:
                return Miss(str(exc))
            except Exception as exc:  # a parse that breaks is a miss too, not a dead mirror
                return Miss(f"the status server poll failed ({exc!r})")
        case TimedOut(seconds):
            return Miss(f"the status server did not answer within {seconds:g}s")
        case Unreachable():
            return Miss("the status server cannot be reached")
        case Closed():
            return Miss("the status server closed the connection")
        case TooLong(limit):
            return Miss(
                f"the status server's body is too long (the answer is longer than {limit} bytes)"
            )
        case HttpFailure(error):
            return Miss(f"the status server request failed ({error})")
        case Broken(error):
            return Miss(f"the status server poll failed ({error})")
        case _:
            assert_never(reply)
