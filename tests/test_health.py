"""The state machine, pure: every call takes the clock, every change is a Transition."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.health import HealthState
from sidecar.core.records import (
    MAX_ENDPOINTS,
    MAX_INSTANCE_BYTES,
    CapacityError,
    EndCause,
    Instance,
    Liveness,
    Status,
    Subject,
    Transition,
)

READY, NOTREADY = Status.READY, Status.NOTREADY


def make_state(
    required: tuple[str, ...] = (),
    starting: Status = NOTREADY,
    liveness: Liveness = Liveness.STARTED,
) -> tuple[HealthState, list[Transition]]:
    state = HealthState(required=required, starting=starting, started_at=100.0, liveness=liveness)
    seen: list[Transition] = []
    state.subscribe(seen.append)
    return state, seen


def instance(endpoint: str = "generate", instance_id: int = 7) -> Instance:
    return Instance("dynamo", "backend", endpoint, instance_id, {"nats_tcp": "x"}, True)


def statuses(state: HealthState) -> dict[str, str]:
    return {name: record.status.value for name, record in state.endpoints.items()}


def test_health_required_endpoints_start_at_the_starting_status() -> None:
    state, _ = make_state(("generate",), starting=READY)
    assert statuses(state) == {"generate": "ready"}
    assert state.status is READY


def test_health_required_endpoint_never_announced_holds_readiness_back() -> None:
    state, _ = make_state(("generate", "clear_kv_blocks"))
    state.set_endpoint("generate", READY, 101.0)
    assert statuses(state) == {"generate": "ready", "clear_kv_blocks": "notready"}
    assert state.status is NOTREADY


def test_health_ready_when_every_required_endpoint_is_ready() -> None:
    state, _ = make_state(("generate", "clear_kv_blocks"))
    state.set_endpoint("generate", READY, 101.0)
    state.set_endpoint("clear_kv_blocks", READY, 102.0)
    assert state.status is READY


def test_health_endpoint_not_required_never_holds_readiness_back() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("load_metrics", NOTREADY, 101.0)
    state.set_endpoint("generate", READY, 102.0)
    assert state.status is READY
    assert statuses(state) == {"generate": "ready", "load_metrics": "notready"}


def test_health_without_required_endpoints_starting_status_holds_until_one_is_announced() -> None:
    state, _ = make_state(starting=READY)
    assert state.status is READY
    state.set_endpoint("generate", NOTREADY, 101.0)
    assert state.status is NOTREADY


def test_health_without_required_endpoints_every_announced_endpoint_must_be_ready() -> None:
    state, _ = make_state()
    state.set_endpoint("generate", READY, 101.0)
    state.set_endpoint("load_metrics", NOTREADY, 101.0)
    assert state.status is NOTREADY
    state.set_endpoint("load_metrics", READY, 102.0)
    assert state.status is READY


def test_health_withdrawn_endpoint_stays_listed_as_notready() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.set_endpoint("generate", NOTREADY, 102.0)
    assert statuses(state) == {"generate": "notready"}
    assert state.status is NOTREADY


def test_health_transition_reports_time_since_the_life_began_for_a_first_announcement() -> None:
    state, seen = make_state()
    state.set_endpoint("generate", READY, 141.5)
    assert seen[0] == Transition(Subject.ENDPOINT, "generate", "notready", "ready", 141.5, 41.5)
    assert seen[0].describe() == "generate: notready -> ready after 41.5s"


def test_health_overall_status_change_is_a_transition() -> None:
    state, seen = make_state(("generate",))
    state.set_endpoint("generate", READY, 110.0)
    worker = [t for t in seen if t.subject is Subject.WORKER]
    assert worker == [Transition(Subject.WORKER, "worker", "notready", "ready", 110.0, 10.0)]


def test_health_repeating_a_status_records_no_transition() -> None:
    state, seen = make_state(("generate",))
    state.set_endpoint("generate", READY, 110.0)
    count = len(seen)
    state.set_endpoint("generate", READY, 111.0)
    assert len(seen) == count
    assert state.endpoints["generate"].transitions == 1


def test_health_transitions_are_counted_per_endpoint() -> None:
    state, _ = make_state()
    for at, status in enumerate((READY, NOTREADY, READY)):
        state.set_endpoint("generate", status, 101.0 + at)
    assert state.endpoints["generate"].transitions == 3


def test_health_live_fails_until_the_worker_has_been_ready_once() -> None:
    state, _ = make_state(("generate",))
    assert state.live() == (False, "the worker has not been ready yet in this life")
    state.set_endpoint("generate", READY, 101.0)
    assert state.live() == (True, "")


def test_health_live_holds_when_a_ready_worker_becomes_busy_or_withdraws() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.set_endpoint("generate", NOTREADY, 102.0)
    assert state.live() == (True, "")


def test_health_live_with_ready_starting_status_succeeds_at_once() -> None:
    state, _ = make_state(("generate",), starting=READY)
    assert state.live() == (True, "")


def test_health_liveness_health_follows_the_status() -> None:
    state, _ = make_state(("generate",), liveness=Liveness.HEALTH)
    state.set_endpoint("generate", READY, 101.0)
    assert state.live() == (True, "")
    state.set_endpoint("generate", NOTREADY, 102.0)
    assert state.live() == (False, "the worker is not ready")


def test_health_end_of_life_makes_every_endpoint_notready_and_fails_live() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.set_endpoint("load_metrics", READY, 101.0)
    state.end_life("its process exited", EndCause.EXITED, 105.0)
    assert statuses(state) == {"generate": "notready", "load_metrics": "notready"}
    assert state.status is NOTREADY
    assert state.live() == (False, "worker life 1 ended: its process exited")


def test_health_end_of_life_drops_instances() -> None:
    state, _ = make_state()
    state.register_instance(instance(), 101.0)
    state.end_life("its session connection closed", EndCause.EXITED, 102.0)
    assert state.instances == {}


def test_health_end_of_life_is_a_transition_with_its_reason_and_cause() -> None:
    state, seen = make_state()
    state.end_life("its session connection closed", EndCause.EXITED, 130.0)
    life = [t for t in seen if t.subject is Subject.LIFE]
    assert life == [
        Transition(
            Subject.LIFE,
            "worker life 1",
            "alive",
            "ended",
            130.0,
            30.0,
            "its session connection closed",
            EndCause.EXITED,
        )
    ]


def test_health_next_signal_after_a_life_ended_begins_a_new_life() -> None:
    state, _ = make_state(("generate",), starting=READY)
    state.set_endpoint("load_metrics", READY, 101.0)
    state.end_life("its session connection closed", EndCause.EXITED, 102.0)
    state.heartbeat(103.0)
    assert state.life.number == 2
    assert statuses(state) == {"generate": "ready"}
    assert state.live() == (True, "")


def test_health_new_life_starts_required_endpoints_at_the_starting_status_and_no_others() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.set_endpoint("load_metrics", READY, 101.0)
    state.end_life("its session connection closed", EndCause.EXITED, 102.0)
    state.set_endpoint("other", NOTREADY, 103.0)
    assert statuses(state) == {"generate": "notready", "other": "notready"}
    assert state.live() == (False, "the worker has not been ready yet in this life")


def test_health_last_session_closing_ends_the_life() -> None:
    state, _ = make_state()
    first = state.open_session(101.0, pid=10)
    second = state.open_session(101.0)
    state.close_session(first, 102.0)
    assert state.alive
    state.close_session(second, 103.0)
    assert not state.alive
    assert state.life.end_reason == "its session connection closed"


def test_health_session_of_an_old_life_closing_changes_nothing() -> None:
    state, _ = make_state()
    old = state.open_session(101.0)
    state.end_life("its process exited", EndCause.EXITED, 102.0)
    state.open_session(103.0)
    state.close_session(old, 104.0)
    assert state.alive
    assert state.life.number == 2


def test_health_signal_records_the_pid() -> None:
    state, _ = make_state()
    state.heartbeat(101.0, pid=4242)
    assert state.life.pid == 4242
    assert state.life.last_heartbeat == 101.0


def test_health_instances_with_one_id_are_removed_together() -> None:
    state, _ = make_state()
    state.register_instance(instance("generate", 7), 101.0)
    state.register_instance(instance("clear_kv_blocks", 7), 101.0)
    state.register_instance(instance("generate", 8), 101.0)
    assert state.remove_instances(7, 102.0) == 2
    assert [i.instance_id for i in state.sorted_instances()] == [8]


def test_health_registering_the_same_instance_twice_replaces_it() -> None:
    state, _ = make_state()
    assert state.register_instance(instance(), 101.0) is True
    assert state.register_instance(instance(), 102.0) is False
    assert len(state.instances) == 1


def test_health_instances_are_sorted_by_namespace_component_endpoint_id() -> None:
    state, _ = make_state()
    for endpoint, iid in (
        ("load_metrics", 1),
        ("generate", 9),
        ("clear_kv_blocks", 5),
        ("generate", 2),
    ):
        state.register_instance(instance(endpoint, iid), 101.0)
    keys = [(i.endpoint, i.instance_id) for i in state.sorted_instances()]
    assert keys == [("clear_kv_blocks", 5), ("generate", 2), ("generate", 9), ("load_metrics", 1)]


def test_health_endpoint_count_is_bounded() -> None:
    state, _ = make_state()
    for n in range(MAX_ENDPOINTS):
        state.set_endpoint(f"e{n}", READY, 101.0)
    with pytest.raises(CapacityError):
        state.set_endpoint("one-more", READY, 101.0)
    assert len(state.endpoints) == MAX_ENDPOINTS


def big_instance(n: int) -> Instance:
    """Instances of one size: ids of as many digits, a transport near the body limit."""
    return Instance("dynamo", "backend", "generate", 1000 + n, {"t": "x" * 60_000}, True)


def test_health_instances_are_bounded_by_their_size_in_the_state_file() -> None:
    state, _ = make_state()
    size = len(big_instance(0).record)
    fits = MAX_INSTANCE_BYTES // size
    for n in range(fits):
        state.register_instance(big_instance(n), 101.0)
    version = state.version
    with pytest.raises(CapacityError) as refused:
        state.register_instance(big_instance(fits), 101.0)
    assert str(refused.value) == (
        f"the instances would take {(fits + 1) * size} bytes in the state file; the sidecar "
        f"keeps at most {MAX_INSTANCE_BYTES}"
    )
    assert len(state.instances) == fits and state.version == version


def test_health_removed_and_replaced_instances_give_their_bytes_back() -> None:
    state, _ = make_state()
    fits = MAX_INSTANCE_BYTES // len(big_instance(0).record)
    for n in range(fits):
        state.register_instance(big_instance(n), 101.0)
    state.register_instance(big_instance(0), 102.0)  # replaced: the same size again
    state.remove_instances(1001, 102.0)
    assert state.register_instance(big_instance(fits), 103.0) is True


def test_health_drain_is_a_transition_and_leaves_liveness_alone() -> None:
    state, seen = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.drain(110.0)
    assert state.draining
    assert seen[-1].subject is Subject.DRAIN
    assert state.live() == (True, "")


def test_health_every_change_bumps_the_version() -> None:
    state, _ = make_state()
    versions = [state.version]
    state.set_endpoint("generate", READY, 101.0)
    versions.append(state.version)
    state.register_instance(instance(), 102.0)
    versions.append(state.version)
    state.drain(103.0)
    versions.append(state.version)
    assert versions == sorted(set(versions))


signals = st.lists(
    st.tuples(
        st.sampled_from(["set", "end", "heartbeat", "open", "close"]),
        st.sampled_from(["generate", "clear_kv_blocks", "load_metrics"]),
        st.sampled_from([READY, NOTREADY]),
    ),
    max_size=40,
)


@given(signals, st.sampled_from([READY, NOTREADY]))
def test_health_status_always_agrees_with_the_rules(
    steps: list[tuple[str, str, Status]], starting: Status
) -> None:
    state, _ = make_state(("generate",), starting=starting)
    sessions: list[int] = []
    for at, (kind, name, status) in enumerate(steps, start=101):
        if kind == "set":
            state.set_endpoint(name, status, float(at))
        elif kind == "end":
            state.end_life("test", EndCause.EXITED, float(at))
        elif kind == "heartbeat":
            state.heartbeat(float(at))
        elif kind == "open":
            sessions.append(state.open_session(float(at)))
        elif sessions:
            state.close_session(sessions.pop(0), float(at))
        expected = READY if state.endpoints["generate"].status is READY else NOTREADY
        assert state.status is expected
        if not state.alive:
            assert all(r.status is NOTREADY for r in state.endpoints.values())
            assert state.live()[0] is False


def test_health_heartbeat_deadline_is_off_without_a_timeout() -> None:
    state, _ = make_state()
    state.heartbeat(101.0)
    assert state.heartbeat_deadline() is None


def test_health_heartbeat_deadline_is_armed_by_the_first_heartbeat_of_a_life() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=100.0, heartbeat_timeout=5.0)
    assert state.heartbeat_deadline() is None
    state.heartbeat(101.0)
    assert state.heartbeat_deadline() == 106.0


def test_health_any_signal_moves_the_heartbeat_deadline() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=100.0, heartbeat_timeout=5.0)
    state.heartbeat(101.0)
    state.set_endpoint("generate", READY, 104.0)
    assert state.heartbeat_deadline() == 109.0


def test_health_silence_past_the_deadline_ends_the_life() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=100.0, heartbeat_timeout=5.0)
    state.heartbeat(101.0)
    state.check_heartbeat(105.9)
    assert state.alive
    state.check_heartbeat(106.0)
    assert state.live() == (False, "worker life 1 ended: no heartbeat for 5s")
    assert state.heartbeat_deadline() is None


def test_health_notify_ready_marks_every_required_endpoint_ready() -> None:
    state, _ = make_state(("generate", "clear_kv_blocks"))
    state.notify_ready(101.0)
    assert statuses(state) == {"generate": "ready", "clear_kv_blocks": "ready"}
    assert state.status is READY


def test_health_notify_ready_without_required_endpoints_makes_the_status_ready() -> None:
    state, _ = make_state()
    state.notify_ready(101.0)
    assert state.status is READY
    assert state.live() == (True, "")


def test_health_notify_stopping_marks_everything_notready_and_keeps_the_life() -> None:
    state, _ = make_state(starting=READY)
    state.set_endpoint("generate", READY, 101.0)
    state.notify_stopping(102.0)
    assert statuses(state) == {"generate": "notready"}
    assert state.status is NOTREADY
    assert state.alive


def test_health_notify_stopping_overrides_a_ready_starting_status() -> None:
    state, _ = make_state(starting=READY)
    state.notify_stopping(101.0)
    assert state.status is NOTREADY


def test_health_notify_status_text_is_kept_for_the_life() -> None:
    state, _ = make_state()
    state.notify_status("loading weights 40%", 101.0)
    assert state.life.status_text == "loading weights 40%"


def test_health_process_exit_ends_the_life() -> None:
    state, _ = make_state(("generate",))
    state.process_started(4242, 101.0)
    state.set_endpoint("generate", READY, 102.0)
    state.process_exited(4242, 103.0)
    assert state.live() == (False, "worker life 1 ended: its process 4242 exited")


def test_health_new_process_after_an_exit_begins_a_new_life() -> None:
    state, _ = make_state()
    state.process_started(4242, 101.0)
    state.process_exited(4242, 102.0)
    state.process_started(4343, 103.0)
    assert (state.life.number, state.life.pid, state.alive) == (2, 4343, True)


def test_health_new_process_replacing_a_live_one_ends_its_life_first() -> None:
    state, seen = make_state()
    state.process_started(4242, 101.0)
    state.process_started(4343, 102.0)
    assert state.life.number == 2
    ended = [t for t in seen if t.subject is Subject.LIFE and t.new == "ended"]
    assert ended[0].reason == "its process 4242 was replaced by 4343"


def test_health_same_process_seen_again_changes_nothing() -> None:
    state, _ = make_state()
    state.process_started(4242, 101.0)
    version = state.version
    state.process_started(4242, 102.0)
    assert (state.life.number, state.version) == (1, version)


def test_health_restore_continues_a_ready_life_as_live() -> None:
    old, _ = make_state(("generate",))
    old.heartbeat(101.0, pid=4242)
    old.set_endpoint("generate", READY, 102.0)
    old.register_instance(instance(), 102.0)
    new, seen = make_state(("generate",))
    new.restore(old.save(), 500.0)
    assert (new.life.number, new.life.pid, new.status) == (1, 4242, READY)
    assert new.live() == (True, "")
    assert new.instances == old.instances
    assert seen[-1].describe() == (
        "worker life 1: saved -> alive after 0.0s (restored from the state file)"
    )


def test_health_restore_keeps_an_ended_life_ended() -> None:
    old, _ = make_state(("generate",))
    old.end_life("its process 7 exited", EndCause.EXITED, 101.0)
    new, _ = make_state(("generate",))
    new.restore(old.save(), 500.0)
    assert new.live() == (False, "worker life 1 ended: its process 7 exited")


def test_health_restore_seeds_required_endpoints_missing_from_the_file() -> None:
    old, _ = make_state(("generate",))
    new, _ = make_state(("generate", "clear_kv_blocks"))
    new.restore(old.save(), 500.0)
    assert statuses(new) == {"generate": "notready", "clear_kv_blocks": "notready"}


def test_health_restore_gives_a_heartbeating_worker_a_full_timeout() -> None:
    old = HealthState(required=(), starting=NOTREADY, started_at=100.0, heartbeat_timeout=5.0)
    old.heartbeat(101.0)
    new = HealthState(required=(), starting=NOTREADY, started_at=500.0, heartbeat_timeout=5.0)
    new.restore(old.save(), 500.0)
    assert new.heartbeat_deadline() == 505.0


def test_health_session_still_open_watches_the_next_life() -> None:
    state, _ = make_state()
    token = state.open_session(101.0)
    state.end_life("no heartbeat for 5s", EndCause.HEARTBEAT_MISSED, 102.0)
    state.heartbeat(103.0)
    state.close_session(token, 104.0)
    assert state.live() == (False, "worker life 2 ended: its session connection closed")


def test_health_reported_pid_of_a_child_does_not_look_like_a_replaced_process() -> None:
    state, _ = make_state()
    state.process_started(4242, 101.0)
    state.heartbeat(102.0, pid=4300)
    state.process_started(4242, 103.0)
    assert (state.life.number, state.alive) == (1, True)


def test_health_failing_canary_holds_a_ready_endpoint_notready_with_its_reason() -> None:
    state, seen = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.canary_failed("generate", "no answer within 3s", 110.0)
    assert statuses(state) == {"generate": "notready"}
    assert state.status is NOTREADY
    assert seen[-2].describe() == (
        "generate: ready -> notready after 9.0s (canary failed: no answer within 3s)"
    )


def test_health_passing_canary_restores_what_the_worker_last_said() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.canary_failed("generate", "503", 110.0)
    state.canary_passed("generate", 120.0)
    assert statuses(state) == {"generate": "ready"}


def test_health_worker_saying_ready_while_held_stays_notready() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.canary_failed("generate", "503", 110.0)
    state.set_endpoint("generate", READY, 111.0)
    assert statuses(state) == {"generate": "notready"}


def test_health_canary_never_makes_a_not_ready_worker_ready() -> None:
    state, _ = make_state(("generate",))
    state.canary_failed("generate", "503", 110.0)
    state.canary_passed("generate", 120.0)
    assert statuses(state) == {"generate": "notready"}
    assert state.endpoints["generate"].held == ""


def test_health_canary_hold_ends_with_the_life() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("generate", READY, 101.0)
    state.canary_failed("generate", "503", 110.0)
    state.end_life("its process 7 exited", EndCause.EXITED, 111.0)
    state.set_endpoint("generate", READY, 112.0)
    assert statuses(state) == {"generate": "ready"}


def test_health_mirror_copies_the_upstream_endpoint_map() -> None:
    state, _ = make_state(("generate",))
    state.set_endpoint("stale", READY, 101.0)
    state.mirror({"generate": READY, "clear_kv_blocks": READY}, READY, 102.0)
    assert statuses(state) == {"generate": "ready", "clear_kv_blocks": "ready"}
    assert state.status is READY


def test_health_mirror_keeps_a_required_endpoint_the_upstream_lacks_notready() -> None:
    state, _ = make_state(("generate",))
    state.mirror({"clear_kv_blocks": READY}, READY, 102.0)
    assert statuses(state) == {"generate": "notready", "clear_kv_blocks": "ready"}
    assert state.status is NOTREADY


def test_health_mirror_with_no_endpoints_follows_the_upstream_status() -> None:
    state, _ = make_state()
    state.mirror({}, READY, 102.0)
    assert state.status is READY
    state.mirror({}, NOTREADY, 103.0)
    assert state.status is NOTREADY


def test_health_mirror_lost_makes_everything_notready_but_keeps_the_life() -> None:
    state, _ = make_state(("generate",))
    state.mirror({"generate": READY}, READY, 102.0)
    state.mirror_lost("its status server did not answer", 103.0)
    assert statuses(state) == {"generate": "notready"}
    assert (state.status, state.alive) == (NOTREADY, True)
