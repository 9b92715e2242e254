"""Mirror mode (`DYN_SIDECAR_UPSTREAM_STATUS_URL`): copy a Dynamo worker's own status server,
or a Dynamo frontend's own health path.

Worker mode (`WORKER`): a Dynamo worker started with `DYN_SYSTEM_ENABLED=true` on an inner port
answers its health path with `200` when it is ready and `503` when it is not, with the same
JSON body either way: `{"endpoints": {...}, "status": "ready"|"notready", "uptime": {...}}`.
Every `interval` seconds the mirror GETs that path and hands the endpoint map and the status
to the state machine (`HealthState.mirror`), 503 bodies included: the state then decides as it
would for a worker that had said the same through the socket (docs/protocol.md section 8).

Frontend mode (`FRONTEND`, `DYN_SIDECAR_MODE=frontend`): a Dynamo frontend's `/health` answers
`200 {"status":"healthy","endpoints":[...],"instances":[...]}` (1.6.1, also before any worker,
with empty lists; the seed's older frontend says `"status":"unhealthy"` with no instance). The
instances it lists replace those the sidecar holds without a lease
(`HealthState.mirror_frontend`). A frontend that shuts down answers `503` with `not_ready`
(1.6.1: `{"status":"not_ready","stage":"draining",...}`, no list) or `shutting_down` (later
sources, with the list): that is an answer, not a miss, since the frontend is neither hung
nor gone; the instances it still lists are copied (none when it lists none), and the sidecar's
own readiness comes from its own drain.

A poll that gets no usable answer is a *miss*: nothing listens, no answer within the poll's
timeout (`min(interval, POLL_TIMEOUT_CAP)`), a status code other than 200 or 503, a body that
is not Dynamo's (not JSON, no endpoint map or instance list, an unknown status, an invalid
name, a code that contradicts the body's status), or an answer the state cannot keep (past
its bounds). Each miss makes every endpoint `notready` at once and drops the instances copied
from a frontend (`HealthState.mirror_lost`), since nothing the server said can be trusted any
more. `misses` misses in a row end the worker's life, as heartbeats that stop do
(docs/protocol.md section 6): the live path fails and the kubelet restarts the hung worker.
Like the heartbeat deadline, which only the first heartbeat of a life arms, this rule is
armed by the first answer of the current life: a worker still importing its libraries, whose
status server is not up yet, is not declared hung (the startup probe's threshold covers
that). The next good answer is a signal and begins a new life by itself.

Every poll opens a new connection (no keep-alive, so a connection the server dropped while
idle cannot pass for a miss), ignores proxy variables (the status server is in the pod),
and never raises: errors are misses, logged once when a run of them begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import math
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from sidecar.core.health import HealthState
from sidecar.core.records import (
    MAX_ENDPOINTS,
    MAX_INSTANCE_BYTES,
    MAX_INSTANCES,
    CapacityError,
    EndCause,
    Instance,
    Status,
)
from sidecar.inputs.socket_api import INSTANCE_FIELDS, INSTANCE_ID_RULE, MAX_DEPTH, MAX_INSTANCE_ID
from sidecar.settings import NAME_PATTERN, NAME_RULE

logger = logging.getLogger("dynamo_health_sidecar")

# The longest one poll may take, however long the interval.
POLL_TIMEOUT_CAP = 5.0
# The most of a body that is read (a Dynamo status body is about 100 bytes; 4096 endpoints
# fit well under this).
MAX_BODY_BYTES = 1 << 20
# The most of a frontend's body that is read: every body whose instances the state can keep.
# Its instances take at most what their records take in the state file (MAX_INSTANCE_BYTES:
# a record holds the same names, id, transport and other fields, plus `extra`, `lease` and
# `model`), its `endpoints` list at most as much again (one URL per distinct endpoint, each
# shorter than the record of an instance that serves it), and the rest is a few keys: so
# twice MAX_INSTANCE_BYTES, plus MAX_BODY_BYTES for spacing and keys the sidecar ignores
# (13 MiB). A longer body lists more than the state could keep, and is a miss unread.
MAX_FRONTEND_BODY_BYTES = 2 * MAX_INSTANCE_BYTES + MAX_BODY_BYTES
# Bodies longer than this are parsed in a thread, off the loop that answers the probes (a
# frontend's list of thousands of instances takes tens of milliseconds to check).
INLINE_PARSE_BYTES = 64 * 1024
USER_AGENT = "dynamo-health-sidecar"
_STATUSES = {status.value: status for status in Status}
# What a frontend's health path says, and the code it says it with: 1.6.1 answers `healthy`
# (also with no instance), the seed's older frontend `unhealthy` with none; shutting down,
# 1.6.1 answers `not_ready` (with `stage`, without instances) and later sources
# `shutting_down` (and `not_ready` while their first discovery runs), with them.
FRONTEND_STATUSES = {"healthy": 200, "unhealthy": 200, "shutting_down": 503, "not_ready": 503}

# httpx loads these on its first request: 20 to 30 ms of imports that would stall the event
# loop, and the probe path on it, when the first poll or canary goes out. Load them now.
for _module in ("httpcore", "h11", "anyio._backends._asyncio"):
    importlib.import_module(_module)


class UpstreamError(Exception):
    """A poll that counts as a miss; `str()` is the reason, shown in transitions."""


class BodyTooLarge(Exception):
    """An answer's body is longer than the sidecar reads."""


