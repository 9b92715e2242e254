"""The worker-side client (`sidecar.client`) against the real sidecar process.

Each call is judged by what the kubelet would see on the probe port afterwards. Sessions and
heartbeats are in `test_client_sessions.py`, the stand-ins that misbehave in
`test_client_retries.py`, and the core's pure tests in `test_client_requests.py`,
`test_client_answers.py` and `test_client_retry_policy.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from conftest import Sidecar, short_socket_path
from test_client_support import (
    FRONTEND,
    MAX_ID,
    TRANSPORT,
    RunSidecar,
    accepting,
    bad_name_error,
    code,
    missing_path,
    retry_log_lines,
)

from sidecar.client import (
    DEFAULT_SOCKET,
    AsyncSidecarClient,
    Retry,
    SidecarClient,
    SidecarRejected,
    SidecarUnavailable,
    resolve_socket,
)

THIRD_PARTY = {"starlette", "uvicorn", "httpx", "psutil", "prometheus_client", "anyio"}


@pytest.fixture
def sidecar(sidecar: Sidecar) -> Sidecar:
    """The shared fixture's sidecar, once its socket accepts connections."""
    return accepting(sidecar)


# -- where the socket is --------------------------------------------------------------------------


def test_client_resolve_socket_prefers_the_argument() -> None:
    assert resolve_socket("/run/a.sock", {"DYN_SIDECAR_SOCKET": "/run/b.sock"}) == "/run/a.sock"


def test_client_resolve_socket_reads_the_environment() -> None:
    assert resolve_socket(None, {"DYN_SIDECAR_SOCKET": "/run/b.sock"}) == "/run/b.sock"


def test_client_resolve_socket_treats_an_empty_variable_as_unset() -> None:
    assert resolve_socket(None, {"DYN_SIDECAR_SOCKET": ""}) == DEFAULT_SOCKET
    assert DEFAULT_SOCKET == "/var/run/dynamo/health.sock"


def test_client_uses_the_environment_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_SIDECAR_SOCKET", "/run/c.sock")
    assert SidecarClient().socket_path == "/run/c.sock"
    assert AsyncSidecarClient().socket_path == "/run/c.sock"


# -- each method, seen on the probe port ----------------------------------------------------------


