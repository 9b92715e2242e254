"""The one loop of the active checks: when to send, the request itself, and what it got.

Modelled on the kubelet's prober (docs/protocol.md section 7.1): its worker alone owns the
timing, and one HTTP request turns into one result. The mirror and the canaries
(docs/protocol.md section 8) differ only in what they ask (`Ask`), when they may ask
(`waits_from`), how they judge a reply (`judge`, through a pure judgement) and what they tell
the state (`act`, through the core's thresholds, `sidecar/core/checks.py`).

Timing: the next request is due `period` seconds after the latest of the check's marks and
its own last start (start to start), and never sooner than `spacing` after that start. The
mirror's only mark is its last start, so it polls every interval; a canary's marks are also
its life's start, the worker's last activity and its last pass, so it waits for quiet. While
a check may not run at all it looks again every `idle` seconds; one request is in flight at
most, and each is bounded by `timeout` from its start to the end of its body.

Every request opens a new connection (no keep-alive, so a connection the server dropped while
idle cannot pass for a failure), ignores proxy variables (the servers are in the pod),
follows no redirect, reads at most the ask's bound, and never raises: whatever goes wrong is a
reply (`sidecar/inputs/replies.py`) for the judgement to name.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import ssl
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from sidecar.inputs.replies import (
    Answer,
    Broken,
    Closed,
    Codes,
    HttpFailure,
    Reply,
    TimedOut,
    TooLong,
    Unreachable,
    expected,
)

logger = logging.getLogger("dynamo_health_sidecar")

USER_AGENT = "dynamo-health-sidecar"

# httpx loads these on its first request: 20 to 30 ms of imports that would stall the event
# loop, and the probe path on it, when the first poll or canary goes out. Load them now.
for _module in ("httpcore", "h11", "anyio._backends._asyncio"):
    importlib.import_module(_module)


@dataclass(frozen=True)
class Ask:
    """One check's request: the same every time."""

    method: str
    url: str
    # The most of a body that is read.
    max_body: int
    # Sent as `application/json`.
    body: bytes | None = None
    # The codes whose body is read; None: every code's. A canary's unexpected code fails at
    # once, whatever its body would do.
    reads: Codes | None = None


class _TooLong(Exception):
    """A body is longer than its ask reads."""


async def open_client(url: str, timeout: float) -> httpx.AsyncClient:
    """A client for one server: a new connection per request, no proxies, no redirects.

    Loading CA certificates takes tens of milliseconds; for an https URL it happens in a
    thread, and for http it is not needed, so the event loop (and the probe path on it) never
    waits for it.
    """
    verify: ssl.SSLContext | bool = False
    if urllib.parse.urlsplit(url).scheme == "https":
        verify = await asyncio.to_thread(ssl.create_default_context)
    return httpx.AsyncClient(
        verify=verify,
        # `send` bounds the whole request with asyncio.timeout; this is a backstop.
        timeout=timeout + 1.0,
        limits=httpx.Limits(max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT, "connection": "close"},
    )


async def _read_body(response: httpx.Response, limit: int) -> bytes:
    """The whole body of a streamed response, to its end; raises _TooLong past `limit`."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_raw():
        size += len(part)
        if size > limit:
            raise _TooLong
        parts.append(part)
    return b"".join(parts)


async def send(client: httpx.AsyncClient, ask: Ask, timeout: float) -> Reply:
    """One request, whole within `timeout` (headers, and the body to its end when it is read)."""
    headers = {"accept": "*/*"}
    if ask.body is not None:
        headers["content-type"] = "application/json"
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream(ask.method, ask.url, content=ask.body, headers=headers) as response,
        ):
            code = response.status_code
            if ask.reads is not None and not expected(code, ask.reads):
                return Answer(code, b"")
            return Answer(code, await _read_body(response, ask.max_body))
    except (TimeoutError, httpx.TimeoutException):
        return TimedOut(timeout)
    except httpx.ConnectError:
        return Unreachable()
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        return Closed()
    except _TooLong:
        return TooLong(ask.max_body)
    except httpx.HTTPError as exc:
        return HttpFailure(type(exc).__name__)


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


Verdict = TypeVar("Verdict")


class Prober(ABC, Generic[Verdict]):
    """One check's loop; a check says what it asks, when it may, and what a reply means."""

    # The warning when a look fails outside the request (the state refused what it was
    # told, say): `%s` the URL, `%r` the error.
    trouble: ClassVar[str]

    def __init__(
        self,
        ask: Ask,
        *,
        period: float,
        timeout: float,
        spacing: float,
        idle: float,
        clock: Callable[[], float],
    ) -> None:
        self.ask = ask
        self.period = period
        self.timeout = timeout
        self.spacing = spacing
        self.idle = idle
        self.clock = clock
        # For /metrics and `status`: requests started, and how long the last one took.
        self.sent = 0
        self.last_latency: float | None = None
        self.last_start: float | None = None
        self._running = False
        self._client: httpx.AsyncClient | None = None

    # -- what a check says ---------------------------------------------------------------

    @abstractmethod
    def waits_from(self) -> list[float] | None:
        """The moments, besides the last start, that the next request waits `period` after;
        None while no request may be sent at all."""

    def begin(self) -> None:
        """A request starts: what the check must remember of this moment (nothing, here)."""
        return None

    @abstractmethod
    async def judge(self, reply: Reply) -> Verdict:
        """What the reply means (a pure judgement; async only to run it off the loop)."""

    @abstractmethod
    def act(self, verdict: Verdict, now: float) -> None:
        """Tell the state what the verdict asks, through the core's thresholds."""

    # -- timing ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a request is in flight."""
        return self._running

    def next_due(self) -> float | None:
        """When the next request may start (clock time); None while none may run at all."""
        marks = self.waits_from()
        if marks is None:
            return None
        if self.last_start is None:
            return max(marks) + self.period if marks else self.clock()
        due = max([*marks, self.last_start]) + self.period
        return max(due, self.last_start + self.spacing)

    async def step(self) -> float:
        """Send one request if one is due, judge it and act; return how long to sleep before
        the next look. No request starts while one is in flight."""
        if self._running:
            return self.idle
        due = self.next_due()
        if due is None:
            return self.idle
        now = self.clock()
        if now < due:
            return due - now
        await self.probe()
        due = self.next_due()
        return self.idle if due is None else max(due - self.clock(), 0.0)

    async def probe(self) -> None:
        """One request now, judged and acted on; the request itself never raises."""
        self._running = True
        self.last_start = self.clock()
        self.sent += 1
        self.begin()
        started = time.perf_counter()
        try:
            verdict = await self.judge(await self._request())
        finally:
            self._running = False
        self.last_latency = time.perf_counter() - started
        self.act(verdict, self.clock())

    async def run(self, stop: asyncio.Event) -> None:
        """Look, sleep, look again until `stop` is set; a request in flight is cancelled and
        neither judged nor acted on."""
        try:
            while not stop.is_set():
                look = asyncio.ensure_future(self._guarded_step())
                if not await unless_stopped(stop, look):
                    break
                await sleep_unless_stopped(stop, look.result())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _guarded_step(self) -> float:
        try:
            return await self.step()
        except Exception as exc:  # a check's own failure must not end its loop: log, go on
            logger.warning(self.trouble, self.ask.url, exc)
            return self.idle

    async def _request(self) -> Reply:
        try:
            if self._client is None:
                self._client = await open_client(self.ask.url, self.timeout)
            return await send(self._client, self.ask, self.timeout)
        except Exception as exc:  # never escapes: whatever it is, nothing usable came back
            return Broken(repr(exc))
