"""The core's thresholds for the active checks (sidecar/core/checks.py), on values alone:
results in a row in, what the state must be told out (docs/protocol.md sections 6.5, 8.1, 8.2).
"""

from __future__ import annotations

import pytest

from sidecar.core.checks import Act, Failures, Misses

# -- the mirror: misses in a row end the life it answered in -------------------------------------


def test_misses_before_any_answer_never_end_the_life() -> None:
    rule = Misses(2)
    assert [rule.missed(1) for _ in range(5)] == [Act.NOTHING] * 5
    assert rule.in_a_row == 5 and not rule.armed(1)


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_misses_end_the_life_at_the_threshold_once_it_answered(threshold: int) -> None:
    rule = Misses(threshold)
    rule.answered(1)
    acts = [rule.missed(1) for _ in range(threshold + 1)]
    assert acts == [Act.NOTHING] * (threshold - 1) + [Act.END_LIFE, Act.END_LIFE]


def test_an_answer_ends_the_run_of_misses() -> None:
    rule = Misses(3)
    rule.answered(1)
    rule.missed(1)
    rule.missed(1)
    rule.answered(1)
    assert rule.in_a_row == 0
    assert [rule.missed(1), rule.missed(1), rule.missed(1)] == [
        Act.NOTHING,
        Act.NOTHING,
        Act.END_LIFE,
    ]


def test_an_answer_arms_only_the_life_it_was_copied_into() -> None:
    rule = Misses(1)
    rule.answered(1)
    assert rule.armed(1) and not rule.armed(2)
    # The life ended and a new one began without an answer of the server (a socket signal).
    assert rule.missed(2) is Act.NOTHING
    rule.answered(2)
    assert rule.missed(2) is Act.END_LIFE


def test_misses_name_their_threshold_in_the_end_reason() -> None:
    assert Misses(3).end_reason == "its status server did not answer 3 times"


# -- canaries: failures in a row hold, a pass releases ---------------------------------------------


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_failures_hold_at_the_threshold_and_again_after_it(threshold: int) -> None:
    rule = Failures(threshold)
    acts = [rule.failed(1, 1) for _ in range(threshold + 1)]
    assert acts == [Act.NOTHING] * (threshold - 1) + [Act.HOLD, Act.HOLD]
    assert rule.holding(1) and rule.in_a_row(1) == threshold + 1


def test_a_pass_releases_and_ends_the_run() -> None:
    rule = Failures(2)
    rule.failed(1, 1)
    rule.failed(1, 1)
    assert rule.passed(1, 1) is Act.RELEASE
    assert rule.in_a_row(1) == 0 and not rule.holding(1)
    assert rule.failed(1, 1) is Act.NOTHING


def test_a_pass_without_failures_still_releases() -> None:
    """The state ignores a release of an endpoint it does not hold; the rule need not know."""
    assert Failures(3).passed(1, 1) is Act.RELEASE


def test_a_new_life_starts_the_count_again() -> None:
    rule = Failures(2)
    rule.failed(1, 1)
    rule.failed(1, 1)
    assert rule.holding(1)
    assert rule.in_a_row(2) == 0 and not rule.holding(2)
    assert rule.failed(2, 2) is Act.NOTHING
    assert rule.in_a_row(2) == 1


@pytest.mark.parametrize("passed", [True, False])
def test_a_canary_that_straddles_the_end_of_a_life_is_not_counted(passed: bool) -> None:
    rule = Failures(1)
    rule.failed(1, 1)
    act = rule.passed(1, 2) if passed else rule.failed(1, 2)
    assert act is Act.UNCOUNTED
    assert rule.in_a_row(1) == 1 and rule.in_a_row(2) == 0
