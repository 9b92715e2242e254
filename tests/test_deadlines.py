"""The deadlines: one step at a time with a fake clock, then a real hung worker."""

from __future__ import annotations

import time
from collections.abc import Callable

from conftest import Sidecar, wait_until

from sidecar.core.health import HealthState
from sidecar.core.records import Status
from sidecar.inputs.deadlines import DeadlineWatch


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def watched(timeout: float = 5.0) -> tuple[HealthState, DeadlineWatch, Clock]:
    clock = Clock(100.0)
    state = HealthState(
        required=("generate",),
        starting=Status.NOTREADY,
        started_at=100.0,
        heartbeat_timeout=timeout,
    )
    return state, DeadlineWatch(state, clock), clock


def test_deadline_step_waits_for_a_change_until_the_first_heartbeat() -> None:
    _, watch, _ = watched()
    assert watch.step() is None


def test_heartbeat_step_sleeps_until_the_deadline() -> None:
    state, watch, clock = watched()
    state.heartbeat(101.0)
    clock.now = 102.0
    assert watch.step() == 4.0
    assert state.alive


def test_heartbeat_step_at_the_deadline_ends_the_life() -> None:
    state, watch, clock = watched()
    state.heartbeat(101.0)
    state.set_endpoint("generate", Status.READY, 101.0)
    clock.now = 106.0
    watch.step()
    assert state.live() == (False, "worker life 1 ended: no heartbeat for 5s")
    assert state.endpoints["generate"].status is Status.NOTREADY


def test_heartbeat_after_a_silent_death_begins_a_new_life() -> None:
    state, watch, clock = watched()
    state.heartbeat(101.0)
    clock.now = 107.0
    watch.step()
    state.heartbeat(108.0)
    assert (state.life.number, state.alive) == (2, True)


def test_heartbeat_hung_worker_fails_the_live_path_within_its_timeout(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    sidecar = run_sidecar(
        {
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            "DYN_SIDECAR_HEARTBEAT_TIMEOUT": "0.5",
            "DYN_SIDECAR_DRAIN_SECONDS": "0",
        }
    )
    sidecar.control("POST", "/v1/heartbeat", json={"pid": 4242})
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    silent_since = time.monotonic()
    assert sidecar.probe("/live").status_code == 200
    assert wait_until(lambda: sidecar.probe("/live").status_code == 503, timeout=3.0)
    # The bound: the timeout itself, plus a margin for a noisy machine.
    assert time.monotonic() - silent_since < 0.5 + 1.0
    body = sidecar.probe("/live").json()
    assert body["reason"] == "worker life 1 ended: no heartbeat for 0.5s"
    assert body["endpoints"] == {"generate": "notready"}
    assert "worker life 1: alive -> ended" in sidecar.logs()


def test_heartbeat_steady_worker_stays_live(run_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = run_sidecar(
        {"DYN_SIDECAR_HEARTBEAT_TIMEOUT": "0.6", "DYN_SYSTEM_STARTING_HEALTH_STATUS": "ready"}
    )
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        sidecar.control("POST", "/v1/heartbeat")
        assert sidecar.probe("/live").status_code == 200
        time.sleep(0.1)
