"""The limits uvicorn's httptools protocol lacks: a deadline and a size for a request's head.

Without them a client that connects and sends nothing, or half a header, holds its file
descriptor forever, and enough of them leave no descriptor for the kubelet's next probe; and
a header that never ends grows in memory without bound. The kubelet and the worker's client
send a whole head at once, so three seconds and 2 MiB are generous.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_TIMEOUT_SECONDS = 3.0
MAX_HEAD_BYTES = 2 * 1024 * 1024
_TOO_LARGE_BODY = b'{"error":"the request head is over the limit of %d bytes"}' % MAX_HEAD_BYTES
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol, closing a connection whose request head is late or too large."""

    _head_bytes = 0
    _in_head = True
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._cancel_deadline()
                self.transport.write(TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_deadline()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A kept-alive connection waits for its next head under the same rule.
        if not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self._cancel_deadline()
        self._head_deadline = self.loop.call_later(HEAD_TIMEOUT_SECONDS, self._head_late)

    def _head_late(self) -> None:
        self._head_deadline = None
        if self._in_head:
            self.transport.close()

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None
