"""Pin what the real Dynamo 1.6.1 frontend answers on its HTTP port, run on loopback.

These tests hold the record in `tests/dynamo_frontend_observed.md` against the real processes: if a
Dynamo release answers otherwise, they fail here first, before the sidecar's frontend mode is
compared with a record that is no longer true. Where Dynamo cannot be installed (no PyPI), each
test skips with pip's own error line.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dynamo_real import (
    DYNAMO_WHEELS,
    DynamoUnavailable,
    Exchange,
    RealFrontend,
    dynamo_python,
    exchange,
    install,
    real_frontend,
    real_worker,
    why_unavailable,
)

EMPTY_HEALTH = b'{"status":"healthy","endpoints":[],"instances":[]}'
LIVE = b'{"status":"live","message":"Service is live"}'
ENDPOINTS = ("generate", "clear_kv_blocks")
# The file discovery backend's TTL is 10 s, swept every 10/3 s: observed 10.6 to 13.1 s.
KILLED_LEAVES_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def python() -> Path:
    found = dynamo_python()
    if found is None:
        pytest.skip(why_unavailable())
    return found


@pytest.fixture
def discovery(tmp_path: Path) -> Path:
    """A discovery directory of the test's own, so no other test's instances appear in it."""
    return tmp_path / "kv"


@pytest.fixture
def frontend(python: Path, discovery: Path) -> Iterator[RealFrontend]:
    with real_frontend(python, discovery) as started:
        yield started


def health(frontend: RealFrontend) -> dict[str, Any]:
    answer = exchange(frontend.port, "GET", "/health")
    assert answer.status == 200, answer
    document: dict[str, Any] = json.loads(answer.body)
    return document


def instance_ids(document: dict[str, Any]) -> dict[int, set[str]]:
    """Which endpoints each instance id serves, as `/health` lists them."""
    served: dict[int, set[str]] = {}
    for instance in document["instances"]:
        served.setdefault(instance["instance_id"], set()).add(instance["endpoint"])
    return served


def listed_instance(instance_id: int, endpoint: str) -> str:
    """An instance of `ns.backend.<endpoint>` as `/health` lists it, PORT for its TCP port; the
    id in the transport is hex without padding, as Dynamo writes it."""
    return (
        f'{{"component":"backend","endpoint":"{endpoint}","namespace":"ns",'
        f'"instance_id":{instance_id},'
        f'"transport":{{"tcp":"127.0.0.1:PORT/{instance_id:x}/ns/backend/{endpoint}"}},'
        '"device_type":"cuda","request_plane_codec":"msgpack"}'
    )


def sort_name(instance: dict[str, Any]) -> str:
    """Dynamo's `Display` of an instance, by which `/health` orders its instances."""
    return "/".join(
        str(instance[key]) for key in ("namespace", "component", "endpoint", "instance_id")
    )


def without_date(answer: Exchange) -> list[tuple[str, str]]:
    return [(name, value) for name, value in answer.headers if name != "date"]


def test_unreachable_index_gives_pips_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The skip reason is pip's own last ERROR line, not a traceback or a generic message."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(DynamoUnavailable) as failed:
        install(tmp_path / "venv")
    assert str(failed.value) == f"ERROR: No matching distribution found for {DYNAMO_WHEELS[0]}"
    assert not (tmp_path / "venv" / "INSTALLED").exists()


def test_health_before_any_worker(frontend: RealFrontend) -> None:
    answer = exchange(frontend.port, "GET", "/health")
    assert (answer.status, answer.body) == (200, EMPTY_HEALTH)
    assert without_date(answer) == [
        ("content-type", "application/json"),
        ("content-length", "50"),
    ]
    head = exchange(frontend.port, "HEAD", "/health")
    assert (head.status, head.body, without_date(head)) == (200, b"", without_date(answer))


def test_live(frontend: RealFrontend) -> None:
    answer = exchange(frontend.port, "GET", "/live")
    assert (answer.status, answer.body, answer.header("content-type")) == (
        200,
        LIVE,
        "application/json",
    )


@pytest.mark.parametrize("path", ["/nope", "/health/", "/live/", "/HEALTH"])
def test_unknown_path_is_a_json_404(frontend: RealFrontend, path: str) -> None:
    answer = exchange(frontend.port, "GET", path)
    body = f'{{"message":"Route not found: GET {path}","type":"Not Found","code":404}}'.encode()
    assert (answer.status, answer.body) == (404, body)
    assert without_date(answer) == [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
    ]


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/health"), ("PUT", "/health"), ("POST", "/live")]
)
def test_other_methods_are_an_empty_405(frontend: RealFrontend, method: str, path: str) -> None:
    answer = exchange(frontend.port, method, path)
    assert (answer.status, answer.body) == (405, b"")
    assert without_date(answer) == [("allow", "GET,HEAD"), ("content-length", "0")]


def test_health_lists_a_worker_without_a_model(
    python: Path, discovery: Path, frontend: RealFrontend
) -> None:
    """Every served endpoint is listed, model or not, in this exact shape and key order."""
    with real_worker(python, discovery, "ns", "backend", ENDPOINTS) as worker:
        answer = exchange(frontend.port, "GET", "/health")
    instances = ",".join(listed_instance(worker.instance_id, name) for name in sorted(ENDPOINTS))
    expected = (
        '{"status":"healthy",'
        '"endpoints":["dyn://ns.backend.clear_kv_blocks","dyn://ns.backend.generate"],'
        f'"instances":[{instances}]}}'
    )
    pattern = re.escape(expected).replace("PORT", r"\d+")
    assert answer.status == 200
    assert re.fullmatch(pattern.encode(), answer.body), answer.body


def test_sigkilled_worker_leaves_and_the_survivor_stays(
    python: Path, discovery: Path, frontend: RealFrontend
) -> None:
    with (
        real_worker(python, discovery, "ns", "backend", ENDPOINTS) as survivor,
        real_worker(python, discovery, "ns", "backend", ENDPOINTS) as killed,
    ):
        listed = health(frontend)
        assert set(instance_ids(listed)) == {survivor.instance_id, killed.instance_id}
        # Sorted as the strings "ns/component/endpoint/<decimal id>", not by number.
        names = [sort_name(instance) for instance in listed["instances"]]
        assert names == sorted(names)
        killed.kill()
        deadline = time.monotonic() + KILLED_LEAVES_WITHIN_S
        while killed.instance_id in (served := instance_ids(health(frontend))):
            assert served[survivor.instance_id] == set(ENDPOINTS)
            assert time.monotonic() < deadline, f"still listed: {served}"
            time.sleep(0.2)
        assert served == {survivor.instance_id: set(ENDPOINTS)}


def test_sigterm_takes_a_worker_out_at_once(
    python: Path, discovery: Path, frontend: RealFrontend
) -> None:
    """Dynamo's graceful path unregisters first, then waits out its grace period and exits 0."""
    grace = {"DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "1"}
    with real_worker(python, discovery, "ns", "backend", ENDPOINTS, env=grace) as worker:
        worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while instance_ids(health(frontend)):
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.05)
        assert worker.terminate() == 0
    assert exchange(frontend.port, "GET", "/health").body == EMPTY_HEALTH


def test_frontend_sigterm_without_requests_closes_at_once(frontend: RealFrontend) -> None:
    """With nothing in flight there is no draining window to probe: the port closes at once."""
    began = time.monotonic()
    assert frontend.terminate() == 0
    assert time.monotonic() - began < 2.0
    with pytest.raises(ConnectionRefusedError):
        exchange(frontend.port, "GET", "/health")
