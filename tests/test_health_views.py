"""The read-only views of the health state (sidecar/core/views.py): what a reader outside the
core sees, frozen, so that no adapter can change health behind the state machine's back."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.core.health import HealthState
from sidecar.core.records import EndCause, Instance, Status
from sidecar.core.views import EndpointView, LeaseView

READY, NOTREADY = Status.READY, Status.NOTREADY
LEASE_A, LEASE_B = "00000000000000aa", "00000000000000bb"


def owned(instance_id: int, lease: str | None) -> Instance:
    return Instance("dynamo", "backend", "generate", instance_id, {"tcp": "x"}, True, lease=lease)


def test_views_snapshot_shows_each_endpoint_with_its_status_since_and_transitions() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=100.0)
    state.set_endpoint("generate", READY, 105.0)
    snapshot = state.snapshot()
    assert snapshot.endpoints == {"generate": EndpointView(READY, 105.0, 1)}
    assert (snapshot.status, snapshot.alive, snapshot.draining) == (READY, True, False)


def test_views_snapshot_does_not_follow_later_changes() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=100.0)
    snapshot = state.snapshot()
    state.set_endpoint("generate", READY, 105.0)
    assert snapshot.endpoints["generate"].status is NOTREADY
    assert snapshot.status is NOTREADY


def test_views_snapshot_cannot_be_changed_by_its_reader() -> None:
    state = HealthState(required=("generate",), starting=NOTREADY, started_at=100.0)
    snapshot = state.snapshot()
    with pytest.raises(TypeError):
        snapshot.endpoints["generate"] = EndpointView(READY, 0.0, 0)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.life.number = 7  # type: ignore[misc]
    assert state.endpoints["generate"].status is NOTREADY


def test_views_current_life_says_why_it_ended() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=100.0)
    state.end_life("no heartbeat for 5s", EndCause.HEARTBEAT_MISSED, 110.0)
    life = state.current_life()
    assert (life.number, life.ended_at, life.end_cause) == (1, 110.0, EndCause.HEARTBEAT_MISSED)
    assert state.snapshot().live == (False, "worker life 1 ended: no heartbeat for 5s")


def test_views_lease_views_list_each_lease_with_the_instances_it_owns() -> None:
    state = HealthState(required=(), starting=NOTREADY, started_at=100.0, frontend=True)
    state.grant_lease(LEASE_B, 10.0, 100.0)
    state.grant_lease(LEASE_A, 5.0, 100.0)
    for instance_id, lease in ((3, LEASE_B), (1, LEASE_B), (2, None)):
        state.register_instance(owned(instance_id, lease), 101.0)
    assert state.lease_views() == [
        LeaseView(LEASE_A, "renewed", 5.0, 105.0, ()),
        LeaseView(LEASE_B, "renewed", 10.0, 110.0, (1, 3)),
    ]
    assert (state.instance_count, state.holds_lease(LEASE_A), state.holds_lease("0" * 16)) == (
        3,
        True,
        False,
    )
