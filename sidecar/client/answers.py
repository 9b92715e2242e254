"""Reading the sidecar's answers from bytes, with no socket: one decoder for both transports.

A reading is a generator that yields whenever it needs more bytes and is sent what the socket
received next, `b""` at the end of the connection; its return value is what it read. The
transports only loop `send(recv())`, so the sync and the asyncio clients cut lines, lengths and
chunks with the same code, and a test feeds it bytes directly.

This is not `http.client`, which takes a connection closed among the headers for their end: a
sidecar killed mid-answer must be told apart from one that answered, since only the first is
retried (docs/protocol.md, section 4.6).
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Mapping
from typing import Any, TypeVar

from .errors import HUNG_UP, SidecarError, SidecarProtocolError, SidecarRejected, SidecarUnavailable

T = TypeVar("T")
Reading = Generator[None, bytes, T]
JSONObject = dict[str, Any]
Headers = Mapping[str, str]
# The status code, the headers (names lowercased) and the whole body of an answer.
Answer = tuple[int, Headers, bytes]

# asyncio's default stream limit: no answer of the sidecar has a line near it.
MAX_LINE = 2**16
LINE_TOO_LONG = f"a line of the answer is longer than {MAX_LINE} bytes"
# The first line of a session is about 60 bytes; anything much longer is not the sidecar.
MAX_SESSION_LINE = 4096


class Received:
    """The bytes a connection delivered that no reading has used yet.

    One per connection, so that a session's later chunks are read after its first from what
    was received with it.
    """

    def __init__(self) -> None:
        self._data = bytearray()

    def line(self) -> Reading[bytes]:
        """One line, up to its LF (its CRLF from the sidecar): a line without one was cut short.

        At most `MAX_LINE` bytes before the LF, so that a peer that never sends one cannot make
        the worker buffer without end.
        """
        searched = 0
        while (end := self._data.find(b"\n", searched)) < 0:
            if len(self._data) > MAX_LINE:
                raise SidecarProtocolError(LINE_TOO_LONG)
            searched = len(self._data)
            yield from self._more()
        if end > MAX_LINE:
            raise SidecarProtocolError(LINE_TOO_LONG)
        return self._take(end + 1)

    def exactly(self, size: int) -> Reading[bytes]:
        while len(self._data) < size:
            yield from self._more()
        return self._take(size)

    def rest(self) -> Reading[bytes]:
        """Everything up to the end of the connection."""
        while data := (yield):
            self._data += data
        return self._take(len(self._data))

    def _more(self) -> Reading[None]:
        data = yield
        if not data:
            raise EOFError(HUNG_UP)
        self._data += data

    def _take(self, size: int) -> bytes:
        taken = bytes(self._data[:size])
        del self._data[:size]
        return taken


def is_number(text: str) -> bool:
    """Decimal digits only: `str.isdigit` also takes `²`, which `int` refuses."""
    return text.isascii() and text.isdigit()


def parse_status_line(line: bytes) -> int:
    """The status code of an HTTP/1.1 status line."""
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not is_number(parts[1]):
        raise SidecarProtocolError(f"not an HTTP/1.1 status line: {line!r}")
    return int(parts[1])


def parse_header_line(line: bytes) -> tuple[str, str]:
    """A header's name, lowercased, and its value."""
    name, colon, value = line.decode("latin-1").partition(":")
    if not colon:
        raise SidecarProtocolError(f"not an HTTP header line: {line!r}")
    return name.strip().lower(), value.strip()


def parse_chunk_size(line: bytes, limit: int | None) -> int:
    """The size of the chunk a chunk-size line announces, at most `limit` when given."""
    digits = line.split(b";", 1)[0].strip()
    if not re.fullmatch(rb"[0-9A-Fa-f]+", digits):
        raise SidecarProtocolError(f"not a chunk size: {line!r}")
    size = int(digits, 16)
    if limit is not None and size > limit:
        raise SidecarProtocolError(f"a chunk of {size} bytes, where at most {limit} were expected")
    return size


def content_length(headers: Headers) -> int | None:
    length = headers.get("content-length")
    if length is not None and not is_number(length):
        raise SidecarProtocolError(f"not a Content-Length: {length!r}")
    return None if length is None else int(length)


def is_chunked(headers: Headers) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


def read_head(received: Received) -> Reading[tuple[int, dict[str, str]]]:
    """The status code and the headers of an answer, through the empty line that ends them."""
    status = parse_status_line((yield from received.line()))
    headers: dict[str, str] = {}
    while (line := (yield from received.line())) != b"\r\n":
        name, value = parse_header_line(line)
        headers[name] = value
    return status, headers


