"""The limits uvicorn's httptools protocol lacks: what one client costs in memory, time and
descriptors is bounded, whatever it sends or leaves unread.

Alone, uvicorn never closes a connection that has not sent a whole request, holds a header
that never ends in memory, and parses everything a client pipelines, starting an answer for
each request into buffers that a client which does not read never drains: a few such clients
grew the sidecar by hundreds of MiB and stalled other probes for seconds. The kubelet and
the worker's client send a whole request at once and read its answer at once, so:

- a connection waiting on its client, for the rest of a request (head or body) or to read
  the answers it was sent, is closed after 3 s: idle, slow and kept-alive ones alike;
- a request head over 2 MiB is answered 431 and the connection closed;
- the parser is given what was read one request head at a time, and reading pauses while a
  request waits behind the one being answered or while answers are unread: a client is
  never more than one read and a request or two ahead of its answers, and the kernel holds
  at most 128 KiB of them;
- past 64 connections on one socket, the one that has waited longest on its client is
  closed, so a new probe always finds a descriptor and an answer.

A request being answered whose output flows, the worker's session among them, meets none of
these limits.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

CLIENT_TIMEOUT_SECONDS = 3.0
MAX_HEAD_BYTES = 2 * 1024 * 1024
# Per socket. The kubelet holds one connection per probe at a time, a scraper one, the
# worker a few; above this only connections that are waiting on their clients are closed.
MAX_CONNECTIONS = 64
# What the kernel holds of a connection's unread answers (it doubles this for its
# bookkeeping), before uvicorn's transport buffers up to its 64 KiB high-water mark. Left to
# TCP's own tuning, about 4 MiB of answers reach a client that never reads before that.
SEND_BUFFER_BYTES = 64 * 1024
# A request head ends with the first empty line; llhttp accepts no other line ending.
HEAD_END = b"\r\n\r\n"
_TOO_LARGE_BODY = b'{"error":"the request head is over the limit of %d bytes"}' % MAX_HEAD_BYTES
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)


def limit_send_buffer(transport: asyncio.Transport) -> None:
    """Cap the kernel's send buffer: socket memory is charged to the pod's memory limit, and
    a client that does not read is only found out, and stops costing answers, once its
    buffers are full."""
    transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES
    )


class HeldFlowControl(FlowControl):
    """uvicorn's flow control, whose reading stays paused while `held()` is true.

    uvicorn resumes reading after every answer and whenever the app awaits a body, even with
    requests still queued: that is how a client pipelining without reading had its whole
    stream parsed into memory.
    """

    def __init__(self, transport: asyncio.Transport, held: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._held = held

    def resume_reading(self) -> None:
        if not self._held():
            super().resume_reading()


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a deadline on its client, a size for a request head, reading
    paced by the answers, and a cap on connections per socket."""

    # What was read and is not parsed yet: `_unparsed[_parsed_to:]`.
    _unparsed = b""
    _parsed_to = 0
    _head_bytes = 0
    _in_head = True
    _deadline: asyncio.TimerHandle | None = None
    _answering: RequestResponseCycle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = HeldFlowControl(transport, self._holds_reading)
        limit_send_buffer(transport)
        self._review_deadline()
        self._evict_if_over_the_cap()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        # Now, not when the collector frees this protocol (it is in reference cycles): up
        # to a whole read.
        self._drop_unparsed()
        # uvicorn tells only the latest request parsed; the one being answered, when others
        # are queued behind it, would go on writing to a closed transport, or wait forever
        # for the disconnect (a session).
        if self._answering is not None:
            self._answering.disconnected = True
            self._answering.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Reading is paused while anything read is unparsed, so nothing is overwritten here.
        self._unparsed, self._parsed_to = data, 0
        self._parse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The heads of pipelined requests are counted too, not only the first after an answer.
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._review_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._in_head, self._head_bytes = True, 0
            self._parse()
            self.flow.resume_reading()
            # A kept-alive client has the whole time again for its next request.
            self._cancel_deadline()
            self._review_deadline()
        elif self.transport.get_write_buffer_size():
            # The close waits for the client to read what is still buffered.
            self._review_deadline()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.flow.pause_reading()
        self._review_deadline()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.flow.resume_reading()
        self._review_deadline()

    def handle_websocket_upgrade(self) -> None:
        # The connection is the WebSocket protocol's from here on.
        self._cancel_deadline()
        self._drop_unparsed()
        super().handle_websocket_upgrade()

    def _unsupported_upgrade_warning(self) -> None:
        self._drop_unparsed()
        super()._unsupported_upgrade_warning()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._answering = cycle
        super()._start_asgi_task(cycle, app)

    def _drop_unparsed(self) -> None:
        """As uvicorn does, what was read after an upgrade request is not parsed."""
        self._unparsed, self._parsed_to = b"", 0

    def _parse(self) -> None:
        """Give the parser what was read, up to one request head at a time, until all of it
        is parsed or a request waits behind the one being answered: each head parsed starts
        an answer, so a pipelined stream is parsed only as fast as it is answered."""
        while self._parsed_to < len(self._unparsed) and not self.pipeline:
            if self.transport.is_closing():
                self._drop_unparsed()
                return
            data, start = self._unparsed, self._parsed_to
            end = data.find(HEAD_END, start)
            self._parsed_to = len(data) if end < 0 else end + len(HEAD_END)
            if self._head_over_the_limit(self._parsed_to - start):
                return
            # memoryview: the slice is not copied; httptools takes any buffer.
            super().data_received(memoryview(data)[start : self._parsed_to])  # type: ignore[arg-type]
        if self._parsed_to >= len(self._unparsed):
            self._drop_unparsed()

    def _holds_reading(self) -> bool:
        """Nothing more is read while something read is unparsed, a request waits for its
        turn, or the client leaves answers unread past the transport's high-water mark."""
        unparsed = self._parsed_to < len(self._unparsed)
        return unparsed or bool(self.pipeline) or self.flow.write_paused

    def _head_over_the_limit(self, size: int) -> bool:
        if not self._in_head:
            return False
        self._head_bytes += size
        if self._head_bytes <= MAX_HEAD_BYTES:
            return False
        self._drop_unparsed()
        self.transport.write(TOO_LARGE)
        self.transport.close()
        return True

    def _waits_on_client(self) -> bool:
        """Whether it is the client's turn: to send the rest of a request (none is queued
        and the last one is answered or still missing some of its body), or to read."""
        cycle = self.cycle
        sending = not self.pipeline and (
            cycle is None or cycle.response_complete or cycle.more_body
        )
        return sending or self.flow.write_paused

    def _review_deadline(self) -> None:
        """Arm the deadline when the client's turn begins; disarm it when the turn ends."""
        if not self._waits_on_client():
            self._cancel_deadline()
        elif self._deadline is None:
            self._deadline = self.loop.call_later(CLIENT_TIMEOUT_SECONDS, self._drop)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _drop(self) -> None:
        """Close at once, discarding answers still buffered: `close()` would wait for the
        client to read them, which a client that does not read never does."""
        self._cancel_deadline()
        self.transport.abort()

    def _evict_if_over_the_cap(self) -> None:
        """Past the cap, close the connection that has waited longest on its client."""
        if len(self.connections) <= MAX_CONNECTIONS:
            return
        deadlines = {
            other: other._deadline.when()
            for other in self.connections
            if isinstance(other, BoundedHttpToolsProtocol)
            and other is not self
            and other._deadline is not None
        }
        if deadlines:
            min(deadlines, key=deadlines.__getitem__)._drop()
