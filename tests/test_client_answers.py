"""The sidecar's answers decoded from bytes, without a socket (`sidecar.client.answers`).

Each reading is fed as a transport feeds it: pieces of bytes, then `b""` for the end of the
connection. Both transports decode with these readings, so each case holds for both clients.
"""

from __future__ import annotations

from typing import TypeVar

import pytest

from sidecar.client import SidecarProtocolError, SidecarRejected, SidecarUnavailable
from sidecar.client.answers import (
    LINE_TOO_LONG,
    MAX_LINE,
    MAX_SESSION_LINE,
    Answer,
    Reading,
    Received,
    decode_answer,
    read_answer,
    read_session_opening,
    read_to_end,
)
from sidecar.client.errors import HUNG_UP, stream_failures

T = TypeVar("T")

BEAT = b'{"life":1,"status":"alive"}'
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 27\r\n\r\n" + BEAT
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
SESSION_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n" + CHUNKED_HEAD[17:]
OPENED = b'{"lease":"9f1c0e4a7b2d5368","life":5,"session":"open"}\n'


def feed(reading: Reading[T], *pieces: bytes) -> T:
    """What `reading` read from `pieces` and then the end of the connection."""
    try:
        next(reading)
        for piece in (*pieces, b""):
            reading.send(piece)
    except StopIteration as done:
        value: T = done.value
        return value
    raise AssertionError("the reading wanted more after the end of the connection")


def answer(*pieces: bytes) -> Answer:
    return feed(read_answer(Received()), *pieces)


def whole(status: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def protocol_error(*pieces: bytes) -> str:
    with pytest.raises(SidecarProtocolError) as caught:
        answer(*pieces)
    return str(caught.value)


# -- whole answers ---------------------------------------------------------------------------


def test_client_answer_by_content_length() -> None:
    headers = {"content-type": "application/json", "content-length": "27"}
    assert answer(WHOLE) == (200, headers, BEAT)


def test_client_answer_fed_one_byte_at_a_time_reads_the_same() -> None:
    assert answer(*(WHOLE[i : i + 1] for i in range(len(WHOLE)))) == answer(WHOLE)


def test_client_answer_ignores_what_follows_its_length() -> None:
    assert answer(WHOLE + b"trailing")[2] == BEAT


def test_client_answer_chunked_is_joined() -> None:
    data = CHUNKED_HEAD + chunk(BEAT[:10]) + chunk(BEAT[10:]) + b"0\r\n\r\n"
    assert answer(data)[2] == BEAT


def test_client_answer_chunk_extensions_are_ignored() -> None:
    data = CHUNKED_HEAD + b"2;name=value\r\n{}\r\n0\r\n\r\n"
    assert answer(data)[2] == b"{}"


def test_client_answer_without_length_runs_to_the_end_of_the_connection() -> None:
    assert answer(b"HTTP/1.0 200 OK\r\n\r\n", b"{", b"}") == (200, {}, b"{}")


def test_client_answer_header_names_are_lowercased_and_values_stripped() -> None:
    assert answer(b"HTTP/1.1 204 No Content\r\nX-Odd :  a: b \r\ncontent-length: 0\r\n\r\n") == (
        204,
        {"x-odd": "a: b", "content-length": "0"},
        b"",
    )


def test_client_answer_line_may_hold_max_line_bytes() -> None:
    data = b"HTTP/1.1 200 OK\r\nx: " + b"a" * (MAX_LINE - 4) + b"\r\ncontent-length: 0\r\n\r\n"
    assert len(answer(data)[1]["x"]) == MAX_LINE - 4


# -- answers cut short -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        b"",
        WHOLE[:11],
        WHOLE[: WHOLE.index(b"content-length")],
        WHOLE[: WHOLE.index(b"\r\n\r\n") + 4],
        WHOLE[:-5],
        CHUNKED_HEAD + b"1b\r\n" + BEAT[:4],
        CHUNKED_HEAD + chunk(BEAT)[:-1],
        CHUNKED_HEAD + chunk(BEAT),
    ],
    ids=["nothing", "status", "headers", "head", "body", "chunk", "chunk-crlf", "last-chunk"],
)
def test_client_answer_cut_short_is_a_hang_up(cut: bytes) -> None:
    with pytest.raises(EOFError, match=HUNG_UP):
        answer(cut)


