"""`Retry`'s decisions, without a socket: how long to wait, and when the sidecar's hint counts."""

from __future__ import annotations

import pytest

from sidecar.client import (
    Retry,
    SidecarRejected,
    SidecarUnavailable,
)


def test_client_retry_waits_with_full_jitter_capped_exponentially() -> None:
    retry = Retry(attempts=10, backoff=0.1, max_backoff=1.0)
    assert [retry.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert retry.delay(3, rng=lambda: 0.0) == 0.0


def test_client_retry_defaults_to_one_attempt_and_patient_to_thirty() -> None:
    assert Retry().attempts == 1
    assert Retry.patient().attempts == 30
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Retry(attempts=0)


def test_client_retry_after_is_the_floor_of_the_jittered_wait() -> None:
    waits: list[float] = []
    failures = [
        SidecarUnavailable("/s", SidecarRejected(503, "not saved"), retry_after=1.0),
        SidecarUnavailable("/s", SidecarRejected(503, "stopping"), retry_after=9.0),
    ]

    def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    assert Retry(attempts=3, backoff=0.1, max_backoff=2.0).call(operation, waits.append) == "done"
    assert waits == [1.0, 2.0]
