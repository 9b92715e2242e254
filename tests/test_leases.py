"""Instances belong to whoever registered them (docs/protocol.md section 4.7), on real processes.

A worker that holds a session owns a lease: the instances it registers with that lease leave
the moment its connection closes (the kernel closes it on SIGKILL), and only those. A
registrant without a held connection renews a lease instead, and its instances leave when it
stops renewing. Every refusal is checked with its exact error, and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sidecar, wait_until

from sidecar.client import AsyncSidecarClient, SidecarClient, SidecarRejected

RunSidecar = Callable[..., Sidecar]
FRONTEND = {"DYN_SIDECAR_MODE": "frontend", "DYN_SIDECAR_STATE_FILE": "off"}
LEASE_GONE = "it expired, was revoked or was never granted"
TTL_RULE = "expected a number of seconds from 0.1 to 3600"
LEASE_RULE = "expected 16 hexadecimal digits (0-9 a-f)"

# A worker that holds a session and registers two instances with the session's lease, then
# sleeps until it is killed. argv: socket, instance id, "reconnect" or "once".
WORKER = r"""
import sys, time
from sidecar.client import Retry, SidecarClient
client = SidecarClient(sys.argv[1], retry=Retry.patient())
session = client.open_session(reconnect=sys.argv[3] == "reconnect")
for endpoint in ("generate", "clear_kv_blocks"):
    transport = {"tcp": f"127.0.0.1:1/{sys.argv[2]}/{endpoint}"}
    client.register_instance(
        "dynamo", "backend", endpoint, int(sys.argv[2]), transport, lease=session.lease
    )