# -- answers that are not the sidecar's ------------------------------------------------------


def test_client_answer_not_http_is_a_protocol_error() -> None:
    error = protocol_error(b"SSH-2.0-OpenSSH_9.6\r\n")
    assert error == "not an HTTP/1.1 status line: b'SSH-2.0-OpenSSH_9.6\\r\\n'"


def test_client_answer_status_code_must_be_digits() -> None:
    assert protocol_error(b"HTTP/1.1 2\xb20 OK\r\n\r\n").startswith("not an HTTP/1.1 status")


def test_client_answer_header_needs_a_colon() -> None:
    assert protocol_error(b"HTTP/1.1 200 OK\r\nnonsense\r\n\r\n") == (
        "not an HTTP header line: b'nonsense\\r\\n'"
    )


def test_client_answer_bare_lf_does_not_end_the_head() -> None:
    assert protocol_error(b"HTTP/1.1 200 OK\n\n{}") == "not an HTTP header line: b'\\n'"


@pytest.mark.parametrize("length", ["12a", "-1", "\u00b2"])
def test_client_answer_content_length_must_be_digits(length: str) -> None:
    data = f"HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n{{}}".encode("latin-1")
    assert protocol_error(data) == f"not a Content-Length: {length!r}"


def test_client_answer_chunk_size_must_be_hexadecimal() -> None:
    assert protocol_error(CHUNKED_HEAD + b"zz\r\n") == "not a chunk size: b'zz\\r\\n'"


def test_client_answer_chunk_must_end_with_crlf() -> None:
    error = protocol_error(CHUNKED_HEAD + b"2\r\n{}XX0\r\n\r\n")
    assert error == "a chunk does not end with CRLF"


def test_client_answer_line_over_max_line_is_refused_at_once() -> None:
    # No end of the connection is needed: the reading stops before buffering any more.
    reading = read_answer(Received())
    next(reading)
    with pytest.raises(SidecarProtocolError, match=LINE_TOO_LONG):
        reading.send(b"HTTP/1.1 200 OK\r\nx: " + b"a" * MAX_LINE)


def test_client_answer_line_one_byte_over_max_line_is_refused() -> None:
    data = b"HTTP/1.1 200 OK\r\nx: " + b"a" * (MAX_LINE - 3) + b"\r\n\r\n"
    assert protocol_error(data) == LINE_TOO_LONG


# -- decoding the JSON, and errors -----------------------------------------------------------


def decoded(status: int, body: bytes, headers: dict[str, str] | None = None) -> object:
    return decode_answer((status, headers or {}, body), "PUT /v1/x", "/s")


def test_client_decode_returns_the_json_object() -> None:
    assert decoded(200, BEAT) == {"life": 1, "status": "alive"}


def test_client_decode_refuses_a_body_that_is_not_json() -> None:
    with pytest.raises(SidecarProtocolError, match=r"^the answer to PUT /v1/x is not JSON: "):
        decoded(200, b"<html>")


def test_client_decode_refuses_json_that_is_not_an_object() -> None:
    with pytest.raises(SidecarProtocolError) as caught:
        decoded(201, b"[1]")
    assert str(caught.value) == "the answer to PUT /v1/x is not a JSON object: [1]"


def test_client_decode_rejection_carries_the_sidecars_error() -> None:
    with pytest.raises(SidecarRejected) as caught:
        decoded(422, b'{"error":"status \\"busy\\" is invalid"}')
    assert (caught.value.status, caught.value.message) == (422, 'status "busy" is invalid')
    assert str(caught.value) == 'the sidecar refused PUT /v1/x with 422: status "busy" is invalid'


def test_client_decode_rejection_without_json_carries_the_text() -> None:
    with pytest.raises(SidecarRejected) as caught:
        decoded(500, b" Internal Server Error\n")
    assert caught.value.message == "Internal Server Error"


def test_client_decode_rejection_without_a_body_says_so() -> None:
    with pytest.raises(SidecarRejected) as caught:
        decoded(405, b"")
    assert caught.value.message == "(no message)"


def test_client_decode_503_is_unavailable_with_its_retry_after() -> None:
    with pytest.raises(SidecarUnavailable) as caught:
        decoded(503, b'{"error":"stopping"}', {"retry-after": "3"})
    assert caught.value.retry_after == 3.0
    assert str(caught.value) == "the sidecar at /s answered PUT /v1/x with 503: stopping"


