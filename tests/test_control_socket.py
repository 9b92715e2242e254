"""The worker's Unix socket (docs/protocol.md section 4), against the real process and sockets.

Every route is exercised with its answer body, and every refusal with its exact JSON error
body; after each refusal the state seen on `GET /v1/status` (and the live path) is compared
with the state before it: a request that fails changes nothing.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Sidecar, start_sidecar, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.outputs.statefile import read

JSON_TYPE = "application/json"
MAX_BODY = 64 * 1024
MAX_U64 = 2**64 - 1
NAME_RULE = "names are 1 to 128 characters of A-Z a-z 0-9 _ . -"
INSTANCE_ALLOWED = "namespace, component, endpoint, instance_id, transport, model"
INSTANCE_REQUIRED = "namespace, component, endpoint, instance_id, transport"
ID_RULE = f"expected an integer from 0 to {MAX_U64}"
PID_RULE = "expected an integer from 1 to 2147483647"
STATUS_RULE = 'expected "ready" or "notready"'

INSTANCE: dict[str, Any] = {
    "namespace": "dynamo",
    "component": "backend",
    "endpoint": "generate",
    "instance_id": 7,
    "transport": {"nats_tcp": "dynamo_backend.generate-7"},
}

RunSidecar = Callable[..., Sidecar]


def control(sc: Sidecar, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """`Sidecar.control` without loading CA certificates twice per request (there is no TLS).

    One request on a new connection to the real Unix socket; the table tests make hundreds.
    """
    transport = httpx.HTTPTransport(uds=str(sc.socket_path), verify=False)
    with httpx.Client(
        transport=transport, base_url="http://sidecar", timeout=5.0, verify=False
    ) as client:
        return client.request(method, path, **kwargs)


def probe(sc: Sidecar, path: str, method: str = "GET", **kwargs: Any) -> httpx.Response:
    """`Sidecar.probe`, likewise: one request on a new TCP connection, as the kubelet sends it."""
    with httpx.Client(base_url=sc.url, timeout=5.0, verify=False) as client:
        headers = {"User-Agent": "kube-probe/1.31"}
        return client.request(method, path, headers=headers, **kwargs)


def instance(**changes: Any) -> dict[str, Any]:
    """The seed's instance with some fields changed (a value of `...` removes the field)."""
    body = {**INSTANCE, **changes}
    return {key: value for key, value in body.items() if value is not ...}


def without_uptime(content: bytes) -> dict[str, Any]:
    body = json.loads(content)
    assert isinstance(body, dict)
    body.pop("uptime", None)
    return body


def snapshot(sc: Sidecar) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """What a failed request must not change: the status body and the live path's answer."""
    status = control(sc, "GET", "/v1/status")
    assert status.status_code == 200
    live = probe(sc, "/live")
    return without_uptime(status.content), live.status_code, without_uptime(live.content)


def assert_error(response: httpx.Response, code: int, message: str) -> None:
    assert (response.status_code, response.json()) == (code, {"error": message})
    assert response.headers["content-type"] == JSON_TYPE


def assert_refused(
    sc: Sidecar, method: str, path: str, code: int, message: str, **kwargs: Any
) -> httpx.Response:
    before = snapshot(sc)
    response = control(sc, method, path, **kwargs)
    assert_error(response, code, message)
    assert snapshot(sc) == before
    return response


def start(run_sidecar: RunSidecar, mode: str) -> Sidecar:
    """A sidecar with some state a wrongly accepted request would visibly change.

    worker: `generate` required and not ready, `aux` announced and ready.
    frontend: the seed's instance registered.
    """
    if mode == "worker":
        sc = run_sidecar(
            {
                "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": '["generate"]',
                "DYN_SIDECAR_DRAIN_SECONDS": "0",
            }
        )
        assert control(sc, "POST", "/v1/endpoints/aux/ready").status_code == 200
    else:
        sc = run_sidecar({"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_DRAIN_SECONDS": "0"})
        assert control(sc, "POST", "/v1/instances", json=INSTANCE).status_code == 201
    return sc


@pytest.fixture
def worker(run_sidecar: RunSidecar) -> Sidecar:
    return start(run_sidecar, "worker")


@pytest.fixture
def frontend(run_sidecar: RunSidecar) -> Sidecar:
    return start(run_sidecar, "frontend")


BASELINE: dict[str, dict[str, Any]] = {
    "worker": {"endpoints": {"aux": "ready", "generate": "notready"}, "status": "notready"},
    "frontend": {
        "endpoints": ["dyn://dynamo.backend.generate"],
        "instances": [INSTANCE],
        "status": "healthy",
    },
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sidecar]]:
    """Sidecars shared by the refusal tests, which by contract change nothing."""
    started: dict[str, Sidecar] = {}
    yield started
    for sc in started.values():
        sc.process.kill()
        sc.process.wait(timeout=10)


def pooled(
    pool: dict[str, Sidecar], tmp_path_factory: pytest.TempPathFactory, mode: str
) -> Sidecar:
    """The shared sidecar of this mode, replaced by a new one unless it is exactly as set up.

    A refusal that wrongly changed the state fails its own test; the replacement keeps that
    failure from leaking into the next test.
    """
    sc = pool.get(mode)
    if sc is not None and sc.process.poll() is None:
        if without_uptime(control(sc, "GET", "/v1/status").content) == BASELINE[mode]:
            return sc
        sc.process.kill()
        sc.process.wait(timeout=10)
    tmp_path = tmp_path_factory.mktemp(f"pool-{mode}")
    sc = start(lambda env: start_sidecar(tmp_path, env), mode)
    assert without_uptime(control(sc, "GET", "/v1/status").content) == BASELINE[mode]
    pool[mode] = sc
    return sc


