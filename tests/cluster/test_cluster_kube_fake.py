"""tests/kube_fake.py checked against the real API server (issue 13).

The unit tests of Kubernetes reporting use the fake for speed. Here every kind of call it claims
to judge as the real server does (routes and verbs, RBAC refusals, content types, bodies, state)
is sent, with the same token and bytes, to the fake and to the real kube-apiserver v1.34.4, with
the chart's own ServiceAccount, Role and RoleBinding and the real pod the chart made. Both must
answer the same status code and the same `Status.reason`; a patched Event's `count`, the
correlation the sidecar's reporter relies on, must read back the same.
"""

from __future__ import annotations

import datetime
import json
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from cluster import binaries, cluster
from cluster.workload import Kube, standin_release

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kube_fake import FakeKubeApi

pytestmark = pytest.mark.cluster

KUBERNETES_MINOR = binaries.KUBERNETES_VERSION.removeprefix("v").rsplit(".", 1)[0]

STAMP = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
JSON = "application/json"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class Call:
    """One request, the same bytes to both servers. `{ns}` and `{pod}` are filled in."""

    name: str
    method: str
    path: str
    body: Any = None
    content_type: str = JSON
    token: str | None = None  # None: the ServiceAccount's


def event(name: str, ns: str = "{ns}", involved_ns: str = "{ns}") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "{pod}",
            "namespace": involved_ns,
            "uid": "{uid}",
        },
        "reason": "WorkerReady",
        "message": "compared",
        "type": "Normal",
        "source": {"component": "dynamo-health-sidecar"},
        "count": 1,
        "firstTimestamp": STAMP,
        "lastTimestamp": STAMP,
    }


def conditions(kind: str) -> dict[str, Any]:
    entry = {"type": kind, "status": "True", "lastTransitionTime": STAMP, "reason": "Compared"}
    return {"status": {"conditions": [entry]}}


EVENTS = "/api/v1/namespaces/{ns}/events"
STATUS = "/api/v1/namespaces/{ns}/pods/{pod}/status"
# In order: the later calls see what the earlier ones left.
CALLS = (
    Call("create an event", "POST", EVENTS, event("cmp.1")),
    Call("create it again", "POST", EVENTS, event("cmp.1")),
    Call(
        "raise its count",
        "PATCH",
        EVENTS + "/cmp.1",
        {"count": 2, "lastTimestamp": STAMP},
        STRATEGIC,
    ),
    Call("merge-patch its count", "PATCH", EVENTS + "/cmp.1", {"count": 3}, MERGE),
    Call(
        "json-patch its count",
        "PATCH",
        EVENTS + "/cmp.1",
        [{"op": "replace", "path": "/count", "value": 4}],
        JSON_PATCH,
    ),
    Call("patch a missing event", "PATCH", EVENTS + "/cmp.none", {"count": 2}, STRATEGIC),
    Call("patch with a text body", "PATCH", EVENTS + "/cmp.1", "count=2", "text/plain"),
    Call("create from broken JSON", "POST", EVENTS, "{", JSON),
    Call("create in another namespace than the URL's", "POST", EVENTS, event("cmp.2", ns="other")),
    Call(
        "create about a pod of another namespace",
        "POST",
        EVENTS,
        event("cmp.3", involved_ns="default"),
    ),
    Call("create with a name that is no DNS subdomain", "POST", EVENTS, event("Cmp_4")),
    Call("create with a slash in its name", "POST", EVENTS, event("cmp/6")),
    Call("create named ..", "POST", EVENTS, event("..")),
    Call(
        "create in a namespace the Role does not cover",
        "POST",
        "/api/v1/namespaces/default/events",
        event("cmp.5", ns="default"),
    ),
    Call("delete an event (verb not granted)", "DELETE", EVENTS + "/cmp.1"),
    Call("list events (verb not granted)", "GET", EVENTS),
    Call("read the pod (only its status is granted)", "GET", "/api/v1/namespaces/{ns}/pods/{pod}"),
    Call("read the pod's status", "GET", STATUS),
    Call("set a condition", "PATCH", STATUS, conditions("example.com/compared"), STRATEGIC),
    Call(
        "set a condition that is no qualified name",
        "PATCH",
        STATUS,
        conditions("not qualified!"),
        STRATEGIC,
    ),
    Call("call with a wrong token", "GET", STATUS, token="not-a-token"),
)


def fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in names.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    return value


@dataclass
class Answer:
    code: int
    reason: str
    count: int | None


def send(http: httpx.Client, call: Call, names: dict[str, str], token: str) -> Answer:
    body = fill(call.body, names)
    content = body if isinstance(body, str) else None if body is None else json.dumps(body)
    answer = http.request(
        call.method,
        fill(call.path, names),
        content=content,
        headers={
            "Authorization": f"Bearer {call.token or token}",
            "Content-Type": call.content_type,
        },
    )
    try:
        parsed = answer.json()
    except ValueError:
        parsed = {}
    reason = parsed.get("reason", "") if parsed.get("kind") == "Status" else ""
    count = parsed.get("count") if parsed.get("kind") == "Event" else None
    return Answer(answer.status_code, reason, count)


def to_dict(kube: Kube, obj: Any) -> dict[str, Any]:
    return kube.api.sanitize_for_serialization(obj)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def answers(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    """Each call's answer from the real server and from the fake, in CALLS order."""
    with kube.namespace("kube-fake") as namespace:
        release = standin_release(
            kube, namespace, {"sidecar": {"kubeReporting": {"enabled": True}}}
        )
        pod = release.pod()
        account = pod.spec.service_account_name
        token = kube.core.create_namespaced_service_account_token(
            account,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        ).status.token
        token_file = tmp_path_factory.mktemp("kube-fake") / "token"
        token_file.write_text(token)
        rbac = [
            to_dict(kube, r) | {"kind": "Role"}
            for r in kube.rbac.list_namespaced_role(namespace).items
        ]
        rbac += [
            to_dict(kube, b) | {"kind": "RoleBinding"}
            for b in kube.rbac.list_namespaced_role_binding(namespace).items
        ]
        names = {"ns": namespace, "pod": pod.metadata.name, "uid": pod.metadata.uid}
        fake = FakeKubeApi(
            pod=to_dict(kube, pod) | {"apiVersion": "v1", "kind": "Pod"},
            token_file=token_file,
            service_account=account,
            rbac=rbac,
            # The schema of the real server's minor release.
            kubernetes_version=KUBERNETES_MINOR + ".0",
        )
        tls = ssl.create_default_context(cafile=str(cluster.ca().path("ca.crt")))
        real_url = f"https://127.0.0.1:{cluster.host_api_port()}"
        with (
            fake,
            httpx.Client(base_url=real_url, verify=tls, timeout=10) as real_http,
            httpx.Client(base_url=fake.url, timeout=10) as fake_http,
        ):
            yield {
                call.name: (
                    send(real_http, call, names, token),
                    send(fake_http, call, names, token),
                )
                for call in CALLS
            }


@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_fake_answers_as_the_real_api_server(answers: dict[str, tuple], call: Call) -> None:
    real, fake = answers[call.name]
    assert (fake.code, fake.reason, fake.count) == (real.code, real.reason, real.count)
