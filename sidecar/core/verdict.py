"""What each probe path answers for a given state: a status code and the body's bytes.

Pure functions of the state and the clock, so the answers are tested without HTTP. The
bytes are Dynamo's fields as compact JSON with sorted keys (docs/protocol.md section 3;
Dynamo 1.6.1 does not sort them, section 10.1). Frontend mode speaks one of two shapes, chosen
by a setting: the one Dynamo's documentation and the seed give, or the one Dynamo 1.6.1's
frontend sends, key order included (section 3.6). The endpoint map and the instance list can
be large, so their JSON is cached by the state's version and only the uptime is formatted
per request.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.core.health import HealthState
from sidecar.core.records import Instance, Status

OK = 200
UNAVAILABLE = 503

FRONTEND_LIVE_BODY = b'{"message":"Service is live","status":"live"}'
# Dynamo 1.6.1's frontend: its key order, and a draining health path's own body.
FRONTEND_1_6_1_LIVE_BODY = b'{"status":"live","message":"Service is live"}'
FRONTEND_1_6_1_DRAINING_BODY = (
    b'{"status":"not_ready","stage":"draining","message":"Service is not ready"}'
)


class FrontendShape(enum.Enum):
    """Which frontend's bodies frontend mode speaks (docs/protocol.md section 3.6)."""

    DOCUMENTED = "documented"
    DYNAMO_1_6_1 = "dynamo-1.6.1"


@dataclass(frozen=True)
class Answer:
    code: int
    body: bytes


def dumps(value: object) -> bytes:
    """Dynamo's JSON: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def refusal_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of a refusal, with `Allow` sorted: Starlette joins a route's methods from a
    set, whose order follows each start's string hash seed, and one order on every start is
    what a client or a test can rely on."""
    found = dict(headers or {})
    if "Allow" in found:
        found["Allow"] = ", ".join(sorted(found["Allow"].split(", ")))
    return found


def uptime(state: HealthState, now: float) -> dict[str, int]:
    elapsed = max(0.0, now - state.started_at)
    secs = int(elapsed)
    return {"nanos": int((elapsed - secs) * 1_000_000_000), "secs": secs}