@pytest.fixture
def shared_worker(pool: dict[str, Sidecar], tmp_path_factory: pytest.TempPathFactory) -> Sidecar:
    return pooled(pool, tmp_path_factory, "worker")


@pytest.fixture
def shared_frontend(pool: dict[str, Sidecar], tmp_path_factory: pytest.TempPathFactory) -> Sidecar:
    return pooled(pool, tmp_path_factory, "frontend")


@pytest.fixture
def shared(
    pool: dict[str, Sidecar], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Sidecar]:
    return lambda mode: pooled(pool, tmp_path_factory, mode)


@pytest.fixture
def empty_frontend(run_sidecar: RunSidecar) -> Sidecar:
    return run_sidecar({"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_DRAIN_SECONDS": "0"})


def frontend_health(sc: Sidecar) -> dict[str, Any]:
    response = probe(sc, "/health")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, dict)
    return body


def chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    """A body httpx sends chunked, with no Content-Length."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def padded(body: bytes, length: int) -> bytes:
    """Valid JSON of exactly `length` bytes: trailing whitespace is allowed by JSON."""
    assert len(body) <= length
    return body + b" " * (length - len(body))


# -- PUT /v1/endpoints/{name} and POST .../ready, .../notready -----------------------------


@pytest.mark.parametrize(
    ("status", "overall"), [("ready", "ready"), ("notready", "notready")], ids=str
)
def test_put_endpoint_answers_new_state(sidecar: Sidecar, status: str, overall: str) -> None:
    response = control(sidecar, "PUT", "/v1/endpoints/generate", json={"status": status})
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json() == {
        "endpoint": "generate",
        "life": 1,
        "overall": overall,
        "status": status,
    }
    assert control(sidecar, "GET", "/v1/status").json()["endpoints"] == {"generate": status}


@pytest.mark.parametrize("status", ["ready", "notready"])
def test_post_endpoint_shortcut_answers_new_state(sidecar: Sidecar, status: str) -> None:
    response = control(sidecar, "POST", f"/v1/endpoints/generate/{status}")
    assert response.status_code == 200
    assert response.json() == {
        "endpoint": "generate",
        "life": 1,
        "overall": status,
        "status": status,
    }
    assert control(sidecar, "GET", "/v1/status").json()["endpoints"] == {"generate": status}


def test_put_endpoint_not_required_never_holds_readiness(sidecar: Sidecar) -> None:
    control(sidecar, "PUT", "/v1/endpoints/clear_kv_blocks", json={"status": "notready"})
    response = control(sidecar, "PUT", "/v1/endpoints/generate", json={"status": "ready"})
    assert response.json()["overall"] == "ready"
    assert probe(sidecar, "/health").json()["endpoints"] == {
        "clear_kv_blocks": "notready",
        "generate": "ready",
    }


def test_put_endpoint_not_required_answers_overall_of_required(sidecar: Sidecar) -> None:
    response = control(sidecar, "PUT", "/v1/endpoints/aux", json={"status": "ready"})
    assert response.json() == {
        "endpoint": "aux",
        "life": 1,
        "overall": "notready",
        "status": "ready",
    }


def test_post_endpoint_notready_withdraws_without_failing_live(sidecar: Sidecar) -> None:
    control(sidecar, "POST", "/v1/endpoints/generate/ready")
    control(sidecar, "POST", "/v1/endpoints/generate/notready")
    health = probe(sidecar, "/health")
    assert (health.status_code, health.json()["endpoints"]) == (503, {"generate": "notready"})
    live = probe(sidecar, "/live")
    assert (live.status_code, live.json()["live"]) == (200, True)


@pytest.mark.parametrize("name", ["a" * 128, "x", "Model.v2-b_9", "..."])
def test_put_endpoint_accepts_every_valid_name(sidecar: Sidecar, name: str) -> None:
    response = control(sidecar, "PUT", f"/v1/endpoints/{name}", json={"status": "ready"})
    assert response.status_code == 200
    assert response.json()["endpoint"] == name
    assert control(sidecar, "GET", "/v1/status").json()["endpoints"][name] == "ready"


def test_put_endpoint_repeated_status_is_idempotent(sidecar: Sidecar) -> None:
    first = control(sidecar, "PUT", "/v1/endpoints/generate", json={"status": "ready"})
    second = control(sidecar, "PUT", "/v1/endpoints/generate", json={"status": "ready"})
    assert first.json() == second.json()
    assert sidecar.logs().count("generate: notready -> ready") == 1


# -- POST /v1/instances and DELETE /v1/instances/{id} -----------------------------------------


def test_post_instance_new_answers_201(empty_frontend: Sidecar) -> None:
    response = control(empty_frontend, "POST", "/v1/instances", json=INSTANCE)
    assert response.status_code == 201
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json() == {
        "instance_id": 7,
        "instances": 1,
        "url": "dyn://dynamo.backend.generate",
    }


def test_post_instance_appears_on_frontend_health(empty_frontend: Sidecar) -> None:
    control(empty_frontend, "POST", "/v1/instances", json=INSTANCE)
    assert frontend_health(empty_frontend) == {
        "endpoints": ["dyn://dynamo.backend.generate"],
        "instances": [INSTANCE],
        "status": "healthy",
    }


def test_post_instance_same_key_replaces_with_200(frontend: Sidecar) -> None:
    replacement = instance(transport={"nats_tcp": "moved"})
    response = control(frontend, "POST", "/v1/instances", json=replacement)
    assert response.status_code == 200
    assert response.json() == {
        "instance_id": 7,
        "instances": 1,
        "url": "dyn://dynamo.backend.generate",
    }
    assert frontend_health(frontend)["instances"] == [replacement]


def test_post_instance_same_id_other_endpoint_is_new(frontend: Sidecar) -> None:
    response = control(frontend, "POST", "/v1/instances", json=instance(endpoint="clear_kv_blocks"))
    assert response.status_code == 201
    assert response.json() == {
        "instance_id": 7,
        "instances": 2,
        "url": "dyn://dynamo.backend.clear_kv_blocks",
    }


def test_delete_instance_removes_every_instance_with_the_id(frontend: Sidecar) -> None:
    control(frontend, "POST", "/v1/instances", json=instance(endpoint="clear_kv_blocks"))
    other = instance(instance_id=8)
    control(frontend, "POST", "/v1/instances", json=other)
    response = control(frontend, "DELETE", "/v1/instances/7")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json() == {"instance_id": 7, "removed": 2}
    assert frontend_health(frontend)["instances"] == [other]


def test_delete_instance_last_one_makes_frontend_unhealthy(frontend: Sidecar) -> None:
    assert control(frontend, "DELETE", "/v1/instances/7").status_code == 200
    assert frontend_health(frontend) == {
        "instances": [],
        "message": "No endpoints available",
        "status": "unhealthy",
    }


def test_delete_instance_twice_is_404(frontend: Sidecar) -> None:
    assert control(frontend, "DELETE", "/v1/instances/7").status_code == 200
    assert_refused(frontend, "DELETE", "/v1/instances/7", 404, "no instance has instance_id 7")


@pytest.mark.parametrize(
    ("endpoint", "model", "listed"),
    [
        ("generate", ..., True),
        ("generate", False, False),
        ("generate", True, True),
        ("clear_kv_blocks", ..., False),
        ("clear_kv_blocks", True, True),
        ("clear_kv_blocks", False, False),
    ],
)
def test_instance_model_flag_decides_endpoints_list(
    empty_frontend: Sidecar, endpoint: str, model: Any, listed: bool
) -> None:
    body = instance(endpoint=endpoint, model=model)
    assert control(empty_frontend, "POST", "/v1/instances", json=body).status_code == 201
    health = frontend_health(empty_frontend)
    url = f"dyn://dynamo.backend.{endpoint}"
    assert health["endpoints"] == ([url] if listed else [])
    assert health["instances"] == [instance(endpoint=endpoint)]


def test_instance_model_flag_seed_lists_only_generate(empty_frontend: Sidecar) -> None:
    for endpoint in ("generate", "clear_kv_blocks"):
        control(empty_frontend, "POST", "/v1/instances", json=instance(endpoint=endpoint))
    health = frontend_health(empty_frontend)
    assert health["endpoints"] == ["dyn://dynamo.backend.generate"]
    assert len(health["instances"]) == 2


EXTREME_IDS = [0, 1, 2**53 + 1, 2**63, MAX_U64]


@pytest.mark.parametrize("instance_id", EXTREME_IDS, ids=str)
def test_instance_id_round_trips_exactly(empty_frontend: Sidecar, instance_id: int) -> None:
    # Raw bytes on both sides: a float anywhere on the way would change the digits.
    raw = json.dumps(instance(instance_id=instance_id)).encode()
    assert str(instance_id).encode() in raw
    response = control(
        empty_frontend, "POST", "/v1/instances", content=raw, headers={"content-type": JSON_TYPE}
    )
    digits = f'"instance_id":{instance_id},'.encode()
    assert response.status_code == 201
    assert digits in response.content
    health = probe(empty_frontend, "/health")
    assert digits in health.content
    assert health.json()["instances"][0]["instance_id"] == instance_id


@pytest.mark.parametrize("instance_id", EXTREME_IDS, ids=str)
def test_delete_instance_accepts_whole_u64_range(empty_frontend: Sidecar, instance_id: int) -> None:
    control(empty_frontend, "POST", "/v1/instances", json=instance(instance_id=instance_id))
    response = control(empty_frontend, "DELETE", f"/v1/instances/{instance_id}")
    assert response.status_code == 200
    assert f'"instance_id":{instance_id},'.encode() in response.content
    assert frontend_health(empty_frontend)["instances"] == []


# -- POST /v1/heartbeat -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"json": {"pid": 123}}, {"json": {}}, {"json": {"pid": 2**31 - 1}}, {"json": {"pid": 1}}],
    ids=["no-body", "pid", "empty-object", "pid-max", "pid-1"],
)
def test_heartbeat_answers_alive_and_changes_no_endpoint(
    worker: Sidecar, kwargs: dict[str, Any]
) -> None:
    before = snapshot(worker)
    response = control(worker, "POST", "/v1/heartbeat", **kwargs)
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json() == {"life": 1, "status": "alive"}
    assert snapshot(worker) == before


# -- GET /v1/status -------------------------------------------------------------------------------


@pytest.mark.parametrize("ready", [False, True], ids=["notready", "ready"])
def test_status_matches_worker_health_path(sidecar: Sidecar, ready: bool) -> None:
    control(sidecar, "POST", "/v1/endpoints/aux/ready")
    if ready:
        control(sidecar, "POST", "/v1/endpoints/generate/ready")
    status = control(sidecar, "GET", "/v1/status")
    health = probe(sidecar, "/health")
    assert status.status_code == 200
    assert health.status_code == (200 if ready else 503)
    assert status.headers["content-type"] == JSON_TYPE
    assert without_uptime(status.content) == without_uptime(health.content)
    assert set(status.json()["uptime"]) == {"secs", "nanos"}


@pytest.mark.parametrize("registered", [False, True], ids=["empty", "registered"])
def test_status_matches_frontend_health_path(empty_frontend: Sidecar, registered: bool) -> None:
    if registered:
        control(empty_frontend, "POST", "/v1/instances", json=INSTANCE)
    status = control(empty_frontend, "GET", "/v1/status")
    health = probe(empty_frontend, "/health")
    assert (status.status_code, health.status_code) == (200, 200)
    assert status.content == health.content


def test_status_answers_200_while_draining(run_sidecar: RunSidecar) -> None:
    sc = run_sidecar(
        {"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate", "DYN_SIDECAR_DRAIN_SECONDS": "30"}
    )
    control(sc, "POST", "/v1/endpoints/generate/ready")
    sc.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: probe(sc, "/health").status_code == 503)
    status = control(sc, "GET", "/v1/status")
    assert status.status_code == 200
    assert without_uptime(status.content) == without_uptime(probe(sc, "/health").content)
    assert status.json()["draining"] is True


# -- the socket file ----------------------------------------------------------------------------


def test_control_socket_file_mode_is_0660(sidecar: Sidecar) -> None:
    mode = sidecar.socket_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_control_socket_file_is_removed_on_exit(sidecar: Sidecar) -> None:
    assert sidecar.stop() == 0
    assert not sidecar.socket_path.exists()


def test_control_socket_stale_file_is_replaced(run_sidecar: RunSidecar, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.exists()
    sc = run_sidecar({"DYN_SIDECAR_SOCKET": str(path)})
    assert control(sc, "GET", "/v1/status").status_code == 200


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_control_socket_answers_curl(sidecar: Sidecar) -> None:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(sidecar.socket_path),
            "-X",
            "PUT",
            "-d",
            '{"status": "ready"}',
            "http://sidecar/v1/endpoints/generate",
        ],
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert json.loads(result.stdout) == {
        "endpoint": "generate",
        "life": 1,
        "overall": "ready",
        "status": "ready",
    }


# -- refusals: 400 ----------------------------------------------------------------------------

INVALID_JSON = "the body is not valid JSON: "


@pytest.mark.parametrize(
    ("mode", "method", "path", "content", "detail"),
    [
        (
            "worker",
            "PUT",
            "/v1/endpoints/generate",
            b'{"status": "ready"',
            "Expecting ',' delimiter: line 1 column 19 (char 18)",
        ),
        (
            "worker",
            "PUT",
            "/v1/endpoints/generate",
            b'{"status": "ready",}',
            "Expecting property name enclosed in double quotes: line 1 column 20 (char 19)",
        ),
        (
            "worker",
            "PUT",
            "/v1/endpoints/generate",
            b"\xff",
            "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
        (
            "worker",
            "PUT",
            "/v1/endpoints/generate",
            b"[" * 60000,
            "maximum recursion depth exceeded while decoding a JSON array from a unicode string",
        ),
        (
            "worker",
            "POST",
            "/v1/endpoints/generate/ready",
            b"{",
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (
            "worker",
            "POST",
            "/v1/heartbeat",
            b'{"pid": 1',
            "Expecting ',' delimiter: line 1 column 10 (char 9)",
        ),
        (
            "frontend",
            "POST",
            "/v1/instances",
            b"not json",
            "Expecting value: line 1 column 1 (char 0)",
        ),
        (
            "frontend",
            "DELETE",
            "/v1/instances/7",
            b"{",
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
    ],
    ids=[
        "put-truncated",
        "put-trailing-comma",
        "put-not-utf8",
        "put-too-deep",
        "ready-truncated",
        "heartbeat-truncated",
        "instance-not-json",
        "delete-with-bad-body",
    ],
)
def test_control_malformed_json_is_400(
    shared: Callable[[str], Sidecar], mode: str, method: str, path: str, content: bytes, detail: str
) -> None:
    sc = shared(mode)
    assert_refused(sc, method, path, 400, INVALID_JSON + detail, content=content)


# -- refusals: 404 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/v1/nothing"),
        ("GET", "/health"),
        ("POST", "/v1/endpoints"),
        ("PUT", "/v1/endpoints/"),
        ("POST", "/v1/endpoints/generate/maybe"),
        ("PUT", "/v1/endpoints/generate/ready/now"),
        ("POST", "/v1/instances/7/extra"),
        ("GET", "/v2/status"),
    ],
)
def test_control_unknown_path_is_404(shared_worker: Sidecar, method: str, path: str) -> None:
    kwargs = {"json": {"status": "ready"}} if method in ("PUT", "POST") else {}
    assert_refused(shared_worker, method, path, 404, f"no such path: {path}", **kwargs)


@pytest.mark.parametrize("instance_id", ["8", "0", str(MAX_U64), "009"])
def test_delete_instance_unknown_id_is_404(shared_frontend: Sidecar, instance_id: str) -> None:
    number = int(instance_id)
    assert_refused(
        shared_frontend,
        "DELETE",
        f"/v1/instances/{instance_id}",
        404,
        f"no instance has instance_id {number}",
    )


# -- refusals: 405 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/endpoints/generate", {"PUT"}),
        ("POST", "/v1/endpoints/generate", {"PUT"}),
        ("DELETE", "/v1/endpoints/generate", {"PUT"}),
        ("PUT", "/v1/endpoints/generate/ready", {"POST"}),
        ("GET", "/v1/endpoints/generate/notready", {"POST"}),
        ("GET", "/v1/instances", {"POST"}),
        ("PUT", "/v1/instances", {"POST"}),
        ("GET", "/v1/instances/7", {"DELETE"}),
        ("POST", "/v1/instances/7", {"DELETE"}),
        ("GET", "/v1/heartbeat", {"POST"}),
        ("GET", "/v1/session", {"POST"}),
        ("PUT", "/v1/session", {"POST"}),
        ("POST", "/v1/status", {"GET", "HEAD"}),
        ("DELETE", "/v1/status", {"GET", "HEAD"}),
        ("PATCH", "/v1/endpoints/generate", {"PUT"}),
    ],
)
def test_control_wrong_method_is_405_with_allow(
    shared: Callable[[str], Sidecar], method: str, path: str, allowed: set[str]
) -> None:
    sc = shared("frontend" if "instances" in path else "worker")
    before = snapshot(sc)
    kwargs = {"json": {"status": "ready"}} if method in ("PUT", "POST", "PATCH") else {}
    response = control(sc, method, path, **kwargs)
    allow = response.headers.get("allow", "")
    assert set(allow.split(", ")) == allowed
    assert_error(response, 405, f"{method} is not allowed on {path}; allowed: {allow}")
    assert snapshot(sc) == before


def test_control_allow_header_is_the_same_on_every_start(
    run_sidecar: Callable[..., Sidecar],
) -> None:
    # Starlette joins the methods from a set: without sorting, the order follows the hash seed.
    seen = set()
    for seed in range(8):
        sc = run_sidecar(env={"PYTHONHASHSEED": str(seed)})
        seen.add(control(sc, "POST", "/v1/status").headers.get("allow"))
        sc.process.kill()
        sc.process.wait(timeout=10)
    assert seen == {"GET, HEAD"}


# -- refusals: 413 ----------------------------------------------------------------------------

READY_BODY = b'{"status": "ready"}'
INSTANCE_BODY = json.dumps(instance(instance_id=9)).encode()


@pytest.mark.parametrize(
    ("mode", "path", "body"),
    [
        ("worker", "/v1/endpoints/generate", READY_BODY),
        ("frontend", "/v1/instances", INSTANCE_BODY),
        ("worker", "/v1/heartbeat", b'{"pid": 5}'),
    ],
    ids=["endpoint", "instance", "heartbeat"],
)
def test_control_body_over_64k_with_length_is_413(
    shared: Callable[[str], Sidecar], mode: str, path: str, body: bytes
) -> None:
    sc = shared(mode)
    method = "PUT" if "endpoints" in path else "POST"
    content = padded(body, MAX_BODY + 1)
    assert_refused(
        sc,
        method,
        path,
        413,
        f"the body has {MAX_BODY + 1} bytes; the limit is {MAX_BODY}",
        content=content,
    )


@pytest.mark.parametrize(
    ("mode", "path", "body"),
    [
        ("worker", "/v1/endpoints/generate", READY_BODY),
        ("frontend", "/v1/instances", INSTANCE_BODY),
        ("worker", "/v1/heartbeat", b'{"pid": 5}'),
    ],
    ids=["endpoint", "instance", "heartbeat"],
)
def test_control_chunked_body_over_64k_is_413(
    shared: Callable[[str], Sidecar], mode: str, path: str, body: bytes
) -> None:
    sc = shared(mode)
    method = "PUT" if "endpoints" in path else "POST"
    data = padded(body, MAX_BODY + 1)
    before = snapshot(sc)
    response = control(sc, method, path, content=chunks(data))
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, f"the body is over the limit of {MAX_BODY} bytes")
    assert snapshot(sc) == before


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_control_body_of_exactly_64k_is_accepted(worker: Sidecar, chunked: bool) -> None:
    data = padded(READY_BODY, MAX_BODY)
    content = chunks(data) if chunked else data
    response = control(worker, "PUT", "/v1/endpoints/generate", content=content)
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


# -- refusals: 422 ----------------------------------------------------------------------------

OBJECT_WITH_STATUS = "the body must be a JSON object with the fields status"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": {"status": "up"}}, f'status "up" is invalid: {STATUS_RULE}'),
        ({"json": {"status": "READY"}}, f'status "READY" is invalid: {STATUS_RULE}'),
        ({"json": {"status": ""}}, f'status "" is invalid: {STATUS_RULE}'),
        ({"json": {"status": True}}, f"status true is invalid: {STATUS_RULE}"),
        ({"json": {"status": None}}, f"status null is invalid: {STATUS_RULE}"),
        ({"json": {"status": ["ready"]}}, f'status ["ready"] is invalid: {STATUS_RULE}'),
        (
            {"json": {}},
            'missing field "status"; expected {"status": "ready"} or "notready"',
        ),
        (
            {"json": {"Status": "ready"}},
            'unknown field "Status"; allowed: status',
        ),
        (
            {"json": {"status": "ready", "endpoint": "generate"}},
            'unknown field "endpoint"; allowed: status',
        ),
        ({"json": ["ready"]}, OBJECT_WITH_STATUS),
        ({"json": "ready"}, OBJECT_WITH_STATUS),
        ({"content": b"null"}, OBJECT_WITH_STATUS),
        ({"content": b"1"}, OBJECT_WITH_STATUS),
        ({}, OBJECT_WITH_STATUS),
    ],
    ids=[
        "status-unknown",
        "status-uppercase",
        "status-empty",
        "status-bool",
        "status-null",
        "status-list",
        "status-missing",
        "field-miscased",
        "field-extra",
        "body-list",
        "body-string",
        "body-null",
        "body-number",
        "body-none",
    ],
)
def test_put_endpoint_invalid_body_is_422(
    shared_worker: Sidecar, kwargs: dict[str, Any], message: str
) -> None:
    assert_refused(shared_worker, "PUT", "/v1/endpoints/generate", 422, message, **kwargs)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("a" * 129, "a" * 129),
        ("a%20b", "a b"),
        ("caf%C3%A9", "café"),
        ("gen%3Aerate", "gen:erate"),
        ("generate%0A", "generate\n"),
        ("a%2Bb", "a+b"),
    ],
    ids=["129-chars", "space", "non-ascii", "colon", "newline", "plus"],
)
@pytest.mark.parametrize(
    ("method", "suffix", "kwargs"),
    [
        ("PUT", "", {"json": {"status": "ready"}}),
        ("POST", "/ready", {}),
        ("POST", "/notready", {}),
    ],
    ids=["put", "ready", "notready"],
)
def test_endpoint_invalid_name_in_path_is_422(
    shared_worker: Sidecar,
    raw: str,
    name: str,
    method: str,
    suffix: str,
    kwargs: dict[str, Any],
) -> None:
    message = f"endpoint name {json.dumps(name, ensure_ascii=False)} is invalid: {NAME_RULE}"
    assert_refused(shared_worker, method, f"/v1/endpoints/{raw}{suffix}", 422, message, **kwargs)


INSTANCE_OBJECT = f"the body must be a JSON object with the fields {INSTANCE_ALLOWED}"
TRANSPORT_RULE = 'transport must be a JSON object, such as {"nats_tcp": "subject"}'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        *[
            (instance(**{field: ...}), f'missing field "{field}"; required: {INSTANCE_REQUIRED}')
            for field in ("namespace", "component", "endpoint", "instance_id", "transport")
        ],
        (instance(instance_id=-1), f"instance_id -1 is invalid: {ID_RULE}"),
        (instance(instance_id=2**64), f"instance_id {2**64} is invalid: {ID_RULE}"),
        (instance(instance_id=1.5), f"instance_id 1.5 is invalid: {ID_RULE}"),
        (instance(instance_id=7.0), f"instance_id 7.0 is invalid: {ID_RULE}"),
        (instance(instance_id=True), f"instance_id true is invalid: {ID_RULE}"),
        (instance(instance_id="7"), f'instance_id "7" is invalid: {ID_RULE}'),
        (instance(instance_id=None), f"instance_id null is invalid: {ID_RULE}"),
        (instance(namespace="dyn amo"), f'namespace "dyn amo" is invalid: {NAME_RULE}'),
        (instance(namespace=""), f'namespace "" is invalid: {NAME_RULE}'),
        (instance(namespace=7), f"namespace 7 is invalid: {NAME_RULE}"),
        (instance(component="a" * 129), f'component "{"a" * 129}" is invalid: {NAME_RULE}'),
        (instance(endpoint="a/b"), f'endpoint "a/b" is invalid: {NAME_RULE}'),
        (instance(transport="nats"), TRANSPORT_RULE),
        (instance(transport=["nats"]), TRANSPORT_RULE),
        (instance(transport=None), TRANSPORT_RULE),
        (instance(model="yes"), 'model "yes" is invalid: expected true or false'),
        (instance(model=1), "model 1 is invalid: expected true or false"),
        (instance(model=None), "model null is invalid: expected true or false"),
        ([INSTANCE], INSTANCE_OBJECT),
        (None, INSTANCE_OBJECT),
    ],
    ids=[
        "missing-namespace",
        "missing-component",
        "missing-endpoint",
        "missing-instance_id",
        "missing-transport",
        "id-negative",
        "id-2**64",
        "id-float",
        "id-integral-float",
        "id-bool",
        "id-string",
        "id-null",
        "namespace-space",
        "namespace-empty",
        "namespace-number",
        "component-129",
        "endpoint-slash",
        "transport-string",
        "transport-list",
        "transport-null",
        "model-string",
        "model-number",
        "model-null",
        "body-list",
        "body-none",
    ],
)
def test_post_instance_invalid_fields_is_422(
    shared_frontend: Sidecar, body: Any, message: str
) -> None:
    kwargs = {} if body is None else {"json": body}
    assert_refused(shared_frontend, "POST", "/v1/instances", 422, message, **kwargs)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("-1", '"-1"'),
        ("18446744073709551616", '"18446744073709551616"'),
        ("abc", '"abc"'),
        ("1.5", '"1.5"'),
        ("0x7", '"0x7"'),
        ("%207", '" 7"'),
    ],
    ids=["negative", "2**64", "word", "float", "hex", "space"],
)
def test_delete_instance_invalid_id_is_422(shared_frontend: Sidecar, raw: str, shown: str) -> None:
    message = f"instance_id {shown} is invalid: {ID_RULE}"
    assert_refused(shared_frontend, "DELETE", f"/v1/instances/{raw}", 422, message)


def test_delete_instance_superscript_digit_is_422(shared_frontend: Sidecar) -> None:
    message = f'instance_id "²" is invalid: {ID_RULE}'
    assert_refused(shared_frontend, "DELETE", "/v1/instances/%C2%B2", 422, message)


def test_delete_instance_overlong_id_is_422(shared_frontend: Sidecar) -> None:
    raw = "1" * 4301
    message = f"instance_id {json.dumps(raw)[:200]} is invalid: {ID_RULE}"
    assert_refused(shared_frontend, "DELETE", f"/v1/instances/{raw}", 422, message)


def test_delete_instance_non_ascii_digit_is_422(frontend: Sidecar) -> None:
    message = f'instance_id "\u0667" is invalid: {ID_RULE}'
    assert_refused(frontend, "DELETE", "/v1/instances/%D9%A7", 422, message)


BEYOND = "1" + "0" * 400 + ".0"


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("NaN", "NaN is not a JSON value"),
        ("Infinity", "Infinity is not a JSON value"),
        ("-Infinity", "-Infinity is not a JSON value"),
        # Read as infinity, these would be served back as `Infinity`, which is not JSON.
        ("1e400", "the number 1e400 is out of range"),
        ("-1e400", "the number -1e400 is out of range"),
        (BEYOND, f"the number {BEYOND[:40]} is out of range"),
    ],
    ids=["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "400 digits"],
)
def test_post_instance_number_json_cannot_carry_is_refused(
    frontend: Sidecar, number: str, why: str
) -> None:
    content = b'{"namespace": "dynamo", "component": "backend", "endpoint": "generate", '
    content += b'"instance_id": 9, "transport": {"x": ' + number.encode() + b"}}"
    before = snapshot(frontend)
    response = control(frontend, "POST", "/v1/instances", content=content)
    assert response.status_code == 400
    assert response.json()["error"] == f"the body is not valid JSON: {why}"
    assert snapshot(frontend) == before


def nested(depth: int) -> object:
    """A transport value `depth` levels of arrays and objects deep, counting the body's own."""
    value: object = 1
    for level in range(depth - 2):
        value = [value] if level % 2 else {"k": value}
    return value