def test_client_ready_makes_the_health_path_pass(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    assert code(sidecar, "/health") == 503
    answer = client.ready("generate")
    assert answer == {"endpoint": "generate", "life": 1, "overall": "ready", "status": "ready"}
    assert code(sidecar, "/health") == 200
    assert code(sidecar, "/live") == 200


def test_client_notready_makes_the_health_path_fail(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.ready("generate")
    answer = client.notready("generate")
    assert (answer["status"], answer["overall"]) == ("notready", "notready")
    assert code(sidecar, "/health") == 503
    assert sidecar.probe("/health").json()["endpoints"] == {"generate": "notready"}


def test_client_set_endpoint_adds_an_endpoint_that_is_not_required(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.set_endpoint("clear_kv_blocks", "ready")
    endpoints = sidecar.probe("/health").json()["endpoints"]
    assert endpoints == {"clear_kv_blocks": "ready", "generate": "notready"}


def test_client_register_instance_keeps_a_64_bit_id_exact(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar(FRONTEND))
    client = SidecarClient(sc.socket_path)
    answer = client.register_instance("dynamo", "backend", "generate", MAX_ID, TRANSPORT)
    assert answer == {"instance_id": MAX_ID, "instances": 1, "url": "dyn://dynamo.backend.generate"}
    body = sc.probe("/health").json()
    assert body["status"] == "healthy"
    assert body["instances"] == [
        {
            "component": "backend",
            "endpoint": "generate",
            "instance_id": MAX_ID,
            "namespace": "dynamo",
            "transport": TRANSPORT,
        }
    ]


def test_client_remove_instances_empties_the_frontend_health(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar(FRONTEND))
    client = SidecarClient(sc.socket_path)
    client.register_instance("dynamo", "backend", "generate", MAX_ID, TRANSPORT)
    client.register_instance("dynamo", "backend", "clear_kv_blocks", MAX_ID, TRANSPORT, model=False)
    assert client.remove_instances(MAX_ID) == {"instance_id": MAX_ID, "removed": 2}
    assert sc.probe("/health").json()["status"] == "unhealthy"


def test_client_status_returns_what_the_health_path_shows(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    client.ready("generate")
    status = client.status()
    assert status["endpoints"] == {"generate": "ready"}
    assert status["status"] == "ready"
    assert set(status["uptime"]) == {"secs", "nanos"}


def test_client_heartbeat_answers_alive(sidecar: Sidecar) -> None:
    client = SidecarClient(sidecar.socket_path)
    assert client.heartbeat() == {"life": 1, "status": "alive"}
    assert client.heartbeat(pid=os.getpid()) == {"life": 1, "status": "alive"}


# -- errors ---------------------------------------------------------------------------------------


def test_client_rejected_carries_the_status_and_the_sidecars_message(sidecar: Sidecar) -> None:
    with pytest.raises(SidecarRejected) as caught:
        SidecarClient(sidecar.socket_path).ready("bad name!")
    assert caught.value.status == 422
    assert caught.value.message == bad_name_error(sidecar)
    assert code(sidecar, "/health") == 503


def test_client_rejected_404_for_an_unknown_instance(sidecar: Sidecar) -> None:
    with pytest.raises(SidecarRejected) as caught:
        SidecarClient(sidecar.socket_path).remove_instances(7)
    assert (caught.value.status, caught.value.message) == (404, "no instance has instance_id 7")


def test_client_unavailable_names_the_missing_socket() -> None:
    path = missing_path()
    with pytest.raises(SidecarUnavailable) as caught:
        SidecarClient(path).status()
    assert str(caught.value) == f"no sidecar at {path}: [Errno 2] No such file or directory"


def test_client_unavailable_when_nobody_listens_on_the_socket() -> None:
    path = short_socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays; nobody listens on it
    with pytest.raises(SidecarUnavailable) as caught:
        SidecarClient(path).heartbeat()
    assert str(caught.value) == f"no sidecar at {path}: [Errno 111] Connection refused"


# -- retries --------------------------------------------------------------------------------------


def test_client_retry_succeeds_when_the_sidecar_starts_late(
    run_sidecar: RunSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_socket_path()
    env = {"DYN_SIDECAR_SOCKET": str(path), "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate"}
    started: list[Sidecar] = []
    starter = threading.Timer(0.2, lambda: started.append(run_sidecar(env)))
    starter.start()
    caplog.set_level(logging.DEBUG, logger="sidecar.client")
    client = SidecarClient(path, retry=Retry(attempts=100, backoff=0.05, max_backoff=0.2))
    try:
        answer = client.ready("generate")
    finally:
        starter.join()
    assert answer["overall"] == "ready"
    assert code(started[0], "/health") == 200
    assert retry_log_lines(caplog), "the first attempt cannot have found the sidecar"


# -- asyncio --------------------------------------------------------------------------------------


def test_client_async_ready_and_notready_move_the_health_path(sidecar: Sidecar) -> None:
    client = AsyncSidecarClient(sidecar.socket_path)
    codes: list[int] = []

    async def main() -> None:
        await client.ready("generate")
        codes.append(code(sidecar, "/health"))
        await client.notready("generate")
        codes.append(code(sidecar, "/health"))

    asyncio.run(main())
    assert codes == [200, 503]


def test_client_async_instances_round_trip_exactly(run_sidecar: RunSidecar) -> None:
    sc = accepting(run_sidecar(FRONTEND))
    client = AsyncSidecarClient(sc.socket_path)

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        registered = await client.register_instance(
            "dynamo", "backend", "generate", MAX_ID, TRANSPORT
        )
        status = await client.status()
        return registered, status, await client.remove_instances(MAX_ID)

    registered, status, removed = asyncio.run(main())
    assert registered["instance_id"] == MAX_ID
    assert [i["instance_id"] for i in status["instances"]] == [MAX_ID]
    assert removed == {"instance_id": MAX_ID, "removed": 1}
    assert sc.probe("/health").json()["instances"] == []


def test_client_async_errors_match_the_sync_client(sidecar: Sidecar) -> None:
    path = missing_path()

    async def main() -> tuple[BaseException, BaseException]:
        with pytest.raises(SidecarRejected) as rejected:
            await AsyncSidecarClient(sidecar.socket_path).set_endpoint("bad name!", "ready")
        with pytest.raises(SidecarUnavailable) as unavailable:
            await AsyncSidecarClient(path).heartbeat()
        return rejected.value, unavailable.value

    rejected, unavailable = asyncio.run(main())
    assert isinstance(rejected, SidecarRejected)
    assert (rejected.status, rejected.message) == (422, bad_name_error(sidecar))
    assert str(unavailable) == f"no sidecar at {path}: [Errno 2] No such file or directory"


# -- packaging ------------------------------------------------------------------------------------


def test_client_imports_only_the_standard_library() -> None:
    script = (
        "import sys; import sidecar.client; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(THIRD_PARTY)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
