"""What the clients send, built once for both: each call's method, path, body and headers.

Nothing here touches a socket. Every builder returns a `Call`, which a transport encodes,
writes, and hands the answer back to for decoding; the routes are docs/protocol.md, section 4.2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from .answers import Answer, JSONObject, decode_answer

DEFAULT_SOCKET = "/var/run/dynamo/health.sock"
SOCKET_ENV = "DYN_SIDECAR_SOCKET"
DEFAULT_TIMEOUT = 2.0

EndpointStatus = Literal["ready", "notready"]


def resolve_socket(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The socket to use: `path`, else `DYN_SIDECAR_SOCKET`, else the default path.

    An empty value counts as unset, as everywhere in Dynamo and the sidecar, so a chart that
    renders an empty variable does not point the worker at the current directory
    (docs/protocol.md, section 4.1).
    """
    if path is not None and os.fspath(path):
        return os.fspath(path)
    configured = (os.environ if environ is None else environ).get(SOCKET_ENV, "")
    return configured or DEFAULT_SOCKET


@dataclass(frozen=True)
class Call:
    """One request of the API, and how to read its answer.

    `if_retry_404` answers a 404 to a retry instead of raising it: a removal whose earlier
    attempt took effect finds nothing left (see `SidecarClient.remove_instances`).
    """

    method: str
    path: str
    body: bytes | None = None
    if_retry_404: JSONObject | None = None

    @property
    def request(self) -> str:
        """How errors name the request."""
        return f"{self.method} {self.path}"

    def encode(self) -> bytes:
        return encode_request(self.method, self.path, self.body)

    def decode(self, answer: Answer, socket_path: str, attempt: int) -> JSONObject:
        """The answer to attempt number `attempt` (1 for the first) as its JSON object."""
        if_404 = self.if_retry_404 if attempt > 1 else None
        return decode_answer(answer, self.request, socket_path, if_404)


def request_body(fields: Mapping[str, Any] | None) -> bytes | None:
    """Compact JSON for a request, or no body at all."""
    if fields is None:
        return None
    return json.dumps(fields, separators=(",", ":")).encode()


def pid_body(pid: int | None) -> bytes | None:
    """The optional `{"pid": N}` of a heartbeat or a session."""
    return None if pid is None else request_body({"pid": pid})


def quoted(value: str) -> str:
    """Quoted whole, so that any value reaches the sidecar, which alone decides if it is valid."""
    return quote(value, safe="")


def with_lease(path: str, lease: str | None) -> str:
    """`path`, owned by (or holding again) `lease` when one is given (docs/protocol.md, 4.7)."""
    return path if lease is None else f"{path}?lease={quoted(lease)}"


def set_endpoint(name: str, status: EndpointStatus) -> Call:
    return Call("PUT", f"/v1/endpoints/{quoted(name)}", request_body({"status": status}))


def register_instance(
    namespace: str,
    component: str,
    endpoint: str,
    instance_id: int,
    transport: Mapping[str, Any],
    model: bool | None,
    lease: str | None,
) -> Call:
    """`POST /v1/instances`; `model` is left out unless given, so the sidecar's default holds."""
    fields: JSONObject = {
        "namespace": namespace,
        "component": component,
        "endpoint": endpoint,
        "instance_id": instance_id,
        "transport": dict(transport),
    }
    if model is not None:
        fields["model"] = model
    return Call("POST", with_lease("/v1/instances", lease), request_body(fields))


def grant_lease(ttl_seconds: float | None) -> Call:
    body = None if ttl_seconds is None else request_body({"ttl_seconds": ttl_seconds})
    return Call("POST", "/v1/leases", body)


def renew_lease(lease: str) -> Call:
    return Call("PUT", f"/v1/leases/{quoted(lease)}")


def revoke_lease(lease: str) -> Call:
    """A retried revocation that finds the lease gone answers none removed."""
    gone: JSONObject = {"lease": lease, "removed": 0}
    return Call("DELETE", f"/v1/leases/{quoted(lease)}", if_retry_404=gone)


def remove_instances(instance_id: int) -> Call:
    """A retried removal that finds the instances gone answers none removed."""
    gone: JSONObject = {"instance_id": instance_id, "removed": 0}
    return Call("DELETE", f"/v1/instances/{quoted(str(instance_id))}", if_retry_404=gone)


def heartbeat(pid: int | None) -> Call:
    return Call("POST", "/v1/heartbeat", pid_body(pid))


def status() -> Call:
    return Call("GET", "/v1/status")


def worker() -> Call:
    return Call("GET", "/v1/worker")


def session_request(pid: int | None, lease: str | None) -> bytes:
    """The held `POST /v1/session` (docs/protocol.md, section 4.4): kept alive, since the
    connection itself is the worker's life."""
    path = with_lease("/v1/session", lease)
    return encode_request("POST", path, pid_body(pid), keep_alive=True)


def request_headers(body: bytes | None, keep_alive: bool = False) -> dict[str, str]:
    headers = {"Host": "sidecar", "Accept": "application/json"}
    if not keep_alive:
        headers["Connection"] = "close"
    if body is not None:
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
    return headers


def encode_request(method: str, path: str, body: bytes | None, keep_alive: bool = False) -> bytes:
    """The bytes of an HTTP/1.1 request, head and body."""
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request_headers(body, keep_alive).items()
    )
    return (head + "\r\n").encode("latin-1") + (body or b"")