DYNAMO_1_6_1_INSTANCE: dict[str, Any] = {
    "component": "backend",
    "endpoint": "generate",
    "namespace": "dynamo",
    "instance_id": 7531762795041169231,
    "transport": {"tcp": "192.0.2.2:44777/6886325b6aee9f4f/dynamo/backend/generate"},
    "device_type": "cuda",
    "request_plane_codec": "msgpack",
}


def test_post_instance_dynamo_1_6_1_record_is_accepted_unchanged(empty_frontend: Sidecar) -> None:
    response = control(empty_frontend, "POST", "/v1/instances", json=DYNAMO_1_6_1_INSTANCE)
    assert response.status_code == 201


def test_post_instance_unknown_fields_are_served_back_as_given(empty_frontend: Sidecar) -> None:
    control(empty_frontend, "POST", "/v1/instances", json=DYNAMO_1_6_1_INSTANCE)
    assert frontend_health(empty_frontend)["instances"] == [DYNAMO_1_6_1_INSTANCE]


def test_post_instance_unknown_fields_survive_a_restart(
    run_sidecar: RunSidecar, tmp_path: Path
) -> None:
    env = {"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_STATE_FILE": str(tmp_path / "s.json")}
    sidecar = run_sidecar(env)
    control(sidecar, "POST", "/v1/instances", json=DYNAMO_1_6_1_INSTANCE)
    sidecar.process.kill()
    sidecar.process.wait(timeout=5)
    again = run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(sidecar.socket_path)})
    assert again.probe("/health").json()["instances"] == [DYNAMO_1_6_1_INSTANCE]


