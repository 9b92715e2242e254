"""Leases in the pure state machine: owners of instances, timed only by the clock it is given."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.core.health import HealthState
from sidecar.core.records import (
    LEASE_TTL,
    MAX_LEASES,
    CapacityError,
    EndCause,
    Instance,
    Status,
    Subject,
    Transition,
    UnknownLease,
)

A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def make_state() -> tuple[HealthState, list[Transition]]:
    state = HealthState(required=(), starting=Status.NOTREADY, started_at=100.0)
    seen: list[Transition] = []
    state.subscribe(seen.append)
    return state, seen


def owned(instance_id: int, lease: str | None, endpoint: str = "generate") -> Instance:
    return Instance("dynamo", "backend", endpoint, instance_id, {"tcp": "x"}, True, lease=lease)


def ids(state: HealthState) -> list[int]:
    return sorted({i.instance_id for i in state.instances.values()})


def test_lease_expires_at_its_ttl_with_its_instances() -> None:
    state, _ = make_state()
    state.grant_lease(A, 5.0, 101.0)
    state.register_instance(owned(1, A), 101.0)
    state.check_deadlines(105.9)
    assert ids(state) == [1]
    state.check_deadlines(106.0)
    assert (ids(state), state.leases) == ([], {})


def test_lease_renewal_moves_its_expiry_a_full_ttl_later() -> None:
    state, _ = make_state()
    state.grant_lease(A, 5.0, 101.0)
    state.renew_lease(A, 104.0)
    assert state.next_deadline() == 109.0


def test_lease_expiry_takes_only_its_own_instances() -> None:
    state, _ = make_state()
    state.grant_lease(A, 5.0, 101.0)
    state.grant_lease(B, 50.0, 101.0)
    state.register_instance(owned(1, A), 101.0)
    state.register_instance(owned(2, B), 101.0)
    state.register_instance(owned(3, None), 101.0)
    state.check_deadlines(106.0)
    assert ids(state) == [2, 3]


def test_lease_unknown_refuses_the_instance_and_changes_nothing() -> None:
    state, _ = make_state()
    version = state.version
    with pytest.raises(UnknownLease, match=f"no lease {A}: it expired"):
        state.register_instance(owned(1, A), 101.0)
    assert (state.instances, state.version) == ({}, version)


def test_lease_grant_past_the_limit_is_refused() -> None:
    state, _ = make_state()
    for n in range(MAX_LEASES):
        state.grant_lease(f"{n:016x}", 10.0, 101.0)
    with pytest.raises(CapacityError, match=f"at most {MAX_LEASES} leases"):
        state.grant_lease(A, 10.0, 101.0)


def test_session_close_drops_only_its_leases_instances() -> None:
    state, _ = make_state()
    first = state.open_session(101.0, lease_id=A)
    state.open_session(101.0, lease_id=B)
    state.register_instance(owned(1, A), 101.0)
    state.register_instance(owned(2, B), 101.0)
    state.close_session(first, 102.0)
    assert ids(state) == [2]
    assert state.alive


def test_last_session_closing_ends_the_life_when_sessions_hold_it() -> None:
    state, _ = make_state()
    token = state.open_session(101.0, lease_id=A)
    state.close_session(token, 102.0)
    assert not state.alive
    assert state.life.end_reason == "its session connection closed"


def test_last_session_closing_keeps_a_frontends_life() -> None:
    state = HealthState(required=(), starting=Status.NOTREADY, started_at=100.0, frontend=True)
    token = state.open_session(101.0, lease_id=A)
    state.register_instance(owned(1, A), 101.0)
    state.register_instance(owned(2, None), 101.0)
    state.close_session(token, 102.0)
    assert (ids(state), state.alive, state.life.sessions) == ([2], True, set())


def test_session_lease_has_no_expiry_while_held() -> None:
    state, _ = make_state()
    state.open_session(101.0, lease_id=A)
    assert state.leases[A].expires_at is None
    assert state.next_deadline() is None


def test_session_holding_a_restored_lease_stops_its_expiry() -> None:
    state, _ = make_state()
    state.grant_lease(A, 5.0, 101.0)
    state.open_session(102.0, lease_id=A)
    state.check_deadlines(1000.0)
    assert A in state.leases


def test_life_end_keeps_the_instances_of_leases() -> None:
    state, _ = make_state()
    state.grant_lease(A, 50.0, 101.0)
    state.register_instance(owned(1, A), 101.0)
    state.register_instance(owned(2, None), 101.0)
    state.end_life("its process 9 exited", EndCause.EXITED, 102.0)
    assert ids(state) == [1]


def test_lease_restored_from_a_saved_state_expires_a_full_ttl_after_the_restore() -> None:
    state, _ = make_state()
    state.grant_lease(A, 5.0, 101.0)
    state.register_instance(owned(1, A), 101.0)
    saved = state.save()
    again, _ = make_state()
    again.restore(saved, 500.0)
    assert (ids(again), again.next_deadline()) == ([1], 505.0)


def test_restore_drops_an_instance_whose_lease_is_not_saved() -> None:
    state, _ = make_state()
    state.register_instance(owned(1, None), 101.0)
    saved = dataclasses.replace(state.save(), instances=(owned(2, A), owned(1, None)))
    again, _ = make_state()
    again.restore(saved, 500.0)
    assert ids(again) == [1]


def test_lease_gone_is_a_transition_with_why_and_how_many() -> None:
    state, seen = make_state()
    state.grant_lease(A, 5.0, 101.0)
    state.register_instance(owned(1, A), 101.0)
    state.register_instance(owned(1, A, "clear_kv_blocks"), 101.0)
    state.check_deadlines(106.0)
    gone = [t for t in seen if t.subject is Subject.LEASE and t.new == "gone"]
    assert [t.describe() for t in gone] == [
        f"lease {A}: renewed -> gone after 5.0s (not renewed for 5s; 2 removed)"
    ]


def test_lease_revoke_of_an_unknown_lease_raises() -> None:
    state, _ = make_state()
    with pytest.raises(UnknownLease):
        state.revoke_lease(A, 101.0)


def test_lease_default_ttl_is_dynamos_ten_seconds() -> None:
    state, _ = make_state()
    state.open_session(101.0, lease_id=A)
    assert state.leases[A].ttl == LEASE_TTL == 10.0


def test_mirror_frontend_replaces_only_the_instances_without_a_lease() -> None:
    state, _ = make_state()
    state.grant_lease(A, 50.0, 101.0)
    state.register_instance(owned(1, A), 101.0)
    state.register_instance(owned(2, None), 101.0)
    state.mirror_frontend([owned(3, None)], 102.0)
    assert ids(state) == [1, 3]


def test_mirror_lost_drops_the_mirrored_instances() -> None:
    state, _ = make_state()
    state.mirror_frontend([owned(3, None)], 102.0)
    state.mirror_lost("the status server cannot be reached", 103.0)
    assert ids(state) == []


def test_instance_extra_fields_are_kept_in_the_record_in_their_order() -> None:
    extra = {"request_plane_codec": "msgpack", "device_type": "cuda"}
    record = dataclasses.replace(owned(1, None), extra=extra).record
    assert b'"extra":{"request_plane_codec":"msgpack","device_type":"cuda"}' in record
