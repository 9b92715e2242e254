"""The bytes each call of the client sends, built without a socket (`sidecar.client.calls`).

Both transports write exactly these bytes, so what is checked here holds for the sync and the
asyncio clients alike (docs/protocol.md, section 4.2).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.client import SidecarRejected, calls

MAX_ID = 2**64 - 1
CLOSE_HEAD = "Host: sidecar\r\nAccept: application/json\r\nConnection: close\r\n"


def json_head(body: bytes) -> str:
    return f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"


def body_of(call: calls.Call) -> Any:
    assert call.body is not None
    return json.loads(call.body)


def test_client_request_with_a_body_is_json_with_its_length() -> None:
    body = b'{"status":"ready"}'
    expected = f"PUT /v1/endpoints/generate HTTP/1.1\r\n{CLOSE_HEAD}{json_head(body)}\r\n"
    assert calls.set_endpoint("generate", "ready").encode() == expected.encode() + body


def test_client_request_without_a_body_has_no_content_headers() -> None:
    expected = f"GET /v1/status HTTP/1.1\r\n{CLOSE_HEAD}\r\n"
    assert calls.status().encode() == expected.encode()


def test_client_request_quotes_a_name_whole() -> None:
    assert calls.set_endpoint("bad name!/../x", "notready").path == (
        "/v1/endpoints/bad%20name%21%2F..%2Fx"
    )


def test_client_request_body_is_compact_json() -> None:
    assert calls.set_endpoint("generate", "notready").body == b'{"status":"notready"}'


def test_client_register_instance_sends_the_id_as_an_exact_integer() -> None:
    call = calls.register_instance("dynamo", "backend", "generate", MAX_ID, {"t": 1}, None, None)
    assert call.body is not None
    assert b'"instance_id":18446744073709551615,' in call.body
    assert (call.method, call.path) == ("POST", "/v1/instances")


def test_client_register_instance_leaves_model_out_unless_given() -> None:
    unset = calls.register_instance("d", "b", "generate", 1, {}, None, None)
    off = calls.register_instance("d", "b", "clear_kv_blocks", 1, {}, False, None)
    assert "model" not in body_of(unset)
    assert body_of(off) == {
        "namespace": "d",
        "component": "b",
        "endpoint": "clear_kv_blocks",
        "instance_id": 1,
        "transport": {},
        "model": False,
    }


def test_client_register_instance_with_a_lease_names_it_in_the_query() -> None:
    call = calls.register_instance("d", "b", "g", 1, {}, None, "9f1c 0e4a")
    assert call.path == "/v1/instances?lease=9f1c%200e4a"


def test_client_grant_lease_sends_a_ttl_only_when_given() -> None:
    assert calls.grant_lease(None) == calls.Call("POST", "/v1/leases")
    assert body_of(calls.grant_lease(2.5)) == {"ttl_seconds": 2.5}


def test_client_renew_and_revoke_name_the_lease_in_the_path() -> None:
    assert calls.renew_lease("00ff").request == "PUT /v1/leases/00ff"
    assert calls.revoke_lease("00ff").request == "DELETE /v1/leases/00ff"


def test_client_heartbeat_sends_a_pid_only_when_given() -> None:
    assert calls.heartbeat(None).body is None
    assert calls.heartbeat(4242).body == b'{"pid":4242}'


def test_client_reads_are_gets_without_a_body() -> None:
    assert calls.worker() == calls.Call("GET", "/v1/worker")


def test_client_session_request_keeps_the_connection_alive() -> None:
    expected = b"POST /v1/session HTTP/1.1\r\nHost: sidecar\r\nAccept: application/json\r\n\r\n"
    assert calls.session_request(None, None) == expected


def test_client_session_request_holds_its_lease_again_with_the_pid() -> None:
    request = calls.session_request(7, "00ff")
    assert request.startswith(b"POST /v1/session?lease=00ff HTTP/1.1\r\n")
    assert request.endswith(b'Content-Length: 9\r\n\r\n{"pid":7}')


ANSWER_404 = (404, {}, b'{"error":"no instance has instance_id 7"}')


def test_client_removal_rejects_a_404_to_its_first_attempt() -> None:
    with pytest.raises(SidecarRejected) as caught:
        calls.remove_instances(7).decode(ANSWER_404, "/s", attempt=1)
    assert caught.value.request == "DELETE /v1/instances/7"


def test_client_removal_takes_a_404_to_a_retry_as_none_removed() -> None:
    gone = calls.remove_instances(7).decode(ANSWER_404, "/s", attempt=2)
    assert gone == {"instance_id": 7, "removed": 0}


def test_client_revocation_takes_a_404_to_a_retry_as_none_revoked() -> None:
    gone = calls.revoke_lease("00ff").decode(ANSWER_404, "/s", attempt=3)
    assert gone == {"lease": "00ff", "removed": 0}


def test_client_other_calls_reject_a_404_to_a_retry() -> None:
    with pytest.raises(SidecarRejected):
        calls.renew_lease("00ff").decode(ANSWER_404, "/s", attempt=2)