def test_post_instance_unknown_field_nesting_over_the_limit_is_refused(
    frontend: Sidecar,
) -> None:
    body = {**INSTANCE, "device": {"k": nested(33)}}
    message = "the body nests deeper than 32 levels of arrays and objects"
    assert_refused(frontend, "POST", "/v1/instances", 422, message, json=body)


def test_post_instance_known_fields_keep_their_validation_beside_unknown_ones(
    frontend: Sidecar,
) -> None:
    body = {**DYNAMO_1_6_1_INSTANCE, "instance_id": -1}
    message = f"instance_id -1 is invalid: {ID_RULE}"
    assert_refused(frontend, "POST", "/v1/instances", 422, message, json=body)


def test_post_instance_nesting_over_the_limit_is_refused(frontend: Sidecar) -> None:
    before = snapshot(frontend)
    body = {**INSTANCE, "transport": {"deep": nested(33)}}
    response = control(frontend, "POST", "/v1/instances", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == (
        "the body nests deeper than 32 levels of arrays and objects"
    )
    assert snapshot(frontend) == before


def test_post_instance_nesting_at_the_limit_is_served_and_saved(
    run_sidecar: RunSidecar, tmp_path: Path
) -> None:
    state_file = tmp_path / "deep.state.json"
    env = {"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_STATE_FILE": str(state_file)}
    sidecar = run_sidecar(env)
    transport = {"deep": nested(32)}
    body = {**INSTANCE, "transport": transport}
    assert control(sidecar, "POST", "/v1/instances", json=body).status_code == 201
    assert sidecar.probe("/health").json()["instances"][0]["transport"] == transport
    sidecar.process.kill()
    sidecar.process.wait(timeout=5)
    again = run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(sidecar.socket_path)})
    assert again.probe("/health").json()["instances"][0]["transport"] == transport


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(transport=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4))
def test_post_instance_whatever_is_accepted_is_served_and_saved(
    shared_frontend: Sidecar, transport: dict[str, Any]
) -> None:
    """Any transport the API accepts is served back as JSON on the health path and is in
    the state file; anything else is refused with a 4xx. Never a 5xx, never invalid JSON."""
    content = json.dumps({**INSTANCE, "instance_id": 99, "transport": transport}).encode()
    response = control(shared_frontend, "POST", "/v1/instances", content=content)
    assert response.status_code in (200, 201, 400, 422), response.text
    health = shared_frontend.probe("/health")
    assert health.status_code == 200
    served = json.loads(health.content, parse_constant=pytest.fail)
    if response.status_code in (200, 201):
        (instance,) = [i for i in served["instances"] if i["instance_id"] == 99]
        assert instance["transport"] == json.loads(content)["transport"]
        state_file = shared_frontend.socket_path.with_name("health.state.json")
        saved = read(state_file)
        assert saved is not None and any(i.instance_id == 99 for i in saved.instances)