# -- shared with the canary ---------------------------------------------------------------


async def open_client(url: str, timeout: float) -> httpx.AsyncClient:
    """A client for one upstream: a new connection per request, no proxies, no redirects.

    Loading CA certificates takes tens of milliseconds; for an https URL it happens in a
    thread, and for http it is not needed, so the event loop (and the probe path on it) never
    waits for it.
    """
    verify: ssl.SSLContext | bool = False
    if urllib.parse.urlsplit(url).scheme == "https":
        verify = await asyncio.to_thread(ssl.create_default_context)
    return httpx.AsyncClient(
        verify=verify,
        # The callers bound the whole request with asyncio.timeout; this is a backstop.
        timeout=timeout + 1.0,
        limits=httpx.Limits(max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT, "connection": "close"},
    )


async def read_body(response: httpx.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body of a streamed response, to its end; raises BodyTooLarge past `limit`."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_raw():
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"the answer is longer than {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def unless_stopped(stop: asyncio.Event, task: asyncio.Future[Any]) -> bool:
    """Wait for `task` until it is done or `stop` is set (then cancel it); True when it finished."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return not task.cancelled()


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))


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
    registration (control_app.parse_instance); the fields it does not know are kept in order."""
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


# -- what is mirrored -----------------------------------------------------------------------

Answer = TypeVar("Answer")


@dataclass(frozen=True)
class Upstream(Generic[Answer]):
    """What a mirror copies: how much of an answer it reads, how the answer is checked
    (`parse`: pure, raises UpstreamError for a miss), and what the state is told of it
    (`apply`: may raise CapacityError, which is a miss too)."""

    kind: str
    max_body: int
    parse: Callable[[int, bytes], Answer]
    apply: Callable[[HealthState, Answer, float], None]


def _apply_status(state: HealthState, answer: tuple[dict[str, Status], Status], now: float) -> None:
    state.mirror(*answer, now)


def _apply_frontend(state: HealthState, answer: list[Instance], now: float) -> None:
    state.mirror_frontend(answer, now)


# A Dynamo worker's system status server (DYN_SIDECAR_MODE=worker).
WORKER: Upstream[tuple[dict[str, Status], Status]] = Upstream(
    "worker", MAX_BODY_BYTES, parse_status, _apply_status
)
# A Dynamo frontend's own health path (DYN_SIDECAR_MODE=frontend).
FRONTEND: Upstream[list[Instance]] = Upstream(
    "frontend", MAX_FRONTEND_BODY_BYTES, parse_frontend, _apply_frontend
)


# -- the mirror -----------------------------------------------------------------------------


class UpstreamMirror:
    """Polls a Dynamo status server (or a frontend's health path, with `upstream=FRONTEND`)
    and copies what it says into the state."""

    def __init__(
        self,
        url: str,
        state: HealthState,
        interval: float,
        misses: int,
        clock: Callable[[], float] = time.monotonic,
        upstream: Upstream[Any] = WORKER,
    ) -> None:
        self.url = url
        self.state = state
        self.upstream = upstream
        self.interval = interval
        # Misses in a row that end the worker's life.
        self.misses = misses
        self.clock = clock
        self.timeout = min(interval, POLL_TIMEOUT_CAP)
        # For /metrics and `status`.
        self.polls = 0
        self.missed = 0
        self.consecutive_misses = 0
        self.last_latency: float | None = None
        self.last_reason: str | None = None
        self._client: httpx.AsyncClient | None = None
        # The life in which the status server last answered: it arms the misses rule.
        self._answered_life: int | None = None
        # The last usable answer's code, body and parse: a frontend's list, unchanged from
        # poll to poll, is checked once.
        self._last: tuple[int, bytes, Any] | None = None

    # -- reading -------------------------------------------------------------------------

    @property
    def armed(self) -> bool:
        """Whether misses can end the current life (the server answered in it)."""
        return self._answered_life == self.state.life.number

    def view(self) -> dict[str, object]:
        """What `GET /v1/worker` shows of the mirror."""
        return {
            "url": self.url,
            "interval_seconds": self.interval,
            "polls": self.polls,
            "misses": self.missed,
            "consecutive_misses": self.consecutive_misses,
            "misses_to_end_life": self.misses,
            "armed": self.armed,
            "last_latency_seconds": (
                None if self.last_latency is None else round(self.last_latency, 6)
            ),
            "last_reason": self.last_reason,
        }

    # -- polling -------------------------------------------------------------------------

    async def step(self) -> None:
        """Poll the status server once and tell the state what it said, or that it said nothing."""
        started = time.perf_counter()
        answered, answer = False, None
        try:
            answer = await self._poll()
            answered = True
        except UpstreamError as exc:
            reason = str(exc)
        except Exception as exc:  # never escapes: whatever it is, the poll missed
            reason = f"the status server poll failed ({exc!r})"
        self.last_latency = time.perf_counter() - started
        self.polls += 1
        now = self.clock()
        if answered:
            self._answered(answer, now)
        else:
            self._missed(reason, now)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds (start to start) until `stop` is set; a poll in
        flight is cancelled."""
        try:
            while not stop.is_set():
                started = self.clock()
                if not await unless_stopped(stop, asyncio.ensure_future(self._guarded_step())):
                    break
                await sleep_unless_stopped(stop, started + self.interval - self.clock())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _guarded_step(self) -> None:
        try:
            await self.step()
        except Exception as exc:  # the state refused what was copied: log it, keep polling
            logger.warning("mirror of %s failed and keeps polling: %r", self.url, exc)

    async def _poll(self) -> Any:
        if self._client is None:
            self._client = await open_client(self.url, self.timeout)
        try:
            async with (
                asyncio.timeout(self.timeout),
                self._client.stream("GET", self.url, headers={"accept": "*/*"}) as response,
            ):
                body = await read_body(response, self.upstream.max_body)
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamError(
                f"the status server did not answer within {self.timeout:g}s"
            ) from None
        except httpx.ConnectError:
            raise UpstreamError("the status server cannot be reached") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise UpstreamError("the status server closed the connection") from None
        except BodyTooLarge as exc:
            raise UpstreamError(f"the status server's body is too long ({exc})") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"the status server request failed ({type(exc).__name__})"
            ) from None
        code = response.status_code
        last = self._last
        if last is not None and last[0] == code and last[1] == body:
            return last[2]
        if len(body) > INLINE_PARSE_BYTES:
            answer = await asyncio.to_thread(self.upstream.parse, code, body)
        else:
            answer = self.upstream.parse(code, body)
        self._last = (code, body, answer)
        return answer

    def _answered(self, answer: Any, now: float) -> None:
        try:
            self.upstream.apply(self.state, answer, now)
        except CapacityError as exc:
            self._missed(f"the sidecar cannot keep what the status server lists ({exc})", now)
            return
        if self.consecutive_misses:
            logger.info(
                "the status server %s answers again after %d missed polls",
                self.url,
                self.consecutive_misses,
                extra={"fields": {"event": "upstream_back", "misses": self.consecutive_misses}},
            )
        self.consecutive_misses = 0
        self.last_reason = None
        self._answered_life = self.state.life.number

    def _missed(self, reason: str, now: float) -> None:
        self.missed += 1
        self.consecutive_misses += 1
        if reason != self.last_reason:
            logger.warning(
                "mirror of %s: %s (miss %d; %d in a row end the worker's life)",
                self.url,
                reason,
                self.consecutive_misses,
                self.misses,
                extra={"fields": {"event": "upstream_miss", "reason": reason}},
            )
        else:
            logger.debug("mirror of %s: %s (miss %d)", self.url, reason, self.consecutive_misses)
        self.last_reason = reason
        self.state.mirror_lost(reason, now)
        if self.consecutive_misses >= self.misses and self.armed:
            self.state.end_life(
                f"its status server did not answer {self.misses} times", EndCause.UNRESPONSIVE, now
            )
