"""Frontend mirror mode in a real sidecar process: `DYN_SIDECAR_MODE=frontend` with
`DYN_SIDECAR_UPSTREAM_STATUS_URL` polls a Dynamo frontend's own `/health`.

The frontend is a real HTTP server on loopback serving the bytes the real Dynamo 1.6.1 frontend
sends (tests/upstreams.py `FrontendServer`, tests/dynamo_frontend_observed.md), and, where
Dynamo 1.6.1 can be installed, the real `python -m dynamo.frontend` with a real worker
(tests/dynamo_real.py). The sidecar is started by the fixtures of tests/conftest.py.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sidecar, wait_until
from upstreams import (
    FRONTEND_TWO,
    FRONTEND_TWO_ID,
    FrontendServer,
    frontend_server,
    frontend_worker,
)

INTERVAL = 0.1
MISSES = 3
# What a loaded machine may add to a bound: the poll, the probe, a process switch.
MARGIN = 0.5
ENDPOINTS = ("generate", "clear_kv_blocks")
ENDED = f"worker life 1 ended: its status server did not answer {MISSES} times"


def alive(sidecar: Sidecar) -> bool:
    """Whether the frontend's life runs, as the kubelet's liveness probe sees it."""
    return sidecar.probe("/live").status_code == 200


@pytest.fixture
def frontend() -> Iterator[FrontendServer]:
    with frontend_server() as server:
        yield server


def mirror_env(url: str, **more: str) -> dict[str, str]:
    return {
        "DYN_SIDECAR_MODE": "frontend",
        "DYN_SIDECAR_UPSTREAM_STATUS_URL": url,
        "DYN_SIDECAR_UPSTREAM_INTERVAL": str(INTERVAL),
        "DYN_SIDECAR_UPSTREAM_MISSES": str(MISSES),
        "DYN_SIDECAR_DRAIN_SECONDS": "0",
        **more,
    }


def health(sidecar: Sidecar) -> dict[str, Any]:
    document: dict[str, Any] = sidecar.probe("/health").json()
    return document


def listed(sidecar: Sidecar) -> dict[int, set[str]]:
    """Which endpoints each instance id serves, as the sidecar's health path lists them."""
    served: dict[int, set[str]] = {}
    for instance in health(sidecar)["instances"]:
        served.setdefault(instance["instance_id"], set()).add(instance["endpoint"])
    return served