@pytest.mark.parametrize("value", ["Fri, 31 Dec 1999 23:59:59 GMT", "1.5", ""])
def test_client_decode_503_ignores_a_retry_after_that_is_not_seconds(value: str) -> None:
    with pytest.raises(SidecarUnavailable) as caught:
        decoded(503, b"{}", {"retry-after": value})
    assert caught.value.retry_after is None


def test_client_decode_answers_a_404_with_what_it_was_given() -> None:
    gone = {"removed": 0}
    assert decode_answer((404, {}, b"{}"), "DELETE /v1/x", "/s", if_404=gone) is gone


# -- the session's line protocol -------------------------------------------------------------


def opening(*pieces: bytes) -> tuple[int, str | None]:
    return feed(read_session_opening(Received(), "/s"), *pieces)


def test_client_session_opening_reads_the_life_and_the_lease() -> None:
    assert opening(SESSION_HEAD + chunk(OPENED)) == (5, "9f1c0e4a7b2d5368")


def test_client_session_opening_without_a_lease_is_an_older_sidecar() -> None:
    assert opening(SESSION_HEAD + chunk(b'{"life":2,"session":"open"}\n')) == (2, None)


@pytest.mark.parametrize(
    "line",
    [
        b'{"life":true,"session":"open"}\n',
        b'{"life":2,"session":"closed"}\n',
        b'{"life":2,"session":"open","lease":7}\n',
        b"[2]\n",
        b"not json\n",
    ],
)
def test_client_session_opening_refuses_another_first_line(line: bytes) -> None:
    with pytest.raises(SidecarProtocolError) as caught:
        opening(SESSION_HEAD + chunk(line))
    assert str(caught.value) == f"the sidecar at /s opened no session; its first line was {line!r}"


def test_client_session_opening_refuses_a_first_line_too_long() -> None:
    with pytest.raises(SidecarProtocolError, match="a chunk of 4097 bytes, where at most 4096"):
        opening(SESSION_HEAD + chunk(b" " * (MAX_SESSION_LINE + 1)))


def test_client_session_opening_must_be_chunked() -> None:
    with pytest.raises(SidecarProtocolError, match="the session's answer is not chunked"):
        opening(WHOLE)


def test_client_session_opening_refused_carries_the_sidecars_error() -> None:
    refused = whole(b"422 Unprocessable Entity", b'{"error":"pid 0 is invalid"}')
    with pytest.raises(SidecarRejected) as caught:
        opening(refused)
    assert (caught.value.status, caught.value.request) == (422, "POST /v1/session")


def test_client_session_opening_503_is_unavailable() -> None:
    stopping = whole(b"503 Service Unavailable", b'{"error":"stopping"}')
    with pytest.raises(SidecarUnavailable, match="answered POST /v1/session with 503: stopping"):
        opening(stopping)


def test_client_session_end_is_read_from_what_came_with_the_opening() -> None:
    received = Received()
    end = chunk(b"\n") + b"0\r\n\r\n"
    reading = read_session_opening(received, "/s")
    next(reading)
    with pytest.raises(StopIteration):
        reading.send(SESSION_HEAD + chunk(OPENED) + end)
    ending = read_to_end(received)
    with pytest.raises(StopIteration):
        next(ending)  # all of it was already received: no more bytes are asked for


def test_client_session_end_cut_short_is_a_hang_up() -> None:
    with pytest.raises(EOFError, match=HUNG_UP):
        feed(read_to_end(Received()), chunk(b"\n"))


# -- a socket's failures as errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (FileNotFoundError(2, "No such file or directory"), "no sidecar at /s: [Errno 2] No such"),
        (TimeoutError("timed out"), "no answer from the sidecar at /s within 0.5s"),
        (EOFError("cut"), f"no sidecar at /s: {HUNG_UP}"),
    ],
)
def test_client_stream_failures_are_unavailable(failure: Exception, message: str) -> None:
    with pytest.raises(SidecarUnavailable) as caught, stream_failures("/s", 0.5):
        raise failure
    assert str(caught.value).startswith(message)


def test_client_stream_failures_leave_a_protocol_error_as_it_is() -> None:
    with pytest.raises(SidecarProtocolError, match=r"^odd$"), stream_failures("/s", 0.5):
        raise SidecarProtocolError("odd")
