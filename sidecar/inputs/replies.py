"""What one request of an active check got, as the prober hands it to the check's judgement.

The prober (`sidecar/inputs/prober.py`) makes the request; a judgement
(`sidecar/inputs/mirror_judgement.py`, `sidecar/inputs/canary_judgement.py`) decides what the
reply means. Between them is only this value, as the kubelet's HTTP prober turns one response
into one result (docs/protocol.md section 7.1): so every judgement is a pure function, tested
on values alone, and the words of each failure are the judgement's, not the prober's.
"""

from __future__ import annotations

from dataclasses import dataclass

# The most of a body any check reads: a Dynamo status body is about 100 bytes (4,096
# endpoints fit well under this), a canary's answer a few tokens (docs/protocol.md section 8).
MAX_BODY_BYTES = 1 << 20

# Ranges of status codes, both ends included: a canary's `((200, 299),)` by default.
Codes = tuple[tuple[int, int], ...]


def expected(code: int, codes: Codes) -> bool:
    """Whether `code` is in one of the ranges."""
    return any(low <= code <= high for low, high in codes)


@dataclass(frozen=True)
class Answer:
    """A status code and the whole body, to its end (empty when the body is not read for
    this code: a canary's unexpected code is judged without it)."""

    code: int
    body: bytes


@dataclass(frozen=True)
class TimedOut:
    """No complete answer within `seconds`."""

    seconds: float


@dataclass(frozen=True)
class Unreachable:
    """Nothing accepted the connection."""


@dataclass(frozen=True)
class Closed:
    """The connection closed before the answer was complete."""


@dataclass(frozen=True)
class TooLong:
    """The body went past `limit` bytes; the rest was not read."""

    limit: int


@dataclass(frozen=True)
class HttpFailure:
    """Another failure of the request, by the name of httpx's error."""

    error: str


@dataclass(frozen=True)
class Broken:
    """The request could not be made at all (`error` is the exception's repr)."""

    error: str


Reply = Answer | TimedOut | Unreachable | Closed | TooLong | HttpFailure | Broken