PID_OBJECT = "the body must be a JSON object with the fields pid"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"pid": 0}, f"pid 0 is invalid: {PID_RULE}"),
        ({"pid": -1}, f"pid -1 is invalid: {PID_RULE}"),
        ({"pid": "12"}, f'pid "12" is invalid: {PID_RULE}'),
        ({"pid": True}, f"pid true is invalid: {PID_RULE}"),
        ({"pid": 2**31}, f"pid 2147483648 is invalid: {PID_RULE}"),
        ({"pid": 1.5}, f"pid 1.5 is invalid: {PID_RULE}"),
        ({"pid": 12, "name": "vllm"}, 'unknown field "name"; allowed: pid'),
        ([123], PID_OBJECT),
        (123, PID_OBJECT),
    ],
    ids=["zero", "negative", "string", "bool", "2**31", "float", "extra", "list", "number"],
)
def test_heartbeat_invalid_pid_is_422(shared_worker: Sidecar, body: Any, message: str) -> None:
    assert_refused(shared_worker, "POST", "/v1/heartbeat", 422, message, json=body)


# -- the probe port cannot write ------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "path",
    ["/health", "/ready", "/live", "/v1/endpoints/generate", "/v1/endpoints/generate/ready"],
)
def test_probe_port_write_is_refused_and_changes_nothing(
    shared_worker: Sidecar, method: str, path: str
) -> None:
    before = snapshot(shared_worker)
    response = probe(shared_worker, path, method, json={"status": "ready"})
    expected = 404 if path.startswith("/v1/") else 405
    assert response.status_code == expected
    assert response.headers["content-type"] == JSON_TYPE
    assert "error" in response.json()
    if expected == 405:
        assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert snapshot(shared_worker) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/heartbeat/"), ("PUT", "/v1/endpoints/generate/"), ("GET", "/v1/status/")],
)
def test_control_trailing_slash_is_404(shared_worker: Sidecar, method: str, path: str) -> None:
    kwargs = {"json": {"status": "ready"}} if method == "PUT" else {}
    assert_refused(shared_worker, method, path, 404, f"no such path: {path}", **kwargs)


def test_openapi_document_is_served_as_kept_in_the_repository(sidecar: Sidecar) -> None:
    response = control(sidecar, "GET", "/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == JSON_TYPE
    kept = (Path(__file__).parents[1] / "sidecar" / "openapi.json").read_bytes()
    assert response.content == kept
    assert set(response.json()["paths"]) >= {"/v1/endpoints/{name}", "/v1/session", "/v1/worker"}


def test_socket_file_that_cannot_be_made_again_is_logged_once_then_made(
    run_sidecar: RunSidecar,
) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_STATE_FILE": "off"})
    directory = sidecar.socket_path.parent
    shutil.rmtree(directory)
    directory.write_bytes(b"")  # a file where the socket's directory was: mkdir fails
    assert wait_until(lambda: "is gone: cannot create" in sidecar.logs(), timeout=3.0)
    time.sleep(1.5)  # three more checks fail
    assert sidecar.logs().count("is gone:") == 1
    directory.unlink()
    assert wait_until(sidecar.socket_path.exists, timeout=3.0)
    assert control(sidecar, "GET", "/v1/status").status_code == 200
    assert "was deleted while the sidecar ran; created it again" in sidecar.logs()