print(session.lease, flush=True)
time.sleep(120)
"""


def instance(instance_id: int, endpoint: str = "generate", **extra: Any) -> dict[str, Any]:
    return {
        "namespace": "dynamo",
        "component": "backend",
        "endpoint": endpoint,
        "instance_id": instance_id,
        "transport": {"tcp": f"127.0.0.1:1/{instance_id}/{endpoint}"},
        **extra,
    }


def listed_ids(sidecar: Sidecar) -> list[int]:
    return sorted({i["instance_id"] for i in sidecar.probe("/health").json()["instances"]})


def snapshot(sidecar: Sidecar) -> tuple[bytes, object]:
    """What a refused request must not change: the health body and the leases (but for the
    time each has left, which time alone changes)."""
    leases = sidecar.control("GET", "/v1/worker").json()["leases"]
    for lease in leases:
        lease.pop("expires_in_seconds")
    return sidecar.probe("/health").content, leases


def assert_refused(
    sidecar: Sidecar, method: str, path: str, code: int, message: str, **kwargs: Any
) -> None:
    before = snapshot(sidecar)
    response = sidecar.control(method, path, **kwargs)
    assert (response.status_code, response.json()) == (code, {"error": message})
    assert snapshot(sidecar) == before


def grant(sidecar: Sidecar, ttl: float) -> str:
    response = sidecar.control("POST", "/v1/leases", json={"ttl_seconds": ttl})
    assert response.status_code == 201, response.text
    lease = response.json()["lease"]
    assert isinstance(lease, str)
    return lease


def register(sidecar: Sidecar, body: dict[str, Any], lease: str | None = None) -> None:
    path = "/v1/instances" if lease is None else f"/v1/instances?lease={lease}"
    response = sidecar.control("POST", path, json=body)
    assert response.status_code in (200, 201), response.text


class Worker:
    """A real worker process holding a session, with two instances on its lease."""

    def __init__(self, sidecar: Sidecar, instance_id: int, reconnect: bool = False) -> None:
        mode = "reconnect" if reconnect else "once"
        args = [sys.executable, "-c", WORKER, str(sidecar.socket_path), str(instance_id), mode]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.lease = self.process.stdout.readline().strip()
        assert len(self.lease) == 16, "the worker did not register its instances"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(sidecar: Sidecar, instance_id: int, reconnect: bool = False) -> Worker:
        worker = Worker(sidecar, instance_id, reconnect)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


@pytest.fixture
def frontend(run_sidecar: RunSidecar) -> Sidecar:
    return run_sidecar(FRONTEND)


# -- sessions own their instances -----------------------------------------------------------


def test_lease_of_a_sigkilled_worker_leaves_health_within_a_second(
    frontend: Sidecar, workers: Callable[..., Worker]
) -> None:
    doomed = workers(frontend, 11)
    workers(frontend, 22)
    assert listed_ids(frontend) == [11, 22]
    killed_at = time.monotonic()
    doomed.kill()
    assert wait_until(lambda: listed_ids(frontend) == [22], timeout=5.0, interval=0.01)
    assert time.monotonic() - killed_at < 1.0


def test_lease_of_a_survivor_stays_when_another_worker_dies(
    frontend: Sidecar, workers: Callable[..., Worker]
) -> None:
    doomed = workers(frontend, 11)
    workers(frontend, 22)
    doomed.kill()
    assert wait_until(lambda: listed_ids(frontend) == [22])
    time.sleep(0.5)
    assert listed_ids(frontend) == [22]
    assert len(frontend.probe("/health").json()["instances"]) == 2


def test_lease_of_a_session_is_logged_when_the_worker_dies(
    frontend: Sidecar, workers: Callable[..., Worker]
) -> None:
    worker = workers(frontend, 11)
    worker.kill()
    line = f"lease {worker.lease}: held by session 1 -> gone after"
    assert wait_until(lambda: line in frontend.logs())
    assert "(its session connection closed; 2 removed)" in frontend.logs()


def test_lease_instances_without_a_lease_stay_when_a_session_closes(
    frontend: Sidecar, workers: Callable[..., Worker]
) -> None:
    register(frontend, instance(33))
    worker = workers(frontend, 11)
    workers(frontend, 22)
    worker.kill()
    assert wait_until(lambda: listed_ids(frontend) == [22, 33])


def test_lease_session_in_frontend_mode_holds_only_its_lease_not_the_frontends_life(
    frontend: Sidecar, workers: Callable[..., Worker]
) -> None:
    register(frontend, instance(33))
    worker = workers(frontend, 11)
    worker.kill()  # the only session: a registrant's, not the frontend's
    assert wait_until(lambda: listed_ids(frontend) == [33])
    assert frontend.control("GET", "/v1/worker").json()["alive"] is True
    assert frontend.probe("/live").status_code == 200
    assert "ended" not in frontend.logs()


def test_lease_life_end_in_worker_mode_drops_only_the_instances_without_a_lease(
    run_sidecar: RunSidecar, workers: Callable[..., Worker]
) -> None:
    sidecar = run_sidecar({"DYN_SIDECAR_STATE_FILE": "off"})
    register(sidecar, instance(33))
    renewed = grant(sidecar, 60)
    register(sidecar, instance(44), renewed)
    worker = workers(sidecar, 11)
    worker.kill()  # the only session: the worker's life ends with it
    assert wait_until(lambda: not sidecar.control("GET", "/v1/worker").json()["alive"])
    view = sidecar.control("GET", "/v1/worker").json()
    # A worker-mode probe port lists no instances: the socket's view counts them.
    assert view["instances"] == 1
    assert [lease["instance_ids"] for lease in view["leases"]] == [[44]]


def test_lease_session_reopened_after_a_sidecar_restart_holds_its_lease_again(
    run_sidecar: RunSidecar, tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    env = {**FRONTEND, "DYN_SIDECAR_STATE_FILE": str(tmp_path / "state.json")}
    first = run_sidecar(env)
    worker = workers(first, 11, reconnect=True)
    assert first.stop() == 0
    second = run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(first.socket_path)})
    assert listed_ids(second) == [11]

    def held_again() -> bool:
        leases = second.control("GET", "/v1/worker").json()["leases"]
        return [(v["lease"], v["held_by"]) for v in leases] == [(worker.lease, "held by session 1")]

    assert wait_until(held_again)
    worker.kill()
    assert wait_until(lambda: listed_ids(second) == [], timeout=1.0, interval=0.01)


def test_lease_of_a_session_not_reopened_after_a_restart_expires(
    run_sidecar: RunSidecar, tmp_path: Path
) -> None:
    env = {**FRONTEND, "DYN_SIDECAR_STATE_FILE": str(tmp_path / "state.json")}
    first = run_sidecar(env)
    lease = grant(first, 0.5)
    register(first, instance(11), lease)
    first.process.kill()
    first.process.wait(timeout=5)
    second = run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(first.socket_path)})
    assert listed_ids(second) == [11]
    assert wait_until(lambda: listed_ids(second) == [], timeout=3.0)


def test_session_holding_an_unknown_lease_is_404(frontend: Sidecar) -> None:
    message = f"no lease 00112233aabbccdd: {LEASE_GONE}"
    assert_refused(frontend, "POST", "/v1/session?lease=00112233aabbccdd", 404, message)


def test_session_with_an_unknown_query_parameter_is_422(frontend: Sidecar) -> None:
    message = 'unknown query parameter "owner"; allowed: lease'
    assert_refused(frontend, "POST", "/v1/session?owner=me", 422, message)


# -- leases kept by renewals ----------------------------------------------------------------


def test_lease_grant_answers_201_with_its_id_and_ttl(frontend: Sidecar) -> None:
    response = frontend.control("POST", "/v1/leases", json={"ttl_seconds": 2.5})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"lease", "ttl_seconds"}
    assert body["ttl_seconds"] == 2.5
    assert len(body["lease"]) == 16 and set(body["lease"]) <= set("0123456789abcdef")


def test_lease_grant_without_a_body_lasts_dynamos_ten_seconds(frontend: Sidecar) -> None:
    response = frontend.control("POST", "/v1/leases")
    assert (response.status_code, response.json()["ttl_seconds"]) == (201, 10.0)


def test_lease_not_renewed_takes_its_instances_when_it_expires(frontend: Sidecar) -> None:
    lease = grant(frontend, 0.3)
    register(frontend, instance(11), lease)
    registered_at = time.monotonic()
    assert wait_until(lambda: listed_ids(frontend) == [], timeout=3.0, interval=0.01)
    assert 0.25 < time.monotonic() - registered_at < 0.3 + 0.5


def test_lease_expiry_is_logged_as_a_warning(frontend: Sidecar) -> None:
    lease = grant(frontend, 0.2)
    register(frontend, instance(11), lease)
    line = f"lease {lease}: renewed -> gone after"
    assert wait_until(lambda: line in frontend.logs())
    assert "(not renewed for 0.2s; 1 removed)" in frontend.logs()
    assert "WARNING" in next(row for row in frontend.logs().splitlines() if line in row)


def test_lease_renewed_keeps_its_instances(frontend: Sidecar) -> None:
    lease = grant(frontend, 0.3)
    register(frontend, instance(11), lease)
    until = time.monotonic() + 1.2
    while time.monotonic() < until:
        response = frontend.control("PUT", f"/v1/leases/{lease}")
        assert response.json() == {"lease": lease, "ttl_seconds": 0.3}
        assert listed_ids(frontend) == [11]
        time.sleep(0.1)


def test_lease_revoked_takes_its_instances_at_once(frontend: Sidecar) -> None:
    lease = grant(frontend, 60)
    register(frontend, instance(11), lease)
    register(frontend, instance(11, "clear_kv_blocks"), lease)
    response = frontend.control("DELETE", f"/v1/leases/{lease}")
    assert (response.status_code, response.json()) == (200, {"lease": lease, "removed": 2})
    assert listed_ids(frontend) == []


def test_lease_revoked_twice_is_404(frontend: Sidecar) -> None:
    lease = grant(frontend, 60)
    frontend.control("DELETE", f"/v1/leases/{lease}")
    assert_refused(
        frontend, "DELETE", f"/v1/leases/{lease}", 404, f"no lease {lease}: {LEASE_GONE}"
    )


def test_lease_renewing_an_expired_lease_is_404(frontend: Sidecar) -> None:
    lease = grant(frontend, 0.1)
    assert wait_until(lambda: frontend.control("GET", "/v1/worker").json()["leases"] == [])
    assert_refused(frontend, "PUT", f"/v1/leases/{lease}", 404, f"no lease {lease}: {LEASE_GONE}")


def test_instance_registered_again_takes_the_new_lease(frontend: Sidecar) -> None:
    old, new = grant(frontend, 60), grant(frontend, 60)
    register(frontend, instance(11), old)
    register(frontend, instance(11), new)
    frontend.control("DELETE", f"/v1/leases/{old}")
    assert listed_ids(frontend) == [11]


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        ({"ttl_seconds": 0}, "0"),
        ({"ttl_seconds": 0.05}, "0.05"),
        ({"ttl_seconds": 3601}, "3601"),
        ({"ttl_seconds": "10"}, '"10"'),
        ({"ttl_seconds": True}, "true"),
        ({"ttl_seconds": None}, "null"),
    ],
    ids=["zero", "under", "over", "string", "bool", "null"],
)
def test_lease_ttl_out_of_range_is_422(frontend: Sidecar, body: Any, shown: str) -> None:
    message = f"ttl_seconds {shown} is invalid: {TTL_RULE}"
    assert_refused(frontend, "POST", "/v1/leases", 422, message, json=body)


def test_lease_grant_with_an_unknown_field_is_422(frontend: Sidecar) -> None:
    message = 'unknown field "ttl"; allowed: ttl_seconds'
    assert_refused(frontend, "POST", "/v1/leases", 422, message, json={"ttl": 5})


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_lease_id_that_is_not_16_hex_digits_is_422(frontend: Sidecar, method: str) -> None:
    message = f'lease "ABC" is invalid: {LEASE_RULE}'
    assert_refused(frontend, method, "/v1/leases/ABC", 422, message)


# -- registering with a lease ---------------------------------------------------------------


def test_instance_with_an_unknown_lease_is_422(frontend: Sidecar) -> None:
    path = "/v1/instances?lease=00112233aabbccdd"
    message = f"no lease 00112233aabbccdd: {LEASE_GONE}"
    assert_refused(frontend, "POST", path, 422, message, json=instance(11))


def test_instance_with_a_malformed_lease_is_422(frontend: Sidecar) -> None:
    message = f'lease "x y" is invalid: {LEASE_RULE}'
    assert_refused(frontend, "POST", "/v1/instances?lease=x%20y", 422, message, json=instance(11))


def test_instance_with_an_unknown_query_parameter_is_422(frontend: Sidecar) -> None:
    message = 'unknown query parameter "ttl"; allowed: lease'
    assert_refused(frontend, "POST", "/v1/instances?ttl=3", 422, message, json=instance(11))


def test_instance_with_a_lease_given_twice_is_422(frontend: Sidecar) -> None:
    lease = grant(frontend, 60)
    path = f"/v1/instances?lease={lease}&lease={lease}"
    message = "the query parameter lease is given twice"
    assert_refused(frontend, "POST", path, 422, message, json=instance(11))


# -- what operators see ---------------------------------------------------------------------


def test_worker_view_shows_each_lease_with_its_holder_and_instances(
    frontend: Sidecar, workers: Callable[..., Worker]
) -> None:
    worker = workers(frontend, 11)
    renewed = grant(frontend, 60)
    register(frontend, instance(44), renewed)
    register(frontend, instance(55))
    view = frontend.control("GET", "/v1/worker").json()
    assert view["instances"] == 4
    by_id = {lease["lease"]: lease for lease in view["leases"]}
    assert by_id[worker.lease] == {
        "lease": worker.lease,
        "held_by": "held by session 1",
        "ttl_seconds": 10.0,
        "expires_in_seconds": None,
        "instances": 2,
        "instance_ids": [11],
    }
    assert by_id[renewed]["held_by"] == "renewed"
    assert 59.0 < by_id[renewed]["expires_in_seconds"] <= 60.0
    assert (by_id[renewed]["instances"], by_id[renewed]["instance_ids"]) == (1, [44])


def test_status_command_lists_each_lease(frontend: Sidecar) -> None:
    lease = grant(frontend, 60)
    register(frontend, instance(44), lease)
    shown = subprocess.run(
        [sys.executable, "-m", "sidecar", "status", "--socket", str(frontend.socket_path)],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert f"lease {lease}" in shown
    assert "renewed, 1 instances (44)" in shown


def test_lease_survives_a_sidecar_restart_with_its_instances(
    run_sidecar: RunSidecar, tmp_path: Path
) -> None:
    env = {**FRONTEND, "DYN_SIDECAR_STATE_FILE": str(tmp_path / "state.json")}
    first = run_sidecar(env)
    lease = grant(first, 60)
    register(first, instance(11, device_type="cuda"), lease)
    first.process.kill()
    first.process.wait(timeout=5)
    second = run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(first.socket_path)})
    assert second.probe("/health").json()["instances"][0]["device_type"] == "cuda"
    assert second.control("PUT", f"/v1/leases/{lease}").status_code == 200


# -- the client library ---------------------------------------------------------------------


def test_client_grants_renews_and_revokes_a_lease(frontend: Sidecar) -> None:
    client = SidecarClient(frontend.socket_path)
    lease = client.grant_lease(ttl_seconds=30)["lease"]
    assert isinstance(lease, str)
    client.register_instance("dynamo", "backend", "generate", 11, {"tcp": "x"}, lease=lease)
    assert client.renew_lease(lease) == {"lease": lease, "ttl_seconds": 30.0}
    assert client.revoke_lease(lease) == {"lease": lease, "removed": 1}
    with pytest.raises(SidecarRejected) as caught:
        client.renew_lease(lease)
    assert caught.value.status == 404


def test_client_renewals_keep_a_short_lease(frontend: Sidecar) -> None:
    client = SidecarClient(frontend.socket_path)
    lease = client.grant_lease(ttl_seconds=0.3)["lease"]
    assert isinstance(lease, str)
    client.register_instance("dynamo", "backend", "generate", 11, {"tcp": "x"}, lease=lease)
    with client.start_renewals(lease, interval=0.1):
        time.sleep(1.0)
        assert listed_ids(frontend) == [11]
    assert wait_until(lambda: listed_ids(frontend) == [], timeout=2.0)


def test_async_client_session_lease_owns_its_instances(frontend: Sidecar) -> None:
    async def scenario() -> None:
        client = AsyncSidecarClient(frontend.socket_path)
        async with await client.open_session() as session:
            assert session.lease is not None
            await client.register_instance(
                "dynamo", "backend", "generate", 11, {"tcp": "x"}, lease=session.lease
            )
            assert listed_ids(frontend) == [11]
        assert wait_until(lambda: listed_ids(frontend) == [], timeout=1.0)

    asyncio.run(scenario())


def test_client_session_gets_a_new_lease_when_its_old_one_is_gone(
    run_sidecar: RunSidecar, tmp_path: Path
) -> None:
    env = {**FRONTEND, "DYN_SIDECAR_STATE_FILE": "off"}
    first = run_sidecar(env)
    session = SidecarClient(first.socket_path).open_session(reconnect=True)
    old = session.lease
    assert first.stop() == 0
    second = run_sidecar({**env, "DYN_SIDECAR_SOCKET": str(first.socket_path)})

    def held() -> list[str]:
        return [lease["lease"] for lease in second.control("GET", "/v1/worker").json()["leases"]]

    assert wait_until(lambda: held() != [])
    assert held() == [session.lease]
    assert session.lease != old
    session.close()


def test_openapi_describes_the_lease_routes(frontend: Sidecar) -> None:
    document = json.loads(frontend.control("GET", "/v1/openapi.json").content)
    assert {"/v1/leases", "/v1/leases/{lease}"} <= set(document["paths"])
    parameters = document["paths"]["/v1/instances"]["post"]["parameters"]
    assert [p["name"] for p in parameters] == ["lease"]