def read_chunk(received: Received, limit: int | None = None) -> Reading[bytes]:
    """One chunk of a chunked body; empty for the last one."""
    size = parse_chunk_size((yield from received.line()), limit)
    if size == 0:
        return b""
    data = yield from received.exactly(size)
    if (yield from received.exactly(2)) != b"\r\n":
        raise SidecarProtocolError("a chunk does not end with CRLF")
    return data


def read_body(received: Received, headers: Headers) -> Reading[bytes]:
    """The whole body: chunked, by Content-Length, or up to the end of the connection.

    Only the last kind cannot tell a cut from an end; the sidecar never sends it.
    """
    if is_chunked(headers):
        body = bytearray()
        while chunk := (yield from read_chunk(received)):
            body += chunk
        return bytes(body)
    length = content_length(headers)
    if length is None:
        return (yield from received.rest())
    return (yield from received.exactly(length))


def read_answer(received: Received) -> Reading[Answer]:
    """A whole answer: the status code, the headers and the body."""
    status, headers = yield from read_head(received)
    return status, headers, (yield from read_body(received, headers))


def read_to_end(received: Received) -> Reading[None]:
    """The rest of a held session's answer, which ends only when the sidecar stops."""
    while (yield from read_chunk(received)):
        pass


def read_session_opening(received: Received, socket_path: str) -> Reading[tuple[int, str | None]]:
    """The life number and the lease of a session from the head and first chunk of its answer
    (docs/protocol.md, section 4.4); the rest of it never comes while the sidecar runs."""
    status, headers = yield from read_head(received)
    if status != 200:
        answered = (status, headers, (yield from read_body(received, headers)))
        raise refusal(answered, "POST /v1/session", socket_path)
    if not is_chunked(headers):
        raise SidecarProtocolError("the session's answer is not chunked")
    first = yield from read_chunk(received, MAX_SESSION_LINE)
    return parse_session_line(first, socket_path)


def parse_session_line(line: bytes, socket_path: str) -> tuple[int, str | None]:
    """The life number and the lease from the session's first line
    `{"lease":"ID","life":N,"session":"open"}` (a sidecar before leases sends no lease)."""
    try:
        decoded = json.loads(line)
    except ValueError:
        decoded = None
    life = decoded.get("life") if isinstance(decoded, dict) else None
    lease = decoded.get("lease") if isinstance(decoded, dict) else None
    if (
        not isinstance(life, int)
        or isinstance(life, bool)
        or decoded.get("session") != "open"
        or not isinstance(lease, str | None)
    ):
        raise SidecarProtocolError(
            f"the sidecar at {socket_path} opened no session; its first line was {line!r}"
        )
    return life, lease


def rejection(status: int, body: bytes, request: str) -> SidecarRejected:
    """The error for a 4xx/5xx answer, with the sidecar's own words when it gave them
    (docs/protocol.md, section 4.3)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        message = decoded["error"]
    else:
        message = body.decode("utf-8", "replace").strip() or "(no message)"
    return SidecarRejected(status, message, request)


def retry_after_seconds(headers: Headers) -> float | None:
    """The seconds of `Retry-After`; None without it, or for the HTTP-date form, which the
    sidecar does not send (a clock skewed between containers would make it meaningless)."""
    value = headers.get("retry-after", "").strip()
    return float(value) if is_number(value) else None


def refusal(answer: Answer, request: str, socket_path: str) -> SidecarError:
    """The error for a 4xx/5xx answer: a 503 is the sidecar unavailable for now, which
    `Retry` retries; every other status is a refusal (docs/protocol.md, section 4.3)."""
    status, headers, body = answer
    refused = rejection(status, body, request)
    if status == 503:
        return SidecarUnavailable(socket_path, refused, retry_after=retry_after_seconds(headers))
    return refused


def decode_answer(
    answer: Answer, request: str, socket_path: str, if_404: JSONObject | None = None
) -> JSONObject:
    """The JSON object of a 2xx answer, or `if_404` for a 404 when given; raise the matching
    error for anything else."""
    status, _, body = answer
    if status == 404 and if_404 is not None:
        return if_404
    if status >= 400:
        raise refusal(answer, request, socket_path)
    try:
        decoded = json.loads(body)
    except ValueError as exc:
        raise SidecarProtocolError(f"the answer to {request} is not JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise SidecarProtocolError(f"the answer to {request} is not a JSON object: {decoded!r}")
    return decoded
