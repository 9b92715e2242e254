"""The client against stand-ins that misbehave: no answer in time, answers cut short, 503s.

A real sidecar cannot misbehave on demand, so listeners on a Unix socket play one
(`test_client_support.py`). Each case runs with both clients, which must behave alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from test_client_support import (
    MAX_ID,
    TRANSPORT,
    fake_sidecar,
    http_answer,
    scripted_sidecar,
)

from sidecar.client import (
    AsyncSidecarClient,
    Retry,
    SidecarClient,
    SidecarProtocolError,
    SidecarRejected,
    SidecarUnavailable,
)

# -- no answer, and retries -----------------------------------------------------------------------


def test_client_unavailable_when_the_sidecar_does_not_answer_in_time() -> None:
    with fake_sidecar(None, hold=True) as (path, _):
        start = time.monotonic()
        with pytest.raises(SidecarUnavailable) as caught:
            SidecarClient(path, timeout=0.2).status()
        elapsed = time.monotonic() - start
    assert str(caught.value) == f"no answer from the sidecar at {path} within 0.2s"
    assert 0.15 < elapsed < 1.5


def test_client_retry_gives_up_after_its_attempts() -> None:
    with fake_sidecar(None) as (path, accepted), pytest.raises(SidecarUnavailable):
        SidecarClient(path, retry=Retry(attempts=4, backoff=0.01)).heartbeat()
    assert len(accepted) == 4


def test_client_retry_never_retries_a_rejection() -> None:
    refusal = http_answer("422 Unprocessable Entity", b'{"error":"no"}')
    with fake_sidecar(refusal) as (path, accepted), pytest.raises(SidecarRejected) as caught:
        SidecarClient(path, retry=Retry(attempts=5, backoff=0.01)).ready("generate")
    assert (caught.value.status, caught.value.message) == (422, "no")
    assert len(accepted) == 1


def test_client_async_retry_gives_up_after_its_attempts() -> None:
    with fake_sidecar(None) as (path, accepted):
        client = AsyncSidecarClient(path, retry=Retry(attempts=3, backoff=0.01))
        with pytest.raises(SidecarUnavailable):
            asyncio.run(client.status())
    assert len(accepted) == 3


def test_client_async_reads_a_chunked_answer() -> None:
    answer = http_answer("200 OK", b'{"life":3,"status":"alive"}', chunked=True)
    with fake_sidecar(answer) as (path, _):
        assert asyncio.run(AsyncSidecarClient(path).heartbeat()) == {"life": 3, "status": "alive"}


def test_client_async_times_out_as_unavailable() -> None:
    with fake_sidecar(None, hold=True) as (path, _), pytest.raises(SidecarUnavailable) as caught:
        asyncio.run(AsyncSidecarClient(path, timeout=0.2).status())
    assert str(caught.value) == f"no answer from the sidecar at {path} within 0.2s"


# -- answers cut short, and 503 -------------------------------------------------------------------

HUNG_UP = "the sidecar hung up before its answer ended"
NOT_SAVED = "the change is applied but the state file cannot be written: [Errno 28] No space"
BEAT = b'{"life":1,"status":"alive"}'
WHOLE = http_answer("200 OK", BEAT)
CHUNKED = http_answer("200 OK", BEAT, chunked=True)
# Where a sidecar SIGKILLed mid-answer may have cut it.
CUTS = {
    "before-the-status-line": b"",
    "in-the-status-line": WHOLE[: len(b"HTTP/1.1 20")],
    "among-the-headers": WHOLE[: WHOLE.index(b"content-length")],
    "after-the-headers": WHOLE[: WHOLE.index(b"\r\n\r\n") + 4],
    "in-the-body": WHOLE[:-5],
    "in-a-chunk": CHUNKED[: CHUNKED.index(b"\r\n\r\n") + 10],
}
AFTER_THE_HEADERS = CUTS["after-the-headers"]
SESSION_OPEN = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n"
    b'\r\n1c\r\n{"life":5,"session":"open"}\n\r\n'
)
CALLS: dict[str, tuple[Any, ...]] = {
    "ready": ("generate",),
    "notready": ("generate",),
    "set_endpoint": ("generate", "ready"),
    "register_instance": ("dynamo", "backend", "generate", MAX_ID, TRANSPORT),
    "remove_instances": (MAX_ID,),
    "heartbeat": (4242,),
    "status": (),
    "worker": (),
}


FLAVOURS = ["sync", "async"]
NO_RETRY = Retry()
RETRIES = Retry(attempts=5, backoff=0.01)


def unavailable_503(message: str, retry_after: str = "1") -> bytes:
    body = json.dumps({"error": message}).encode()
    return http_answer("503 Service Unavailable", body, headers=f"retry-after: {retry_after}\r\n")


def call(flavour: str, path: Path, retry: Retry, method: str, *args: Any) -> Any:
    """`method` of the sync or of the async client, run to its end."""
    if flavour == "sync":
        return getattr(SidecarClient(path, retry=retry), method)(*args)
    return asyncio.run(getattr(AsyncSidecarClient(path, retry=retry), method)(*args))


def open_and_close_session(flavour: str, path: Path, retry: Retry) -> int | None:
    """Open a session with the sync or the async client and close it; its life number."""
    if flavour == "sync":
        with SidecarClient(path, retry=retry).open_session() as session:
            return session.life

    async def main() -> int | None:
        async with await AsyncSidecarClient(path, retry=retry).open_session() as held:
            return held.life

    return asyncio.run(main())


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_retries_an_answer_cut_short(flavour: str, cut: str) -> None:
    with scripted_sidecar(CUTS[cut], WHOLE) as (path, requests):
        assert call(flavour, path, RETRIES, "heartbeat") == {"life": 1, "status": "alive"}
    assert len(requests) == 2


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_answer_cut_short_is_unavailable_once_retries_run_out(
    flavour: str, cut: str
) -> None:
    with (
        scripted_sidecar(CUTS[cut]) as (path, requests),
        pytest.raises(SidecarUnavailable) as caught,
    ):
        call(flavour, path, NO_RETRY, "heartbeat")
    assert str(caught.value) == f"no sidecar at {path}: {HUNG_UP}"
    assert len(requests) == 1


@pytest.mark.parametrize("method", CALLS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_retries_every_call_the_same_after_a_cut(flavour: str, method: str) -> None:
    with scripted_sidecar(AFTER_THE_HEADERS, WHOLE) as (path, requests):
        assert call(flavour, path, RETRIES, method, *CALLS[method]) == json.loads(BEAT)
    assert len(requests) == 2
    assert requests[0] == requests[1]


@pytest.mark.parametrize("first", ["cut", "503"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_remove_instances_takes_a_404_to_a_retry_as_none_removed(
    flavour: str, first: str
) -> None:
    failed = AFTER_THE_HEADERS if first == "cut" else unavailable_503(NOT_SAVED)
    gone = http_answer("404 Not Found", b'{"error":"no instance has instance_id 7"}')
    with scripted_sidecar(failed, gone) as (path, requests):
        assert call(flavour, path, RETRIES, "remove_instances", 7) == {
            "instance_id": 7,
            "removed": 0,
        }
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_remove_instances_rejects_a_404_to_its_first_attempt(flavour: str) -> None:
    gone = http_answer("404 Not Found", b'{"error":"no instance has instance_id 7"}')
    with scripted_sidecar(gone, gone) as (path, requests), pytest.raises(SidecarRejected) as caught:
        call(flavour, path, RETRIES, "remove_instances", 7)
    assert (caught.value.status, caught.value.message) == (404, "no instance has instance_id 7")
    assert len(requests) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_retries_a_503(flavour: str) -> None:
    retry = Retry(attempts=3, backoff=0.01, max_backoff=0.01)
    with scripted_sidecar(unavailable_503(NOT_SAVED), WHOLE) as (path, requests):
        assert call(flavour, path, retry, "ready", "generate") == json.loads(BEAT)
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_503_is_unavailable_with_the_sidecars_message(flavour: str) -> None:
    with (
        scripted_sidecar(unavailable_503(NOT_SAVED)) as (path, _),
        pytest.raises(SidecarUnavailable) as caught,
    ):
        call(flavour, path, NO_RETRY, "ready", "generate")
    request = "PUT /v1/endpoints/generate"
    assert str(caught.value) == f"the sidecar at {path} answered {request} with 503: {NOT_SAVED}"
    assert caught.value.retry_after == 1.0
    assert isinstance(caught.value.error, SidecarRejected)
    assert (caught.value.error.status, caught.value.error.message) == (503, NOT_SAVED)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_waits_retry_after_at_most_max_backoff(flavour: str) -> None:
    retry = Retry(attempts=2, backoff=0.0, max_backoff=0.3)  # no jitter: any wait is Retry-After
    with scripted_sidecar(unavailable_503(NOT_SAVED), WHOLE) as (path, _):
        start = time.monotonic()
        call(flavour, path, retry, "heartbeat")
        elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.9


def test_client_retry_after_as_a_date_is_ignored() -> None:
    refusal = unavailable_503(NOT_SAVED, retry_after="Fri, 31 Dec 1999 23:59:59 GMT")
    with scripted_sidecar(refusal) as (path, _), pytest.raises(SidecarUnavailable) as caught:
        SidecarClient(path).heartbeat()
    assert caught.value.retry_after is None


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_500_is_rejected_and_not_retried(flavour: str) -> None:
    crashed = http_answer("500 Internal Server Error", b"Internal Server Error")
    with (
        scripted_sidecar(crashed, WHOLE) as (path, requests),
        pytest.raises(SidecarRejected) as caught,
    ):
        call(flavour, path, RETRIES, "status")
    assert (caught.value.status, caught.value.message) == (500, "Internal Server Error")
    assert len(requests) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_refusal_after_a_cut_is_not_retried(flavour: str) -> None:
    refused = http_answer("422 Unprocessable Entity", b'{"error":"no"}')
    with (
        scripted_sidecar(AFTER_THE_HEADERS, refused, WHOLE) as (path, requests),
        pytest.raises(SidecarRejected) as caught,
    ):
        call(flavour, path, RETRIES, "ready", "generate")
    assert (caught.value.status, caught.value.message) == (422, "no")
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_answer_that_is_not_http_is_not_retried(flavour: str) -> None:
    with (
        scripted_sidecar(b"SSH-2.0-OpenSSH_9.6\r\n", WHOLE) as (path, requests),
        pytest.raises(SidecarProtocolError) as caught,
    ):
        call(flavour, path, RETRIES, "status")
    assert str(caught.value) == "not an HTTP/1.1 status line: b'SSH-2.0-OpenSSH_9.6\\r\\n'"
    assert len(requests) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_session_opening_cut_short_is_retried(flavour: str) -> None:
    cut = SESSION_OPEN[: SESSION_OPEN.index(b"transfer-encoding")]
    with scripted_sidecar(cut, SESSION_OPEN) as (path, requests):
        assert open_and_close_session(flavour, path, RETRIES) == 5
    assert len(requests) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_session_503_is_unavailable_with_the_sidecars_message(flavour: str) -> None:
    stopping = unavailable_503("the sidecar is stopping and takes no more changes")
    with scripted_sidecar(stopping) as (path, _), pytest.raises(SidecarUnavailable) as caught:
        open_and_close_session(flavour, path, NO_RETRY)
    assert str(caught.value) == (
        f"the sidecar at {path} answered POST /v1/session with 503: "
        "the sidecar is stopping and takes no more changes"
    )
