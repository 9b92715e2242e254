"""A stand-in for the Kubernetes API server: real HTTP (or HTTPS) on 127.0.0.1, in a thread.

It serves the calls the sidecar's reporter makes and checks each the way the real server does,
so a test that passes here sends what a cluster would accept:

- the route: verb and path against `POST .../events`, `PATCH .../events/{name}`, `GET` and
  `PATCH .../pods/{name}/status`; any other call is first authorized as RBAC sees it (a list,
  a delete, a read of the pod itself: 403 unless granted, as the real server answers), then
  answered 404 (another path) or 405 (another verb), where the real server would serve it;
- authentication: `Authorization: Bearer <token>` equal to the token file's content, read at
  every request so a rotated token is seen (401 otherwise);
- authorization: RBAC from the Roles, ClusterRoles and their bindings it is given (the test
  renders them from the chart) for the service account `system:serviceaccount:<ns>:<name>`:
  verb, API group, resource, subresource (`pods/status`, `pods/*`, `*/status`) and
  resourceNames, namespaced bindings only in their namespace; a request they do not allow gets
  403 with the real server's Status body and message;
- content types: `POST` takes `application/json`; `PATCH` takes `application/json-patch+json`,
  `application/merge-patch+json` or `application/strategic-merge-patch+json`, as the server
  does for built-in types (415 otherwise);
- bodies: JSON (400); an object whose `metadata.namespace` differs from the URL's (400); the
  created Event, and the object that results from applying a patch to the stored one, validated
  strictly with `kubernetes-validate` against the official schema of the version the test picks
  (422); besides the schema, what the server's validation checks that these calls touch:
  RFC 3339 times, an Event name usable as a path segment (core/v1 Events need not be DNS
  subdomains), `involvedObject.namespace` equal to the
  Event's namespace, condition types that are qualified names (the kubelet's own aside), one
  condition per type;
- state: a second Event of one name is 409 AlreadyExists, a patch of a missing Event 404; a
  status patch changes only `status` (the status strategy drops the rest), as the real one.

`tests/cluster/test_cluster_kube_fake.py` sends the same requests to the fake and to the real
kube-apiserver v1.34.4, with the chart's RBAC, and requires the same code and reason: the
routes and verbs above, the RBAC refusals (another namespace, a verb or resource not granted),
the content types, broken JSON, a namespace that differs from the URL's, an `involvedObject`
of another namespace, Event names, a second Event of one name, a patch of a missing one, the
count of a patched Event, a condition type that is no qualified name, and a wrong token. The
other judgements (times, duplicate condition types, what a status patch drops, token rotation,
ClusterRoles, `resourceNames` and wildcard rules) are not compared yet.

Modes, for the failure tests: `mode = "normal"`, `"slow"` (every answer waits `delay` seconds),
`"down"` (503 ServiceUnavailable, as behind a load balancer with no server), `"forbidden"`
(403 to everything after authentication); `refuse()` closes the listening socket and every open
connection (connection refused) until `accept()`. `FakeKubeApiProcess` runs it in a process of
its own, for the tests that time the event loop.

What it does NOT check: admission (webhooks, quotas, PodSecurity, LimitRanges);
`resourceVersion` and optimistic concurrency (no 409 Conflict on a stale update); managed
fields and server-side apply (`apply-patch+yaml` is refused with 415, where the server would
need a field manager); `$patch`/`$retainKeys`/`$setElementOrder` directives (refused with 400)
and strategic merge beyond maps, nulls and the lists merged by key listed in `MERGE_KEYS`;
JSON patch beyond add, remove, replace and test; it is stricter than the server on unknown
fields (rejected, where the default `fieldValidation=Warn` only warns) and on condition status
(True, False or Unknown, an API convention); field validation beyond the schema and the rules
above (e.g. the length of an Event's message); Event TTL and garbage collection; watch, list,
field selectors; API priority and fairness (no 429); authenticators other than the one token;
aggregated ClusterRoles and non-resource URLs; protobuf, CBOR and YAML bodies; HTTP/2.
"""

from __future__ import annotations

import contextlib
import copy
import json
import multiprocessing
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate

JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

# Lists that a strategic merge patch merges by a key (k8s.io/api core/v1 patchMergeKey).
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "containerStatuses"): "name",
    ("status", "initContainerStatuses"): "name",
    ("status", "ephemeralContainerStatuses"): "name",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
}
# Condition types the server takes without a qualified-name check.
SYSTEM_CONDITIONS = {"PodScheduled", "Ready", "Initialized"}

_EVENTS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/events")
_EVENT = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/events/(?P<name>[^/]+)")
_RESOURCE = re.compile(
    r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?"
)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_POD_STATUS = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/status")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


class Refusal(Exception):
    """A request the real server would refuse: the Status to answer with."""

    def __init__(self, code: int, reason: str, message: str, violation: bool = True) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        # A violation is the client's mistake; a refusal the test arranged (RBAC, modes) is not.
        self.violation = violation


@dataclass
class Request:
    """One request as the fake saw it, and its answer."""

    method: str
    path: str
    content_type: str
    body: Any
    status: int
    problem: str = ""


@dataclass(frozen=True)
class Tls:
    """A CA and a server certificate for 127.0.0.1 signed by it (files made by openssl)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def generate(cls, directory: Path) -> Tls:
        """Make them with the openssl command (raises FileNotFoundError without it)."""
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.crt", directory / "ca.key"
        cert, key, csr = directory / "tls.crt", directory / "tls.key", directory / "tls.csr"
        ext = directory / "ext.cnf"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ca_options = [
            *("-subj", "/CN=fake-kubernetes-ca", "-days", "2"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ]
        sign = ["-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", ext]
        commands = [
            ["openssl", "req", "-x509", *curve, "-keyout", ca_key, "-out", ca, *ca_options],
            ["openssl", "req", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver"],
            ["openssl", "x509", "-req", "-in", csr, "-out", cert, *sign],
        ]
        for command in commands:
            subprocess.run(
                [str(part) for part in command], check=True, capture_output=True, timeout=30
            )
        return cls(ca, cert, key)


class FakeKubeApi:
    """The fake API server. `events` (by name) and `pod` hold what was written; `requests` and
    `violations` what was asked and what the client got wrong; `condition_history` every
    `status.conditions` a status patch left."""

    def __init__(
        self,
        *,
        pod: Mapping[str, Any],
        token_file: Path,
        service_account: str,
        rbac: Iterable[Mapping[str, Any]],
        kubernetes_version: str,
        tls: Tls | None = None,
    ) -> None:
        self.pod: dict[str, Any] = copy.deepcopy(dict(pod))
        self.namespace: str = self.pod["metadata"]["namespace"]
        self.token_file = token_file
        self.user = f"system:serviceaccount:{self.namespace}:{service_account}"
        self.service_account = service_account
        self.kubernetes_version = kubernetes_version
        self.tls = tls
        self.roles: dict[tuple[str, str], dict[str, Any]] = {}
        self.bindings: list[dict[str, Any]] = []
        for obj in rbac:
            kind, meta = obj["kind"], obj["metadata"]
            if kind in ("Role", "ClusterRole"):
                self.roles[(kind, meta["name"])] = copy.deepcopy(dict(obj))
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                self.bindings.append(copy.deepcopy(dict(obj)))
        self.mode = "normal"
        self.delay = 0.0
        self.events: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.condition_history: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._version = 1

    # -- running ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> FakeKubeApi:
        self._listen()
        return self

    def close(self) -> None:
        self._closed.set()
        self.refuse()

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refuse(self) -> None:
        """Stop listening and cut every open connection: the next call is refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def accept(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._listen()

    def _listen(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="fake-kube", daemon=True
        )
        self._thread.start()

    # -- what tests read ----------------------------------------------------------------------

    def condition(self, condition_type: str) -> dict[str, Any] | None:
        with self._lock:
            for condition in self.pod.get("status", {}).get("conditions", []):
                if condition["type"] == condition_type:
                    return copy.deepcopy(dict(condition))
        return None

    def history(self, condition_type: str) -> list[dict[str, Any]]:
        """Each different value the condition took, in order."""
        values: list[dict[str, Any]] = []
        with self._lock:
            for conditions in self.condition_history:
                for condition in conditions:
                    if condition["type"] == condition_type and (
                        not values or values[-1] != condition
                    ):
                        values.append(copy.deepcopy(condition))
        return values

    def sorted_events(self) -> list[dict[str, Any]]:
        """Events by first timestamp, then name (the order they were first recorded in)."""
        with self._lock:
            events = [copy.deepcopy(e) for e in self.events.values()]
        return sorted(events, key=lambda e: (e["firstTimestamp"], e["metadata"]["name"]))

    def rules(self, kind: str, name: str) -> list[dict[str, Any]]:
        """The rules of a Role or ClusterRole, to change them in a test."""
        rules: list[dict[str, Any]] = self.roles[(kind, name)]["rules"]
        return rules

    # -- handling -----------------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any]]:
        path = urlsplit(target).path
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        record = Request(method, path, content_type, None, 0)
        try:
            if self.mode == "slow":
                self._closed.wait(self.delay)
            if self.mode == "down":
                raise Refusal(503, "ServiceUnavailable", "the server is down", violation=False)
            self._authenticate(headers.get("authorization", ""))
            code, answer = self._route(method, path, content_type, raw, record)
        except Refusal as refusal:
            code, answer = refusal.code, status_body(refusal.code, refusal.reason, refusal.message)
            record.problem = refusal.message
            if refusal.violation:
                with self._lock:
                    self.violations.append(f"{method} {path}: {refusal.message}")
        record.status = code
        with self._lock:
            self.requests.append(record)
        return code, answer

    def _authenticate(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        expected = self.token_file.read_text().strip()
        if scheme.lower() != "bearer" or not token or token.strip() != expected:
            raise Refusal(401, "Unauthorized", "Unauthorized")

    def _route(
        self, method: str, path: str, content_type: str, raw: bytes, record: Request
    ) -> tuple[int, dict[str, Any]]:
        # As the real server's filters do: authorize the request as RBAC sees it (verb, resource,
        # subresource, name) before any handler, so a verb or resource the Role does not grant
        # is 403 even where the fake serves nothing (checked against kube-apiserver v1.34).
        if match := _RESOURCE.fullmatch(path):
            # The handlers below then only route: every call they serve was authorized here.
            name, sub = match["name"] or "", match["sub"] or ""
            verb = _VERBS.get(method, method.lower())
            if verb == "get" and not name:
                verb = "list"
            self._authorize(verb, match["ns"], match["resource"], sub, name)
        if match := _EVENTS.fullmatch(path):
            ns, name, resource = match["ns"], "", "events"
            calls = {"POST": "create"}
        elif match := _EVENT.fullmatch(path):
            ns, name, resource = match["ns"], match["name"], "events"
            calls = {"PATCH": "patch"}
        elif match := _POD_STATUS.fullmatch(path):
            ns, name, resource = match["ns"], match["name"], "pods"
            calls = {"GET": "get", "PATCH": "patch"}
        else:
            raise Refusal(404, "NotFound", "the server could not find the requested resource")
        verb = calls.get(method)
        if verb is None:
            raise Refusal(
                405, "MethodNotAllowed", f"{method} is not a call the reporter makes on {path}"
            )
        body = None
        if method in ("POST", "PATCH"):
            allowed = (JSON,) if method == "POST" else PATCH_TYPES
            if content_type not in allowed:
                raise Refusal(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(allowed)}",
                )
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise Refusal(400, "BadRequest", f"the body is not JSON: {exc}") from None
            record.body = body
        with self._lock:
            if resource == "events" and verb == "create":
                return 201, self._create_event(ns, body)
            if resource == "events":
                return 200, self._patch_event(ns, name, content_type, body)
            if ns != self.namespace or name != self.pod["metadata"]["name"]:
                raise Refusal(404, "NotFound", f'pods "{name}" not found', violation=True)
            if verb == "get":
                return 200, copy.deepcopy(self.pod)
            return 200, self._patch_pod_status(content_type, body)

    def _authorize(self, verb: str, ns: str, resource: str, sub: str, name: str) -> None:
        if self.mode != "forbidden" and self._allowed(verb, ns, resource, sub, name):
            return
        shown = f"{resource}/{sub}" if sub else resource
        subject = f'{resource} "{name}"' if name else resource
        raise Refusal(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{shown}" in '
            f'API group "" in the namespace "{ns}"',
            violation=False,
        )

    def _allowed(self, verb: str, ns: str, resource: str, sub: str, name: str) -> bool:
        for binding in self.bindings:
            # Namespaced objects without a namespace are where they were applied: the pod's.
            here = binding["metadata"].get("namespace") or self.namespace
            if binding["kind"] == "RoleBinding" and here != ns:
                continue
            if not any(self._is_us(s, binding) for s in binding.get("subjects") or []):
                continue
            ref = binding["roleRef"]
            role = self.roles.get((ref["kind"], ref["name"]))
            if role is None or (
                ref["kind"] == "Role"
                and (role["metadata"].get("namespace") or self.namespace) != ns
            ):
                continue
            if any(_rule_allows(r, verb, resource, sub, name) for r in role.get("rules") or []):
                return True
        return False

    def _is_us(self, subject: Mapping[str, Any], binding: Mapping[str, Any]) -> bool:
        if subject.get("kind") == "ServiceAccount":
            namespace = (
                subject.get("namespace") or binding["metadata"].get("namespace") or self.namespace
            )
            return bool(subject.get("name") == self.service_account and namespace == self.namespace)
        if subject.get("kind") == "User":
            return bool(subject.get("name") == self.user)
        if subject.get("kind") == "Group":
            return subject.get("name") in (
                "system:serviceaccounts",
                f"system:serviceaccounts:{self.namespace}",
                "system:authenticated",
            )
        return False

    # -- events -------------------------------------------------------------------------------

    def _create_event(self, ns: str, body: Any) -> dict[str, Any]:
        event = _object(body, "Event")
        meta = event.setdefault("metadata", {})
        if meta.get("namespace", ns) != ns:
            raise Refusal(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        meta["namespace"] = ns
        name = meta.get("name", "")
        if not name:
            raise Refusal(
                422, "Invalid", "metadata.name: Required value: name or generateName is required"
            )
        if name in self.events:
            raise Refusal(409, "AlreadyExists", f'events "{name}" already exists', violation=False)
        meta.update(self._server_metadata())
        self._check_event(event, ns)
        self.events[name] = event
        return copy.deepcopy(event)

    def _patch_event(self, ns: str, name: str, content_type: str, patch: Any) -> dict[str, Any]:
        old = self.events.get(name) if ns == self.namespace else None
        if old is None:
            raise Refusal(404, "NotFound", f'events "{name}" not found', violation=False)
        new = apply_patch(old, patch, content_type, ())
        for field in ("name", "namespace", "uid"):
            if new.get("metadata", {}).get(field) != old["metadata"][field]:
                raise Refusal(422, "Invalid", f"metadata.{field}: field is immutable")
        if new.get("involvedObject") != old["involvedObject"]:
            raise Refusal(422, "Invalid", "involvedObject: field is immutable (in this fake)")
        new["metadata"]["resourceVersion"] = self._next_version()
        self._check_event(new, ns)
        self.events[name] = new
        return copy.deepcopy(new)

    def _check_event(self, event: dict[str, Any], ns: str) -> None:
        name = event["metadata"]["name"]
        # core/v1 Events need not have DNS-subdomain names (kube-apiserver v1.34 takes
        # "Cmp_4"); any object's name must still be usable as one segment of a path.
        if name in (".", "..") or "/" in name or "%" in name:
            raise Refusal(
                422, "Invalid", f"metadata.name: Invalid value: {name!r}: may not contain '/'"
            )
        involved = event.get("involvedObject") or {}
        if involved.get("namespace") != ns:
            raise Refusal(
                422,
                "Invalid",
                f"involvedObject.namespace: Invalid value: {involved.get('namespace')!r}: does "
                "not match event.namespace",
            )
        for field in ("firstTimestamp", "lastTimestamp"):
            _check_time(event.get(field), field)
        self._validate(event)

    # -- the pod's status ---------------------------------------------------------------------

    def _patch_pod_status(self, content_type: str, patch: Any) -> dict[str, Any]:
        patched = apply_patch(self.pod, patch, content_type, ())
        # The status strategy keeps everything but the status from the stored pod.
        new = copy.deepcopy(self.pod)
        new["status"] = patched.get("status") or {}
        conditions = new["status"].get("conditions") or []
        seen: set[str] = set()
        for n, condition in enumerate(conditions):
            kind = condition.get("type", "")
            if kind not in SYSTEM_CONDITIONS and not _qualified(kind):
                raise Refusal(
                    422,
                    "Invalid",
                    f"status.conditions[{n}].type: Invalid value: {kind!r}: must be a "
                    "qualified name",
                )
            if kind in seen:
                raise Refusal(422, "Invalid", f"status.conditions[{n}]: Duplicate value: {kind!r}")
            seen.add(kind)
            if condition.get("status") not in ("True", "False", "Unknown"):
                raise Refusal(
                    422,
                    "Invalid",
                    f"status.conditions[{n}].status: Unsupported value: "
                    f"{condition.get('status')!r}",
                )
            for field in ("lastTransitionTime", "lastProbeTime"):
                _check_time(condition.get(field), f"status.conditions[{n}].{field}")
        new["metadata"]["resourceVersion"] = self._next_version()
        self._validate(new)
        self.pod = new
        self.condition_history.append(copy.deepcopy(conditions))
        return copy.deepcopy(new)

    # -- shared -------------------------------------------------------------------------------

    def _validate(self, obj: dict[str, Any]) -> None:
        try:
            kubernetes_validate.validate(obj, self.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            first = str(exc).strip().splitlines()[0]
            raise Refusal(422, "Invalid", f"{obj['kind']} is invalid: {first}") from None

    def _server_metadata(self) -> dict[str, Any]:
        return {
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(),
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """The `Status` object the real server answers errors with."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _rule_allows(rule: Mapping[str, Any], verb: str, resource: str, sub: str, name: str) -> bool:
    verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
    resources, names = rule.get("resources") or [], rule.get("resourceNames") or []
    if verb not in verbs and "*" not in verbs:
        return False
    if "" not in groups and "*" not in groups:
        return False
    wanted = f"{resource}/{sub}" if sub else resource
    matches = {"*", wanted}
    if sub:
        matches |= {f"{resource}/*", f"*/{sub}"}
    if not matches & set(resources):
        return False
    return not names or (bool(name) and name in names)


def _object(body: Any, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Refusal(400, "BadRequest", f"the body is not a JSON object but {type(body).__name__}")
    if body.get("kind", kind) != kind or body.get("apiVersion", "v1") != "v1":
        raise Refusal(
            400,
            "BadRequest",
            f"the body is a {body.get('apiVersion')}/{body.get('kind')}, not a v1/{kind}",
        )
    obj = copy.deepcopy(body)
    obj["kind"], obj["apiVersion"] = kind, "v1"
    return obj


def _check_time(value: Any, field: str) -> None:
    if value is not None and not (isinstance(value, str) and _TIME.fullmatch(value)):
        raise Refusal(400, "BadRequest", f"{field}: {value!r} is not an RFC 3339 time")


def _qualified(text: str) -> bool:
    prefix, slash, name = text.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _NAME_PART.fullmatch(name) is not None


# -- patches ----------------------------------------------------------------------------------


def apply_patch(
    original: Mapping[str, Any], patch: Any, content_type: str, path: tuple[str, ...]
) -> dict[str, Any]:
    """The object after `patch`, as the server applies each content type."""
    if content_type == JSON_PATCH:
        return _json_patch(copy.deepcopy(dict(original)), patch)
    if not isinstance(patch, dict):
        raise Refusal(400, "BadRequest", "a merge patch must be a JSON object")
    if content_type == MERGE_PATCH:
        return _merge(copy.deepcopy(dict(original)), patch)
    return _strategic(copy.deepcopy(dict(original)), patch, path)


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            base = target.get(key)
            target[key] = _merge(base if isinstance(base, dict) else {}, value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _strategic(
    target: dict[str, Any], patch: Mapping[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    for key, value in patch.items():
        if key.startswith("$"):
            raise Refusal(400, "BadRequest", f"the fake does not apply the directive {key}")
        here = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            base = target.get(key)
            target[key] = _strategic(base if isinstance(base, dict) else {}, value, here)
        elif isinstance(value, list) and here in MERGE_KEYS:
            target[key] = _merge_list(target.get(key) or [], value, MERGE_KEYS[here], here)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _merge_list(
    original: list[Any], patch: list[Any], key: str, path: tuple[str, ...]
) -> list[Any]:
    merged = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise Refusal(400, "BadRequest", f"{'.'.join(path)}: an item has no merge key {key}")
        for n, existing in enumerate(merged):
            if isinstance(existing, dict) and existing.get(key) == item[key]:
                merged[n] = _strategic(existing, item, path)
                break
        else:
            merged.append(copy.deepcopy(item))  # appended as sent, nulls and all
    return merged


def _json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise Refusal(400, "BadRequest", "a JSON patch must be a list of operations")
    document: Any = target
    for op in operations:
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "test"):
            raise Refusal(400, "BadRequest", f"unsupported JSON patch operation {op!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            if op["op"] in ("add", "replace"):
                document = copy.deepcopy(op["value"])
            continue
        parent = document
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            last: Any = parts[-1]
            if isinstance(parent, list):
                last = len(parent) if last == "-" else int(last)
            if op["op"] == "test":
                if parent[last] != op["value"]:
                    raise Refusal(422, "Invalid", f"test failed at {op['path']}")
            elif op["op"] == "remove":
                del parent[last]
            elif op["op"] == "add" and isinstance(parent, list):
                parent.insert(last, copy.deepcopy(op["value"]))
            else:
                if op["op"] == "replace" and (
                    (isinstance(parent, dict) and last not in parent)
                    or (isinstance(parent, list) and not 0 <= last < len(parent))
                ):
                    raise Refusal(422, "Invalid", f"replace of a missing {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, ValueError, TypeError):
            raise Refusal(422, "Invalid", f"the path {op['path']} does not exist") from None
    if not isinstance(document, dict):
        raise Refusal(422, "Invalid", "the patched object is not an object")
    return document


# -- HTTP ---------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKubeApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on a slow answer is not an error here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.fake._lock:
            self.server.fake._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.fake._lock:
            self.server.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(OSError):  # ssl.SSLError is an OSError
            super().handle()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        code, answer = self.server.fake.handle(self.command, self.path, headers, raw)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeKubeApiProcess:
    """The fake in a process of its own, where the real server is: its threads then do not
    compete with the test's for the GIL, which matters to tests that time the event loop.
    Takes FakeKubeApi's arguments plus `mode` (and `refused`) and `delay`; on exit, `requests`
    and `violations` are copied back."""

    def __init__(self, *, mode: str = "normal", delay: float = 0.0, **options: Any) -> None:
        self.options, self.mode, self.delay = options, mode, delay
        self.url = ""
        self.requests: list[Request] = []
        self.violations: list[str] = []

    def __enter__(self) -> FakeKubeApiProcess:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_in_process,
            args=(self.options, self.mode, self.delay, child),
            name="fake-kube-api",
            daemon=True,
        )
        self._process.start()
        if not self._conn.poll(30):
            self._process.kill()
            raise RuntimeError("the fake API server process did not start")
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.send("stop")
            if self._conn.poll(10):
                self.requests, self.violations = self._conn.recv()
        finally:
            self._process.join(5)
            if self._process.is_alive():
                self._process.kill()


def _serve_in_process(options: dict[str, Any], mode: str, delay: float, conn: Any) -> None:
    fake = FakeKubeApi(**options).start()
    fake.mode, fake.delay = ("normal", 0.0) if mode == "refused" else (mode, delay)
    if mode == "refused":
        fake.refuse()
    conn.send(fake.url)
    conn.recv()
    fake.close()
    conn.send((fake.requests, fake.violations))


def wait_for(check: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `check()` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())