def by_key(instances: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    keys = ("namespace", "component", "endpoint", "instance_id")
    return {tuple(instance[key] for key in keys): instance for instance in instances}


def polled(sidecar: Sidecar) -> int:
    upstream = sidecar.control("GET", "/v1/worker").json()["upstream"]
    return int(upstream["polls"])


def test_frontend_mirror_lists_the_frontends_instances_with_their_other_fields(
    run_sidecar: Callable[..., Sidecar], frontend: FrontendServer
) -> None:
    frontend.add(frontend_worker("ns1", "backend", FRONTEND_TWO_ID, ENDPOINTS))
    assert frontend.body() == FRONTEND_TWO
    sidecar = run_sidecar(mirror_env(frontend.url + "/health"))
    assert wait_until(lambda: listed(sidecar) == {FRONTEND_TWO_ID: set(ENDPOINTS)}, timeout=3.0)
    answer = sidecar.probe("/health")
    document = answer.json()
    assert answer.status_code == 200
    assert document["status"] == "healthy"
    # Every field the frontend gave, device_type and request_plane_codec included, with every
    # digit of the id.
    assert by_key(document["instances"]) == by_key(json.loads(FRONTEND_TWO)["instances"])
    assert str(FRONTEND_TWO_ID).encode() in answer.content
    assert "dyn://ns1.backend.generate" in document["endpoints"]
    assert sidecar.probe("/live").status_code == 200
    assert "dynamo_sidecar_upstream_polls_total" in sidecar.probe("/metrics").text


def test_frontend_mirror_drops_an_instance_that_leaves_within_one_interval(
    run_sidecar: Callable[..., Sidecar], frontend: FrontendServer
) -> None:
    frontend.add(frontend_worker("ns", "backend", 1, ENDPOINTS))
    frontend.add(frontend_worker("ns", "backend", 2, ENDPOINTS))
    sidecar = run_sidecar(mirror_env(frontend.url + "/health"))
    assert wait_until(lambda: set(listed(sidecar)) == {1, 2}, timeout=3.0)
    left = time.monotonic()
    frontend.remove(1)
    assert wait_until(lambda: listed(sidecar) == {2: set(ENDPOINTS)}, interval=0.01)
    assert time.monotonic() - left < INTERVAL + MARGIN
    frontend.add(frontend_worker("ns", "backend", 3, ("generate",)))
    assert wait_until(lambda: listed(sidecar) == {2: set(ENDPOINTS), 3: {"generate"}})


def test_frontend_mirror_of_a_frontend_that_goes_down_ends_the_life_after_its_misses(
    run_sidecar: Callable[..., Sidecar], frontend: FrontendServer
) -> None:
    frontend.add(frontend_worker("ns", "backend", 1, ENDPOINTS))
    sidecar = run_sidecar(mirror_env(frontend.url + "/health"))
    assert wait_until(lambda: set(listed(sidecar)) == {1}, timeout=3.0)
    down = time.monotonic()
    frontend.set("down")
    # The first miss drops the copied instances at once.
    assert wait_until(lambda: listed(sidecar) == {}, interval=0.01)
    assert time.monotonic() - down < INTERVAL + MARGIN
    assert wait_until(lambda: not alive(sidecar), timeout=3.0)
    # Three polls 0.1 s apart, each refused at once.
    assert time.monotonic() - down < MISSES * INTERVAL + 2 * MARGIN
    worker = sidecar.control("GET", "/v1/worker").json()
    assert worker["end_reason"] == ENDED.split(": ", 1)[1]
    assert sidecar.probe("/live").json() == {"message": ENDED, "status": "not_live"}
    assert "cannot be reached (miss 1; 3 in a row end the worker's life)" in sidecar.logs()
    frontend.set("serving")
    assert wait_until(lambda: alive(sidecar), timeout=3.0)
    assert sidecar.control("GET", "/v1/worker").json()["life"] == 2
    assert wait_until(lambda: set(listed(sidecar)) == {1})


def test_frontend_mirror_takes_a_draining_frontend_as_an_answer(
    run_sidecar: Callable[..., Sidecar], frontend: FrontendServer
) -> None:
    """1.6.1's 503 `not_ready` while it drains: no miss, no instance, the life goes on; the
    sidecar's own readiness is its own drain's."""
    frontend.add(frontend_worker("ns", "backend", 1, ENDPOINTS))
    sidecar = run_sidecar(mirror_env(frontend.url + "/health"))
    assert wait_until(lambda: set(listed(sidecar)) == {1}, timeout=3.0)
    frontend.set("draining")
    assert wait_until(lambda: listed(sidecar) == {}, timeout=2.0)
    before = polled(sidecar)
    assert wait_until(lambda: polled(sidecar) >= before + 2 * MISSES, timeout=3.0)
    upstream = sidecar.control("GET", "/v1/worker").json()["upstream"]
    assert (upstream["misses"], upstream["last_reason"]) == (0, None)
    assert sidecar.probe("/live").status_code == 200
    assert sidecar.probe("/health").status_code == 200


def test_frontend_mirror_drain_answers_shutting_down_with_the_mirrored_instances(
    run_sidecar: Callable[..., Sidecar], frontend: FrontendServer
) -> None:
    frontend.add(frontend_worker("ns", "backend", 1, ENDPOINTS))
    sidecar = run_sidecar(mirror_env(frontend.url + "/health", DYN_SIDECAR_DRAIN_SECONDS="1.5"))
    assert wait_until(lambda: set(listed(sidecar)) == {1}, timeout=3.0)
    began = time.monotonic()
    sidecar.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: sidecar.probe("/health").status_code == 503, timeout=1.0)
    document = health(sidecar)
    assert document["status"] == "shutting_down"
    assert {i["instance_id"] for i in document["instances"]} == {1}
    assert sidecar.probe("/live").status_code == 200
    assert sidecar.process.wait(timeout=10.0) == 0
    assert time.monotonic() - began < 1.5 + 2.0
    assert frontend.count > 0


# -- the real Dynamo 1.6.1 frontend ----------------------------------------------------------


def test_frontend_mirror_follows_the_real_dynamo_frontend(
    run_sidecar: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """`python -m dynamo.frontend` with a worker serving two endpoints: the sidecar lists what
    the frontend lists, loses the worker when it leaves on SIGTERM, and ends the life when the
    frontend itself stops."""
    from dynamo_real import (
        dynamo_python,
        exchange,
        real_frontend,
        real_worker,
        why_unavailable,
    )

    python = dynamo_python()
    if python is None:
        pytest.skip(why_unavailable())
    discovery = tmp_path / "kv"
    grace = {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "1"}
    with real_frontend(python, discovery) as dynamo:
        sidecar = run_sidecar(mirror_env(dynamo.url + "/health"))
        assert wait_until(lambda: polled(sidecar) > 0, timeout=3.0)
        assert health(sidecar)["instances"] == []
        with real_worker(python, discovery, "ns", "backend", ENDPOINTS, env=grace) as worker:
            assert wait_until(lambda: listed(sidecar) == {worker.instance_id: set(ENDPOINTS)})
            real = json.loads(exchange(dynamo.port, "GET", "/health").body)
            assert by_key(health(sidecar)["instances"]) == by_key(real["instances"])
            worker.process.send_signal(signal.SIGTERM)
            assert wait_until(lambda: listed(sidecar) == {}, timeout=3.0)
            assert worker.terminate() == 0
        assert sidecar.probe("/live").status_code == 200
        stopped = time.monotonic()
        assert dynamo.terminate() == 0
        assert wait_until(lambda: not alive(sidecar), timeout=3.0)
        assert time.monotonic() - stopped < MISSES * INTERVAL + 2 * MARGIN
        assert sidecar.control("GET", "/v1/worker").json()["end_reason"] == ENDED.split(": ", 1)[1]
