"""Kubernetes reporting, the pure parts: transitions into event texts and the pod condition,
read from a snapshot of the state, and events correlated like the kubelet's recorder."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from kube_pod import POD

from sidecar.core.health import HealthState
from sidecar.core.records import EndCause, Status, Subject, Transition
from sidecar.kube.correlator import COMBINED_PREFIX, EventCorrelator
from sidecar.kube.reports import ConditionSpec, EventSpec, Report, describe, format_duration

READY, NOTREADY = Status.READY, Status.NOTREADY
EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z
UPPER_CAMEL = re.compile(r"(?:[A-Z][a-z0-9]+)+")


def report_after(state: HealthState, change: Callable[[], object]) -> list[Report]:
    """The reports for what `change` publishes, described as the reporter does: with a snapshot
    of the state taken when the transition is heard."""
    reports: list[Report] = []
    state.subscribe(lambda t: reports.append(describe(t, state.snapshot())))
    change()
    return reports


def events_of(reports: list[Report]) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message) for r in reports for e in r.events]


# -- transitions into reports ---------------------------------------------------------------


def test_kube_describe_endpoint_ready_says_how_long_it_took() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=100.0)
    reports = report_after(state, lambda: state.set_endpoint("generate", READY, 141.2))
    assert events_of(reports)[0] == (
        "Normal",
        "EndpointReady",
        "Endpoint generate is ready after 41.2s",
    )


def test_kube_describe_endpoint_not_ready_is_a_warning_with_how_long_it_was_ready() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    state.set_endpoint("generate", READY, 10.0)
    state.set_endpoint("clear_kv_blocks", READY, 10.0)
    reports = report_after(state, lambda: state.set_endpoint("generate", NOTREADY, 735.0))
    assert events_of(reports)[0] == (
        "Warning",
        "EndpointNotReady",
        "Endpoint generate is not ready any more, after 12m5s ready",
    )


def test_kube_describe_worker_ready_names_the_required_endpoints_and_the_lifes_age() -> None:
    state = HealthState(required=("generate", "clear_kv_blocks"), starting=NOTREADY, started_at=0)
    state.set_endpoint("clear_kv_blocks", READY, 3.0)
    reports = report_after(state, lambda: state.set_endpoint("generate", READY, 3723.0))
    message = (
        "Worker life 1 is ready 1h2m3s after it began: required endpoints generate and "
        "clear_kv_blocks are ready"
    )
    assert events_of(reports)[1] == ("Normal", "WorkerReady", message)
    assert reports[1].condition == ConditionSpec(True, "WorkerReady", message)


def test_kube_describe_worker_not_ready_names_the_endpoints_that_hold_it_back() -> None:
    state = HealthState(required=("generate", "embed"), starting=READY, started_at=0.0)
    reports = report_after(state, lambda: state.set_endpoint("embed", NOTREADY, 30.0))
    message = (
        "Worker life 1 is not ready any more, after 30.0s ready: required endpoint embed is not "
        "ready"
    )
    assert events_of(reports) == [
        ("Warning", "EndpointNotReady", "Endpoint embed is not ready any more, after 30.0s ready"),
        ("Warning", "WorkerNotReady", message),
    ]
    assert reports[1].condition == ConditionSpec(False, "WorkerNotReady", message)


def test_kube_describe_end_of_life_by_a_closed_session_is_worker_exited() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=0.0)
    session = state.open_session(1.0)
    state.set_endpoint("generate", READY, 40.0)
    reports = report_after(state, lambda: state.close_session(session, 3600.0))
    assert events_of(reports) == [
        (
            "Warning",
            "EndpointNotReady",
            "Endpoint generate is not ready any more, after 59m20s ready",
        ),
        (
            "Warning",
            "WorkerExited",
            "Worker life 1 ended after 1h0m0s: its session connection closed; the live path "
            "fails until a new life begins",
        ),
    ]
    # The worker's readiness falls with the life: no WorkerNotReady event, and the condition
    # keeps the reason of the death.
    conditions = [r.condition for r in reports if r.condition is not None]
    assert conditions[-1] == ConditionSpec(
        False, "WorkerExited", "Worker life 1 ended: its session connection closed"
    )


def test_kube_describe_end_of_life_by_a_process_exit_is_worker_exited() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    state.process_started(4242, 1.0)
    reports = report_after(state, lambda: state.process_exited(4242, 61.0))
    assert events_of(reports) == [
        (
            "Warning",
            "WorkerExited",
            "Worker life 1 ended after 1m1s: its process 4242 exited; the live path fails "
            "until a new life begins",
        )
    ]


def test_kube_describe_end_of_life_by_silence_is_heartbeat_missed() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0, heartbeat_timeout=30.0)
    state.heartbeat(5.0)
    reports = report_after(state, lambda: state.check_heartbeat(35.0))
    assert events_of(reports) == [
        (
            "Warning",
            "HeartbeatMissed",
            "Worker life 1 ended after 35.0s: no heartbeat for 30s; the live path fails until "
            "a new life begins",
        )
    ]
    assert reports[0].condition == ConditionSpec(
        False, "HeartbeatMissed", "Worker life 1 ended: no heartbeat for 30s"
    )


def test_kube_describe_end_of_life_by_a_silent_status_server_is_worker_unresponsive() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    reason = "its status server did not answer 3 times"
    reports = report_after(state, lambda: state.end_life(reason, EndCause.UNRESPONSIVE, 90.0))
    assert events_of(reports)[0][:2] == ("Warning", "WorkerUnresponsive")
    assert reports[0].condition == ConditionSpec(
        False, "WorkerUnresponsive", f"Worker life 1 ended: {reason}"
    )


def test_kube_describe_endpoint_says_why_when_the_state_knows() -> None:
    held = Transition(
        Subject.ENDPOINT,
        "generate",
        "ready",
        "notready",
        0.0,
        300.0,
        "canary failed: no answer within 3s",
    )
    assert events_of([describe(held)]) == [
        (
            "Warning",
            "EndpointNotReady",
            "Endpoint generate is not ready any more, after 5m0s ready: canary failed: no "
            "answer within 3s",
        )
    ]


def test_kube_describe_a_new_life_is_worker_restarted_and_starting() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=0.0)
    state.end_life("its process 7 exited", EndCause.EXITED, 100.0)
    reports = report_after(state, lambda: state.open_session(112.5))
    assert events_of(reports) == [
        ("Normal", "WorkerRestarted", "Worker life 2 began 12.5s after the previous life ended")
    ]
    assert reports[0].condition == ConditionSpec(
        False,
        "WorkerStarting",
        "Worker life 2 began; not ready yet: required endpoint generate is not ready",
    )


def test_kube_describe_drain_is_draining_and_makes_the_condition_false() -> None:
    state = HealthState(required=(), starting=READY, started_at=0.0)
    reports = report_after(state, lambda: state.drain(10.0))
    (report,) = reports
    assert [(e.type, e.reason) for e in report.events] == [("Normal", "Draining")]
    assert report.condition is not None
    assert (report.condition.status, report.condition.reason) == (False, "Draining")


def test_kube_describe_a_restored_life_is_state_restored_with_the_current_condition() -> None:
    live = HealthState(required=("generate",), starting=NOTREADY, started_at=0.0)
    live.set_endpoint("generate", READY, 20.0)
    restarted = HealthState(required=("generate",), starting=NOTREADY, started_at=500.0)
    reports = report_after(restarted, lambda: restarted.restore(live.save(), 500.0))
    assert events_of(reports) == [
        (
            "Normal",
            "StateRestored",
            "Sidecar restarted and continues worker life 1 from its state file",
        )
    ]
    assert reports[0].condition == ConditionSpec(
        True, "WorkerReady", "Worker life 1 is ready: required endpoint generate is ready"
    )


def test_kube_describe_a_restored_ended_life_keeps_why_it_ended() -> None:
    hung = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    hung.end_life("no heartbeat for 30s", EndCause.HEARTBEAT_MISSED, 40.0)
    restarted = HealthState(required=(), starting=NOTREADY, started_at=500.0)
    reports = report_after(restarted, lambda: restarted.restore(hung.save(), 500.0))
    assert reports[0].condition == ConditionSpec(
        False, "HeartbeatMissed", "Worker life 1 ended: no heartbeat for 30s"
    )


def test_kube_describe_an_end_of_life_is_named_by_its_cause_not_its_words() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=0.0)
    words = "no heartbeat, said the status server, which did not answer"
    reports = report_after(state, lambda: state.end_life(words, EndCause.EXITED, 9.0))
    assert events_of(reports)[0][:2] == ("Warning", "WorkerExited")


def test_kube_describe_gives_upper_camel_case_reasons_and_normal_or_warning_types() -> None:
    state = HealthState(
        required=("generate",), starting=NOTREADY, started_at=0.0, heartbeat_timeout=5
    )
    reports: list[Report] = []
    state.subscribe(lambda t: reports.append(describe(t, state.snapshot())))
    session = state.open_session(1.0)
    state.set_endpoint("generate", READY, 2.0)
    state.set_endpoint("generate", NOTREADY, 3.0)
    state.set_endpoint("generate", READY, 4.0)
    state.close_session(session, 5.0)
    state.heartbeat(6.0)
    state.check_heartbeat(20.0)
    state.process_started(9, 21.0)
    state.process_exited(9, 22.0)
    state.drain(23.0)
    specs = [e for r in reports for e in r.events]
    conditions = [r.condition for r in reports if r.condition is not None]
    reasons = {e.reason for e in specs} | {c.reason for c in conditions}
    assert reasons == {
        "EndpointReady",
        "EndpointNotReady",
        "WorkerReady",
        "WorkerNotReady",
        "WorkerExited",
        "WorkerRestarted",
        "WorkerStarting",
        "HeartbeatMissed",
        "Draining",
    }
    assert all(UPPER_CAMEL.fullmatch(reason) for reason in reasons)
    assert {e.type for e in specs} == {"Normal", "Warning"}
    assert all(e.type == "Warning" for e in specs if "Not" in e.reason or "Exited" in e.reason)


def test_kube_describe_reads_only_the_snapshot_it_is_given() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=0.0)
    state.set_endpoint("generate", READY, 5.0)
    before = state.snapshot()
    state.set_endpoint("generate", NOTREADY, 6.0)
    worker = Transition(Subject.WORKER, "worker", "notready", "ready", 5.0, 5.0)
    assert events_of([describe(worker, before)]) == [
        (
            "Normal",
            "WorkerReady",
            "Worker life 1 is ready 5.0s after it began: required endpoint generate is ready",
        )
    ]
    with pytest.raises(ValueError):
        describe(worker)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.04, "0.0s"),
        (41.25, "41.2s"),
        (59.9, "59.9s"),
        (60, "1m0s"),
        (725, "12m5s"),
        (7384, "2h3m4s"),
    ],
)
def test_kube_format_duration_reads_like_go(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


# -- the correlator ---------------------------------------------------------------------------


def test_kube_correlator_counts_an_identical_event_on_the_first_one() -> None:
    correlator = EventCorrelator(POD.name)
    spec = EventSpec("Warning", "EndpointNotReady", "Endpoint generate is not ready any more")
    first = correlator.correlate(spec, 0.0, EPOCH)
    again = correlator.correlate(spec, 60.0, EPOCH + 60)
    assert first is not None and again is not None
    assert (first.count, again.count) == (1, 2)
    assert again.name == first.name
    assert again.is_repeat and not first.is_repeat
    assert (again.first_timestamp, again.last_timestamp) == (EPOCH, EPOCH + 60)


def test_kube_correlator_combines_similar_events_from_the_tenth_message() -> None:
    correlator = EventCorrelator(POD.name)
    results = [
        correlator.correlate(
            EventSpec("Normal", "EndpointReady", f"Endpoint e{n} is ready"), n, EPOCH + n
        )
        for n in range(11)
    ]
    assert all(r is not None for r in results)
    names = [r.name for r in results if r is not None]
    # client-go: the first nine distinct messages are events of their own; the tenth and
    # after go into one combined event, counted.
    assert len(set(names[:9])) == 9
    assert names[9] == names[10] and names[9] not in names[:9]
    combined = results[10]
    assert combined is not None
    assert combined.message == f"{COMBINED_PREFIX}Endpoint e10 is ready"
    assert combined.count == 2


def test_kube_correlator_starts_over_after_ten_quiet_minutes() -> None:
    correlator = EventCorrelator(POD.name)
    for n in range(9):
        correlator.correlate(EventSpec("Normal", "EndpointReady", f"m{n}"), n, EPOCH)
    late = correlator.correlate(EventSpec("Normal", "EndpointReady", "m9"), 8 + 600.5, EPOCH)
    assert late is not None and late.message == "m9"


def test_kube_correlator_lets_a_burst_of_25_through_then_one_every_five_minutes() -> None:
    correlator = EventCorrelator(POD.name)
    spec = EventSpec("Warning", "WorkerNotReady", "Worker is not ready")
    sent = [correlator.correlate(spec, 0.0, EPOCH) is not None for _ in range(40)]
    assert sent == [True] * 25 + [False] * 15
    assert correlator.correlate(spec, 299.0, EPOCH) is None
    assert correlator.correlate(spec, 300.5, EPOCH) is not None
    assert correlator.correlate(spec, 301.0, EPOCH) is None
    assert correlator.correlate(spec, 601.0, EPOCH) is not None


def test_kube_correlator_keeps_counting_while_the_spam_filter_holds_events_back() -> None:
    correlator = EventCorrelator(POD.name, burst=1)
    spec = EventSpec("Warning", "WorkerNotReady", "Worker is not ready")
    assert correlator.correlate(spec, 0.0, EPOCH) is not None
    for _ in range(5):
        assert correlator.correlate(spec, 1.0, EPOCH) is None
    sent = correlator.correlate(spec, 301.0, EPOCH + 301)
    assert sent is not None and sent.count == 7