def dumps_in_order(value: object) -> bytes:
    """Dynamo 1.6.1's JSON (serde's): compact, keys in their order, UTF-8 unescaped."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def instance_json(instance: Instance) -> dict[str, object]:
    """An instance as served: the fields Dynamo's frontend names, and those the sidecar does
    not know, as given (Dynamo 1.6.1's `device_type`, `request_plane_codec`)."""
    return {
        **instance.extra,
        "component": instance.component,
        "endpoint": instance.endpoint,
        "instance_id": instance.instance_id,
        "namespace": instance.namespace,
        "transport": instance.transport,
    }


def instance_json_1_6_1(instance: Instance) -> dict[str, object]:
    """An instance in Dynamo 1.6.1's field order, the fields it does not name after them in
    the order given: a record posted as 1.6.1 sent it is served back byte for byte."""
    return {
        "component": instance.component,
        "endpoint": instance.endpoint,
        "namespace": instance.namespace,
        "instance_id": instance.instance_id,
        "transport": instance.transport,
        **instance.extra,
    }


def dynamo_order(instance: Instance) -> str:
    """Dynamo's `impl Ord for Instance`: by the string `ns/component/endpoint/id`, so ids
    compare as decimal strings and `backend-x` comes before `backend`."""
    return "/".join((*instance.key[:3], str(instance.instance_id)))


class Verdicts:
    """The answers of one state, with the costly JSON cached per state version."""

    def __init__(self, state: HealthState, shape: FrontendShape = FrontendShape.DOCUMENTED):
        self.state = state
        self.shape = shape
        self._endpoints_version = -1
        self._endpoints_json = b"{}"
        self._frontend_version = -1
        self._frontend_body = b""

    def worker_status(self) -> Status:
        """The status the health path reports: draining counts as not ready."""
        if self.state.draining:
            return Status.NOTREADY
        return self.state.status

    def health(self, now: float) -> Answer:
        """The health path and `/ready` in worker mode."""
        status = self.worker_status()
        code = OK if status is Status.READY else UNAVAILABLE
        return Answer(code, self._worker_body(status, now, {}))

    def live(self, now: float) -> Answer:
        """The live path in worker mode: the health body plus the live verdict."""
        live, reason = self.state.live()
        extra: dict[str, object] = {"live": live}
        if not live:
            extra["reason"] = reason
        return Answer(
            OK if live else UNAVAILABLE, self._worker_body(self.worker_status(), now, extra)
        )

    def frontend_health(self) -> Answer:
        """The health path and `/ready` in frontend mode: 200 unless draining."""
        if self._frontend_version != self.state.version:
            if self.shape is FrontendShape.DYNAMO_1_6_1:
                self._frontend_body = self._frontend_1_6_1()
            else:
                self._frontend_body = dumps(self._frontend_json())
            self._frontend_version = self.state.version
        return Answer(UNAVAILABLE if self.state.draining else OK, self._frontend_body)

    def frontend_live(self) -> Answer:
        """The live path in frontend mode: 200 until the frontend's life ends (its mirror,
        process watch or heartbeat found it dead or hung). Draining leaves it alone, as the
        worker's live path (docs/protocol.md section 10.7)."""
        live, reason = self.state.live()
        documented = self.shape is FrontendShape.DOCUMENTED
        if live:
            return Answer(OK, FRONTEND_LIVE_BODY if documented else FRONTEND_1_6_1_LIVE_BODY)
        if documented:
            return Answer(UNAVAILABLE, dumps({"message": reason, "status": "not_live"}))
        return Answer(UNAVAILABLE, dumps_in_order({"status": "not_live", "message": reason}))

    def _frontend_1_6_1(self) -> bytes:
        if self.state.draining:
            return FRONTEND_1_6_1_DRAINING_BODY
        instances = sorted(self.state.instances.values(), key=dynamo_order)
        return dumps_in_order(
            {
                "status": "healthy",
                "endpoints": sorted({i.url for i in instances}),
                "instances": [instance_json_1_6_1(i) for i in instances],
            }
        )

    def _frontend_json(self) -> dict[str, object]:
        instances = self.state.sorted_instances()
        if self.state.draining:
            return {
                "endpoints": _model_urls(instances),
                "instances": [instance_json(i) for i in instances],
                "message": "Service is shutting down",
                "status": "shutting_down",
            }
        if not instances:
            return {"instances": [], "message": "No endpoints available", "status": "unhealthy"}
        return {
            "endpoints": _model_urls(instances),
            "instances": [instance_json(i) for i in instances],
            "status": "healthy",
        }

    def _worker_body(self, status: Status, now: float, extra: dict[str, object]) -> bytes:
        # Keys sorted: draining, endpoints, live, reason, status, uptime.
        parts = [b"{"]
        if self.state.draining:
            parts.append(b'"draining":true,')
        parts += [b'"endpoints":', self._endpoints(), b","]
        for key, value in extra.items():
            parts += [dumps(key), b":", dumps(value), b","]
        parts += [b'"status":', dumps(status.value), b',"uptime":', dumps(uptime(self.state, now))]
        parts.append(b"}")
        return b"".join(parts)

    def _endpoints(self) -> bytes:
        if self._endpoints_version != self.state.version:
            statuses = {name: r.status.value for name, r in self.state.endpoints.items()}
            self._endpoints_json = dumps(statuses)
            self._endpoints_version = self.state.version
        return self._endpoints_json


def _model_urls(instances: list[Instance]) -> list[str]:
    # Dynamo lists the endpoints that serve a model, not every endpoint an instance has.
    return sorted({i.url for i in instances if i.model})
