"""The active checks' judgements of one reply, on values alone: every kind of reply the prober
hands over, for the mirror (sidecar/inputs/mirror_judgement.py `judge_poll`) and for canaries
(sidecar/inputs/canary_judgement.py `judge_canary`). The bodies themselves are tested in
tests/test_upstream.py (`parse_status`, `parse_frontend`).
"""

from __future__ import annotations

import pytest
from upstreams import FRONTEND_TWO, SEED_NOTREADY, SEED_READY

from sidecar.core.records import Status
from sidecar.inputs.canary_judgement import Fail, Pass, judge_canary
from sidecar.inputs.mirror_judgement import (
    Copy,
    Miss,
    UpstreamError,
    judge_poll,
    parse_frontend,
    parse_status,
)
from sidecar.inputs.replies import (
    Answer,
    Broken,
    Closed,
    HttpFailure,
    Reply,
    TimedOut,
    TooLong,
    Unreachable,
    expected,
)

READY, NOTREADY = Status.READY, Status.NOTREADY

# Every reply that is not an answer, with what the mirror and a canary call it.
SILENCES: list[tuple[Reply, str, str]] = [
    (
        TimedOut(2.0),
        "the status server did not answer within 2s",
        "no complete answer within 2s",
    ),
    (
        TimedOut(0.25),
        "the status server did not answer within 0.25s",
        "no complete answer within 0.25s",
    ),
    (Unreachable(), "the status server cannot be reached", "cannot connect"),
    (Closed(), "the status server closed the connection", "connection closed"),
    (
        TooLong(1048576),
        "the status server's body is too long (the answer is longer than 1048576 bytes)",
        "the answer is longer than 1048576 bytes",
    ),
    (
        HttpFailure("UnsupportedProtocol"),
        "the status server request failed (UnsupportedProtocol)",
        "request failed (UnsupportedProtocol)",
    ),
    (
        Broken("OSError(24, 'Too many open files')"),
        "the status server poll failed (OSError(24, 'Too many open files'))",
        "the canary could not be sent (OSError(24, 'Too many open files'))",
    ),
]


# -- the mirror ------------------------------------------------------------------------------------


def test_poll_copies_a_ready_answer() -> None:
    endpoints = {"clear_kv_blocks": READY, "generate": READY, "load_metrics": READY}
    assert judge_poll(Answer(200, SEED_READY), parse_status) == Copy((endpoints, READY))


def test_poll_copies_a_503_answer() -> None:
    verdict = judge_poll(Answer(503, SEED_NOTREADY), parse_status)
    assert verdict == Copy(({"generate": NOTREADY}, NOTREADY))


def test_poll_copies_a_frontends_instances() -> None:
    verdict = judge_poll(Answer(200, FRONTEND_TWO), parse_frontend)
    assert isinstance(verdict, Copy)
    assert [i.endpoint for i in verdict.answer] == ["clear_kv_blocks", "generate"]


def test_poll_of_an_answer_that_is_not_dynamos_is_a_miss_with_the_parses_reason() -> None:
    assert judge_poll(Answer(404, b"not found"), parse_status) == Miss(
        "the status server answered status 404"
    )
    assert judge_poll(Answer(200, b"<html>"), parse_frontend) == Miss(
        "the status server's body is not JSON"
    )


def test_poll_whose_parse_breaks_is_a_miss() -> None:
    def broken(code: int, body: bytes) -> object:
        raise KeyError("endpoints")

    assert judge_poll(Answer(200, b"{}"), broken) == Miss(
        "the status server poll failed (KeyError('endpoints'))"
    )


def test_poll_miss_reason_is_the_parses_own_words() -> None:
    def refusing(code: int, body: bytes) -> object:
        raise UpstreamError("the status server's body has no status")

    assert judge_poll(Answer(200, b"{}"), refusing) == Miss(
        "the status server's body has no status"
    )


@pytest.mark.parametrize(("reply", "mirror", "canary"), SILENCES)
def test_poll_without_an_answer_is_a_miss_that_says_why(
    reply: Reply, mirror: str, canary: str
) -> None:
    def never(code: int, body: bytes) -> object:
        raise AssertionError("only answers are parsed")

    assert judge_poll(reply, never) == Miss(mirror)


# -- canaries --------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 204, 299])
def test_canary_with_an_expected_code_passes(code: int) -> None:
    assert judge_canary(Answer(code, b""), ((200, 299),)) == Pass()


@pytest.mark.parametrize("code", [199, 300, 404, 500, 503])
def test_canary_with_another_code_fails_with_the_code(code: int) -> None:
    assert judge_canary(Answer(code, b'{"error":"x"}'), ((200, 299),)) == Fail(f"status {code}")


def test_canary_expects_any_listed_range() -> None:
    expect = ((200, 299), (503, 503))
    assert judge_canary(Answer(503, b""), expect) == Pass()
    assert judge_canary(Answer(502, b""), expect) == Fail("status 502")


@pytest.mark.parametrize(("reply", "mirror", "canary"), SILENCES)
def test_canary_without_an_answer_fails_and_says_why(
    reply: Reply, mirror: str, canary: str
) -> None:
    assert judge_canary(reply, ((200, 299),)) == Fail(canary)


def test_expected_takes_both_ends_of_a_range() -> None:
    assert [expected(code, ((200, 204),)) for code in (199, 200, 204, 205)] == [
        False,
        True,
        True,
        False,
    ]
