"""`POST /v1/session`: the held connection by which the sidecar sees its worker die.

A route of the worker's socket (docs/protocol.md section 4.4) that is an ASGI app of its own,
not a request-response handler: its answer begins at once and ends only when one side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from sidecar.component import NotSaved
from sidecar.core.health import HealthState
from sidecar.core.records import CapacityError, UnknownLease
from sidecar.core.verdict import dumps
from sidecar.http_answers import error_response
from sidecar.inputs.socket_api import (
    ApiError,
    check_lease_id,
    check_pid,
    check_query,
    new_lease_id,
    read_json,
)


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
            await error_response(str(exc), 422)(scope, receive, send)
            return
        except ApiError as exc:
            await error_response(exc.message, exc.status_code, exc.headers)(scope, receive, send)
            return
        life = self.state.current_life().number
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
        if not self.state.holds_lease(check_lease_id(held)):
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
