"""Whether one canary passed, and if not why (docs/protocol.md section 8.2).

Pure: the prober's reply in, a verdict out. A canary passes only when its status code is
expected and the whole answer, to the end of its body or stream, came within its timeout:
Dynamo judges a canary by its first streamed chunk, so a worker frozen mid-stream passes
there forever (ai-dynamo/dynamo issue 13429); here its reply is `TimedOut` and it fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

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


@dataclass(frozen=True)
class Pass:
    """The worker served the canary whole, in time."""


@dataclass(frozen=True)
class Fail:
    """The canary failed; `reason` follows `canary failed: ` in the endpoint's transition."""

    reason: str


def judge_canary(reply: Reply, expect: Codes) -> Pass | Fail:
    """One canary's reply. An answer reached this far whole, so only its code is left to judge."""
    match reply:
        case Answer(code, _):
            return Pass() if expected(code, expect) else Fail(f"status {code}")
        case TimedOut(seconds):
            return Fail(f"no complete answer within {seconds:g}s")
        case Unreachable():
            return Fail("cannot connect")
        case Closed():
            return Fail("connection closed")
        case TooLong(limit):
            return Fail(f"the answer is longer than {limit} bytes")
        case HttpFailure(error):
            return Fail(f"request failed ({error})")
        case Broken(error):
            return Fail(f"the canary could not be sent ({error})")
        case _:
            assert_never(reply)
