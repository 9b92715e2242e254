"""Kubernetes reporting (`DYN_SIDECAR_KUBE`): events on the pod and a readiness-gate condition.

Every transition of the health state becomes zero or more *reports*: an Event on the pod
(core/v1, what `kubectl describe pod` lists under Events) and the desired state of one pod
condition (patched on `pods/status`, so `spec.readinessGates` can wait for it). The probe path
never waits for the API: `KubeReporter.on_transition` runs on the event loop, does a few
microseconds of work (describe, correlate, append to a bounded queue) and returns; one daemon
thread sends the reports with per-call timeouts, retries with exponential backoff and full
jitter, and drops the oldest report when the queue is full. A slow, unreachable or forbidding
API server costs the loop nothing and the process a fixed amount of memory.

Events are core/v1 (`create_namespaced_event`, `patch_namespaced_event`), as the kubelet's
own recorder writes them: `kubectl describe pod` lists them beside the kubelet's ("Liveness
probe failed ... 503") with the same `count`, `firstTimestamp` and `lastTimestamp` that make
its "3m (x4 over 20m)"; events.k8s.io/v1 would store the same objects but count in
`series`, need `eventTime`, and an RBAC rule on another API group.

Repeated events are correlated as client-go's `EventCorrelator` does for the kubelet
(`tools/record/events_cache.go`): an identical event raises `count` and `lastTimestamp` of
the Event already there (a strategic merge patch) instead of creating another; from the 10th
distinct message of one reason and type within 10 minutes of each other, they go into one
"(combined from similar events): ..." Event; and one pod gets a burst of 25 events, then one
every 5 minutes (a token bucket). Like the kubelet's, the counts go on rising while the spam
filter holds events back, so the next one that is sent carries the true count.

The `kubernetes` package is imported only by `official_api`, that is only when reporting is
on: importing this module costs nothing more than the standard library.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import importlib.util
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from sidecar.core.health import EndCause, HealthState, Status, Subject, Transition

logger = logging.getLogger("dynamo_health_sidecar")

COMPONENT = "dynamo-health-sidecar"
DEFAULT_CONDITION = "dynamo-health-sidecar.io/worker-ready"
DEFAULT_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CLIENT_MISSING = "the kubernetes Python package (pip install 'dynamo-health-sidecar[kube]')"
POD_VARIABLES = ("POD_NAME", "POD_NAMESPACE", "POD_UID")
SERVICE_VARIABLES = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")

NORMAL = "Normal"
WARNING = "Warning"

# Reports waiting for the API; the oldest is dropped past this.
DEFAULT_QUEUE_SIZE = 128
# Seconds one API call may take (connect and each read), and the connect part of it.
CALL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
# An event is sent at most this many times when the API keeps failing; the condition is
# retried until it is sent or replaced by a newer one.
EVENT_ATTEMPTS = 5
# Messages are cut here (events.k8s.io's limit for a note; core/v1 has none but etcd's).
MAX_MESSAGE = 1024
# The kubelet's own conditions: a sidecar must not fight it over them.
KUBELET_CONDITIONS = frozenset(
    {
        "PodScheduled",
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "DisruptionTarget",
        "PodResizePending",
        "PodResizeInProgress",
    }
)

# client-go's EventCorrelator defaults (tools/record/events_cache.go).
LRU_CACHE_ENTRIES = 4096
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL_SECONDS = 600.0
SPAM_BURST = 25
SPAM_RATE = 1.0 / 300.0
COMBINED_PREFIX = "(combined from similar events): "

_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


# -- where the pod and the API server are ---------------------------------------------------


@dataclass(frozen=True)
class PodRef:
    """The pod the sidecar runs in, from the Downward API."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class InCluster:
    """What the pod's environment says about its identity and the API server, and what it lacks.

    `missing` names each absent thing the way a person would look for it: a variable name or
    a file path. Reporting can run exactly when nothing is missing.
    """

    pod: PodRef | None
    api_url: str | None
    token_path: Path
    ca_path: Path
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    def describe_missing(self) -> str:
        """`POD_UID and /var/run/.../token are missing` (or `... is missing`)."""
        verb = "is" if len(self.missing) == 1 else "are"
        return f"{_join(self.missing, limit=len(self.missing))} {verb} missing"


def client_installed() -> bool:
    """Whether the `kubernetes` package can be imported (found, not imported)."""
    return importlib.util.find_spec("kubernetes") is not None


def find_in_cluster(
    environ: Mapping[str, str],
    service_account_dir: Path = DEFAULT_SERVICE_ACCOUNT_DIR,
    api_url: str | None = None,
    installed: Callable[[], bool] = client_installed,
) -> InCluster:
    """The pod (POD_NAME, POD_NAMESPACE, POD_UID) and the API server (KUBERNETES_SERVICE_HOST
    and _PORT over https, or `api_url`) with the service account's token, the CA for https,
    and the `kubernetes` package to talk to it.

    An empty variable counts as unset. Reads nothing but the two files' existence.
    """
    missing: list[str] = []
    if not installed():
        missing.append(CLIENT_MISSING)
    values = {name: environ.get(name, "") for name in (*POD_VARIABLES, *SERVICE_VARIABLES)}
    missing.extend(name for name in POD_VARIABLES if not values[name])
    pod = None
    if not any(not values[name] for name in POD_VARIABLES):
        pod = PodRef(values["POD_NAME"], values["POD_NAMESPACE"], values["POD_UID"])
    url = api_url
    if url is None:
        host, port = values["KUBERNETES_SERVICE_HOST"], values["KUBERNETES_SERVICE_PORT"]
        missing.extend(name for name in SERVICE_VARIABLES if not values[name])
        if host and port:
            if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
                missing.append(f"a valid KUBERNETES_SERVICE_PORT (not {port[:40]!r})")
            else:
                shown = f"[{host}]" if ":" in host else host
                url = f"https://{shown}:{int(port)}"
    token_path = service_account_dir / "token"
    ca_path = service_account_dir / "ca.crt"
    if not _is_file(token_path):
        missing.append(str(token_path))
    if (url is None or url.startswith("https:")) and not _is_file(ca_path):
        missing.append(str(ca_path))
    return InCluster(pod, url, token_path, ca_path, tuple(missing))


def _is_file(path: Path) -> bool:
    """Whether the file is there; a path the system cannot even look up (too long) is not."""
    try:
        return path.is_file()
    except OSError:
        return False


def refusal(source: str, text: str, found: InCluster) -> str:
    """The line `DYN_SIDECAR_KUBE=on` exits with (code 2) when something is missing."""
    return (
        f"{source}={text!r} needs the pod's Downward API variables, its service account and "
        "the kubernetes package, "
        f"but {found.describe_missing()}: set them (the chart does with "
        "sidecar.kubeReporting.enabled) or use auto or off"
    )


def check_api_url(source: str, text: str) -> str | None:
    """The error line for `DYN_SIDECAR_KUBE_API_URL`, or None when `text` is a usable URL."""
    allowed = (
        "it must be the http:// or https:// URL of the API server, with a host and no path, "
        "query or credentials, such as https://10.96.0.1:443"
    )
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or 1 <= parts.port <= 65535
    except ValueError:
        return f"{source}={text!r} is invalid: {allowed}"
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or any(c.isspace() for c in text)
    ):
        return f"{source}={text!r} is invalid: {allowed}"
    return None


def check_service_account_dir(source: str, text: str) -> str | None:
    """The error line for `DYN_SIDECAR_KUBE_SERVICE_ACCOUNT_DIR`, or None when it is usable."""
    if not text.startswith("/") or "\0" in text:
        return (
            f"{source}={text!r} is invalid: it must be the absolute path of the directory "
            f"holding the service account's token and ca.crt, such as "
            f"{DEFAULT_SERVICE_ACCOUNT_DIR}"
        )
    return None


def check_condition_type(source: str, text: str) -> str | None:
    """The error line for `DYN_SIDECAR_KUBE_CONDITION`, or None for a usable condition type."""
    if text in KUBELET_CONDITIONS:
        return (
            f"{source}={text!r} is invalid: that condition is the kubelet's own; use a type "
            f"of your own domain, such as {DEFAULT_CONDITION}"
        )
    if not is_qualified_name(text):
        return (
            f"{source}={text!r} is invalid: it must be a Kubernetes qualified name: an "
            "optional DNS subdomain and '/', then 1 to 63 letters, digits, '-', '_' or '.' "
            f"that begin and end with a letter or digit, such as {DEFAULT_CONDITION}"
        )
    return None


def is_qualified_name(text: str) -> bool:
    """Kubernetes' `IsQualifiedName`: what a condition type and a readiness gate accept."""
    prefix, slash, name = text.rpartition("/")
    if slash and (
        not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix) or "/" in prefix
    ):
        return False
    return 0 < len(name) <= 63 and _NAME_PART.fullmatch(name) is not None


# -- the API, as the reporter needs it ------------------------------------------------------


class KubeApiError(Exception):
    """An API call failed: `status` is the HTTP status, None when no answer came."""

    def __init__(self, status: int | None, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """No answer, a timeout, throttling or a server error: the same call may work later."""
        return self.status is None or self.status in (408, 429) or self.status >= 500

    def __str__(self) -> str:
        message = super().__str__()
        return message if self.status is None else f"{self.status}: {message}"


class KubeApi(Protocol):
    """The four calls the reporter makes. Each raises `KubeApiError` when it fails."""

    def create_event(self, namespace: str, body: Mapping[str, Any], timeout: float) -> None: ...

    def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float
    ) -> None: ...

    def read_pod_status(self, namespace: str, name: str, timeout: float) -> Mapping[str, Any]: ...

    def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float
    ) -> None: ...


def official_api(found: InCluster, user_agent: str = COMPONENT) -> KubeApi:
    """The calls, made by the official `kubernetes` client (imported here, and only here)."""
    if found.api_url is None:
        raise ValueError(f"no API server to talk to: {found.describe_missing()}")
    return _OfficialApi(found.api_url, found.token_path, found.ca_path, user_agent)


class _OfficialApi:
    """`kubernetes.client.CoreV1Api` without its own retries, re-reading the token every minute
    (bound service account tokens rotate), answers read as raw JSON (no model classes)."""

    TOKEN_REFRESH_SECONDS = 60.0

    def __init__(self, api_url: str, token_path: Path, ca_path: Path, user_agent: str) -> None:
        import urllib3
        from kubernetes import client  # type: ignore[import-untyped]

        configuration = client.Configuration()
        configuration.host = api_url.rstrip("/")
        # Retries (and their sleeps) are the reporter's, with its backoff; none hidden here.
        configuration.retries = False
        if api_url.startswith("https:"):
            configuration.ssl_ca_cert = str(ca_path)
        # As the client's own in-cluster loader: the whole header value under "authorization"
        # (no api_key_prefix, which v36 looks up under another name). The client sends a token
        # only when the key exists; the hook fills it in before every call.
        configuration.api_key["authorization"] = ""
        self._token_path = token_path
        self._token = ""
        self._token_read_at = -self.TOKEN_REFRESH_SECONDS
        configuration.refresh_api_key_hook = self._refresh_token
        api_client = client.ApiClient(configuration)
        api_client.user_agent = user_agent
        self._core = client.CoreV1Api(api_client)
        self._api_exception: type[Exception] = client.ApiException
        self._transport_errors: tuple[type[Exception], ...] = (
            urllib3.exceptions.HTTPError,
            OSError,
        )

    def _refresh_token(self, configuration: Any) -> None:
        now = time.monotonic()
        if now - self._token_read_at >= self.TOKEN_REFRESH_SECONDS or not self._token:
            try:
                self._token = self._token_path.read_text().strip()
            except OSError as exc:
                raise KubeApiError(
                    None, f"cannot read the token {self._token_path}: {exc}"
                ) from None
            self._token_read_at = now
        configuration.api_key["authorization"] = f"Bearer {self._token}"

    def create_event(self, namespace: str, body: Mapping[str, Any], timeout: float) -> None:
        self._call(self._core.create_namespaced_event, timeout, namespace, dict(body))

    def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float
    ) -> None:
        # A dict body is sent as application/strategic-merge-patch+json, as client-go does.
        self._call(self._core.patch_namespaced_event, timeout, name, namespace, dict(patch))

    def read_pod_status(self, namespace: str, name: str, timeout: float) -> Mapping[str, Any]:
        data = self._call(self._core.read_namespaced_pod_status, timeout, name, namespace)
        try:
            pod = json.loads(data)
        except ValueError as exc:
            raise KubeApiError(None, f"the pod's status is not JSON: {exc}") from None
        if not isinstance(pod, dict):
            raise KubeApiError(None, "the pod's status is not a JSON object")
        return pod

    def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float
    ) -> None:
        self._call(self._core.patch_namespaced_pod_status, timeout, name, namespace, dict(patch))

    def _call(self, method: Callable[..., Any], timeout: float, *args: Any) -> bytes:
        try:
            response = method(
                *args,
                _request_timeout=(min(CONNECT_TIMEOUT, timeout), timeout),
                _preload_content=False,
            )
            try:
                data: bytes = response.data
            finally:
                response.release_conn()
            return data
        except KubeApiError:
            raise
        except self._api_exception as exc:
            raise _api_error(exc) from None
        except self._transport_errors as exc:
            raise KubeApiError(None, f"{type(exc).__name__}: {exc}") from None


def _api_error(exc: Any) -> KubeApiError:
    status = getattr(exc, "status", None) or None  # 0: an SSL error, no answer
    body = getattr(exc, "body", None)
    message = str(getattr(exc, "reason", "") or "")
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        document = json.loads(body or b"")
        message = str(document.get("message") or message)
    headers = getattr(exc, "headers", None) or {}
    retry_after = None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        asked = headers.get("Retry-After")
        retry_after = float(asked) if isinstance(asked, str) else None
    return KubeApiError(status, message or "no message", retry_after)


# -- transitions into reports ---------------------------------------------------------------


@dataclass(frozen=True)
class EventSpec:
    """An event to record on the pod, before correlation."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class ConditionSpec:
    """The pod condition's desired status, reason and message."""

    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Report:
    """What one transition means for Kubernetes: events, and maybe a new condition."""

    events: tuple[EventSpec, ...] = ()
    condition: ConditionSpec | None = None


def describe(t: Transition, state: HealthState | None = None) -> Report:
    """The events and condition a transition calls for. Pure: reads `state`, changes nothing.

    `state` (the one that published `t`) adds what a transition does not carry: the required
    endpoints, which of them hold readiness back, how long the life has lasted.
    """
    if t.subject is Subject.ENDPOINT:
        return _describe_endpoint(t)
    if t.subject is Subject.WORKER:
        return _describe_worker(t, state)
    if t.subject is Subject.LIFE:
        return _describe_life(t, state)
    if t.subject is Subject.DRAIN:
        spec = EventSpec(
            NORMAL,
            "Draining",
            "Sidecar is draining after a stop signal: the pod is not ready from now on, and the "
            "worker stays live until it exits or the drain time ends",
        )
        return Report((spec,), ConditionSpec(False, "Draining", spec.message))
    return Report()


def current_condition(state: HealthState) -> ConditionSpec:
    """The condition the state calls for now (at start, and after a restore)."""
    life = state.life
    if state.draining:
        return ConditionSpec(False, "Draining", "Sidecar is draining after a stop signal")
    if not state.alive:
        return ConditionSpec(
            False,
            END_REASONS[life.end_cause],
            f"Worker life {life.number} ended: {life.end_reason}",
        )
    if state.status is Status.READY:
        return ConditionSpec(
            True, "WorkerReady", f"Worker life {life.number} is ready: {_why_ready(state)}"
        )
    return ConditionSpec(
        False,
        "WorkerStarting",
        f"Worker life {life.number} is not ready yet: {_why_not_ready(state)}",
    )


# The event reason of each end of a life; a cause a file did not keep counts as an exit.
END_REASONS = {
    None: "WorkerExited",
    EndCause.EXITED: "WorkerExited",
    EndCause.HEARTBEAT_MISSED: "HeartbeatMissed",
    EndCause.UNRESPONSIVE: "WorkerUnresponsive",
}


def format_duration(seconds: float) -> str:
    """`41.2s` under a minute, then Go's style: `12m5s`, `2h3m4s`."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def _describe_endpoint(t: Transition) -> Report:
    # Why, when the state machine knows it: a canary, a status server that went silent.
    why = f": {t.reason}" if t.reason else ""
    if t.new == Status.READY.value:
        message = f"Endpoint {t.name} is ready after {format_duration(t.after)}{why}"
        return Report((EventSpec(NORMAL, "EndpointReady", message),))
    duration = format_duration(t.after)
    message = f"Endpoint {t.name} is not ready any more, after {duration} ready{why}"
    return Report((EventSpec(WARNING, "EndpointNotReady", message),))


def _describe_worker(t: Transition, state: HealthState | None) -> Report:
    life = f"Worker life {state.life.number}" if state is not None else "Worker"
    if t.new == Status.READY.value:
        if state is not None:
            since = t.at - state.life.began_at
            message = (
                f"{life} is ready {format_duration(since)} after it began: {_why_ready(state)}"
            )
        else:
            message = f"Worker is ready after {format_duration(t.after)}"
        spec = EventSpec(NORMAL, "WorkerReady", message)
        return Report((spec,), ConditionSpec(True, "WorkerReady", message))
    if state is not None and not state.alive:
        # The life's end has its own event; the condition says why the worker is not ready.
        ended = state.life
        message = f"Worker life {ended.number} ended: {ended.end_reason}"
        return Report((), ConditionSpec(False, END_REASONS[ended.end_cause], message))
    message = f"{life} is not ready any more, after {format_duration(t.after)} ready"
    if state is not None:
        message = f"{message}: {_why_not_ready(state)}"
    spec = EventSpec(WARNING, "WorkerNotReady", message)
    return Report((spec,), ConditionSpec(False, "WorkerNotReady", message))


def _describe_life(t: Transition, state: HealthState | None) -> Report:
    name = t.name[:1].upper() + t.name[1:]  # "Worker life 2"
    if t.old == "saved":
        if t.new == "alive":
            message = f"Sidecar restarted and continues {t.name} from its state file"
        else:
            ended = f" ({state.life.end_reason})" if state is not None else ""
            message = (
                f"Sidecar restarted; its state file says {t.name} had ended{ended}; the next "
                "signal from the worker begins a new life"
            )
        condition = current_condition(state) if state is not None else None
        return Report((EventSpec(NORMAL, "StateRestored", message),), condition)
    if t.new == "ended":
        reason = END_REASONS[t.cause]
        message = (
            f"{name} ended after {format_duration(t.after)}: {t.reason}; the live path fails "
            "until a new life begins"
        )
        spec = EventSpec(WARNING, reason, message)
        return Report((spec,), ConditionSpec(False, reason, f"{name} ended: {t.reason}"))
    # A new life began: the worker came back (or a new process replaced it).
    message = f"{name} began {format_duration(t.after)} after the previous life ended"
    spec = EventSpec(NORMAL, "WorkerRestarted", message)
    condition = None
    if state is not None and state.status is not Status.READY:
        condition = ConditionSpec(
            False, "WorkerStarting", f"{name} began; not ready yet: {_why_not_ready(state)}"
        )
    return Report((spec,), condition)


def _why_ready(state: HealthState) -> str:
    required = state.required
    if required:
        noun = "endpoint" if len(required) == 1 else "endpoints"
        verb = "is" if len(required) == 1 else "are"
        return f"required {noun} {_join(required)} {verb} ready"
    if state.endpoints:
        ready = [name for name, record in state.endpoints.items() if record.status is Status.READY]
        return f"every endpoint it announced is ready ({_join(ready)})"
    if state.life.declared is Status.READY:
        return "it declared itself ready (sd_notify READY=1)"
    return "the starting status is ready"


def _why_not_ready(state: HealthState) -> str:
    required = state.required
    if required:
        waiting = [
            name
            for name in required
            if (record := state.endpoints.get(name)) is None or record.status is not Status.READY
        ]
        noun = "endpoint" if len(waiting) == 1 else "endpoints"
        verb = "is" if len(waiting) == 1 else "are"
        return f"required {noun} {_join(waiting)} {verb} not ready"
    waiting = [n for n, record in state.endpoints.items() if record.status is not Status.READY]
    if waiting:
        noun = "endpoint" if len(waiting) == 1 else "endpoints"
        verb = "is" if len(waiting) == 1 else "are"
        return f"{noun} {_join(waiting)} {verb} not ready"
    if state.life.declared is Status.NOTREADY:
        return "it declared itself stopping (sd_notify STOPPING=1)"
    return "it has announced no endpoint yet"


def _join(names: Iterable[str], limit: int = 5) -> str:
    """`a`, `a and b`, `a, b and c`, `a, b, c, d, e and 3 more`."""
    items = list(names)
    if len(items) > limit:
        return f"{', '.join(items[:limit])} and {len(items) - limit} more"
    if len(items) <= 1:
        return "".join(items) or "none"
    return f"{', '.join(items[:-1])} and {items[-1]}"


# -- the correlator (client-go's EventCorrelator) -------------------------------------------


@dataclass(frozen=True)
class CorrelatedEvent:
    """An event after correlation: new (`count` 1) or a repeat of the Event named `name`."""

    name: str
    type: str
    reason: str
    message: str
    count: int
    first_timestamp: float
    last_timestamp: float

    @property
    def is_repeat(self) -> bool:
        return self.count > 1


@dataclass
class _Similar:
    messages: dict[str, None]
    last: float


@dataclass
class _Seen:
    name: str
    first_timestamp: float
    count: int


class TokenBucket:
    """golang.org/x/time/rate's limiter as client-go uses it: starts full, refills at `rate`."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)
        self.last: float | None = None

    def allow(self, now: float) -> bool:
        if self.last is not None:
            elapsed = max(now - self.last, 0.0)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class EventCorrelator:
    """Counts identical events, combines similar ones, and filters a flood (see the module doc).

    Every event here is about one object (the pod) from one source, so the keys of client-go
    reduce to (type, reason, message) and (type, reason); the spam filter is one bucket.
    `now` (monotonic) measures intervals; `wall` stamps the Event and names it.
    """

    def __init__(
        self,
        object_name: str,
        *,
        max_similar: int = AGGREGATE_MAX_EVENTS,
        interval: float = AGGREGATE_INTERVAL_SECONDS,
        burst: int = SPAM_BURST,
        rate: float = SPAM_RATE,
        cache_size: int = LRU_CACHE_ENTRIES,
    ) -> None:
        # Event names are `<object>.<hex nanoseconds>`, as the kubelet's; 253 characters at most.
        self.prefix = object_name[: 253 - 17]
        self.max_similar = max_similar
        self.interval = interval
        self.cache_size = cache_size
        self.spam = TokenBucket(burst, rate)
        self._similar: collections.OrderedDict[tuple[str, str], _Similar] = (
            collections.OrderedDict()
        )
        self._seen: collections.OrderedDict[tuple[str, ...], _Seen] = collections.OrderedDict()
        self._last_nanos = 0

    def correlate(self, event: EventSpec, now: float, wall: float) -> CorrelatedEvent | None:
        """The event to send, or None when the spam filter holds it back."""
        similar_key = (event.type, event.reason)
        similar = self._similar.get(similar_key)
        if similar is None or now - similar.last > self.interval:
            similar = _Similar({}, now)
        similar.messages[event.message] = None
        similar.last = now
        self._remember(self._similar, similar_key, similar)
        message = event.message
        key: tuple[str, ...] = ("event", event.type, event.reason, event.message)
        if len(similar.messages) >= self.max_similar:
            # Keep the set below the limit (client-go pops any; the oldest here, for tests).
            del similar.messages[next(iter(similar.messages))]
            key = ("combined", event.type, event.reason)
            message = COMBINED_PREFIX + event.message
        seen = self._seen.get(key)
        if seen is None:
            seen = _Seen(self._new_name(wall), wall, 0)
        seen.count += 1
        self._remember(self._seen, key, seen)
        if not self.spam.allow(now):
            return None
        return CorrelatedEvent(
            seen.name, event.type, event.reason, message, seen.count, seen.first_timestamp, wall
        )

    def _new_name(self, wall: float) -> str:
        nanos = max(int(wall * 1e9), self._last_nanos + 1)
        self._last_nanos = nanos
        return f"{self.prefix}.{nanos:x}"

    def _remember(self, cache: collections.OrderedDict[Any, Any], key: Any, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)


# -- retries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: the n-th consecutive failure waits a uniformly
    random time in [0, min(cap, base * 2**(n-1))), or what the server asked (Retry-After)."""

    base: float = 0.5
    cap: float = 30.0

    def ceiling(self, failures: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(max(failures - 1, 0), 62))

    def delay(
        self, failures: int, rand: Callable[[], float] = random.random, asked: float | None = None
    ) -> float:
        wait = rand() * self.ceiling(failures)
        if asked is not None:
            wait = max(wait, min(asked, self.cap))
        return wait


# -- the reporter ------------------------------------------------------------------------------


@dataclass
class _EventWork:
    name: str
    body: dict[str, Any]
    repeat: bool
    attempts: int = 0


@dataclass
class _ConditionWork:
    spec: ConditionSpec
    changed_at: float
    attempts: int = 0


@dataclass
class _Known:
    """The pod's condition as last read or written: keeps lastTransitionTime across patches."""

    status: bool
    last_transition: str


class KubeReporter:
    """Sends transitions to Kubernetes beside the event loop: events and one pod condition.

    `on_transition` (and `attach`) run on the loop; `start` runs the sender thread; `aclose`
    lets it flush for a bounded time. Counters are plain attributes for /metrics.
    """

    def __init__(
        self,
        pod: PodRef,
        api: KubeApi,
        condition_type: str = DEFAULT_CONDITION,
        clock: Callable[[], float] = time.time,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        call_timeout: float = CALL_TIMEOUT,
        backoff: Backoff = Backoff(),
        rand: Callable[[], float] = random.random,
        correlator: EventCorrelator | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.pod = pod
        self.api = api
        self.condition_type = condition_type
        self.clock = clock
        self.monotonic = monotonic
        self.queue_size = queue_size
        self.call_timeout = call_timeout
        self.backoff = backoff
        self.rand = rand
        self.correlator = correlator or EventCorrelator(pod.name)
        # Counters, read at scrape time.
        self.events_created = 0
        self.events_updated = 0
        self.condition_patches = 0
        self.failures = 0
        self.dropped = 0
        self.filtered = 0
        self.abandoned = 0
        # The loop's side: what the condition should be, and the state described.
        self._state: HealthState | None = None
        self._desired: ConditionSpec | None = None
        self._desired_since = 0.0
        self._draining = False
        self._broken = False
        # Shared with the sender thread, under the lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._events: collections.deque[_EventWork] = collections.deque()
        self._queued: dict[str, _EventWork] = {}
        self._condition: _ConditionWork | None = None
        self._in_flight = False
        self._dirty = False
        self._idle_waiting = False
        self._retry_at = 0.0
        self._failures_in_row = 0
        self._closing = False
        self._close_deadline = 0.0
        # The sender's side.
        self._known: _Known | None = None
        self._pod_read = False
        # Kinds of call that are failing: warn once, then count quietly until one works.
        self._failing: dict[str, bool] = {}
        self._thread: threading.Thread | None = None

    # -- the loop's side -------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Reports waiting to be sent: events, and the condition when it has changed."""
        return len(self._events) + (self._condition is not None)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is being sent."""
        with self._lock:
            return self._idle_locked()

    def attach(self, state: HealthState) -> None:
        """Hear every transition of `state`, and report the condition it calls for now."""
        self._state = state
        state.subscribe(self.on_transition)
        self._want(current_condition(state))

    def on_transition(self, transition: Transition) -> None:
        """Turn a transition into reports and queue them: a few dictionary operations and one
        uncontended lock (the sender holds it only between calls, never during one); never
        waits for the API, never raises."""
        try:
            if transition.subject is Subject.DRAIN:
                self._draining = True
            report = describe(transition, self._state)
            for spec in report.events:
                self._record(spec)
            if report.condition is not None:
                self._want(report.condition)
        except Exception:
            if not self._broken:
                logger.exception("cannot turn a transition into Kubernetes reports")
            self._broken = True

    def _record(self, spec: EventSpec) -> None:
        wall = self.clock()
        event = self.correlator.correlate(spec, self.monotonic(), wall)
        if event is None:
            self.filtered += 1
            return
        body = self._event_body(event)
        with self._lock:
            queued = self._queued.get(event.name)
            if queued is not None:
                # Not sent yet: send the newest count and message instead, in the same place.
                queued.body = body
            else:
                if len(self._events) >= self.queue_size:
                    oldest = self._events.popleft()
                    if self._queued.get(oldest.name) is oldest:
                        del self._queued[oldest.name]
                    self.dropped += 1
                work = _EventWork(event.name, body, event.is_repeat)
                self._events.append(work)
                self._queued[event.name] = work
            self._nudge()

    def _want(self, spec: ConditionSpec) -> None:
        if spec.status and (self._draining or (self._state is not None and self._state.draining)):
            return  # a draining pod stays not ready
        if spec == self._desired:
            return
        if self._desired is None or spec.status != self._desired.status:
            self._desired_since = self.clock()
        self._desired = spec
        with self._lock:
            # Only the newest condition matters: it replaces one not sent yet.
            self._condition = _ConditionWork(spec, self._desired_since)
            self._nudge()

    def _nudge(self) -> None:
        """Tell the sender there is work (under the lock). It is woken only when it waits for
        work: one that is sending or waiting out a backoff sees the work when it is done, and
        waking it for nothing would make it compete with the loop for the GIL."""
        self._dirty = True
        if self._idle_waiting:
            self._wake.notify()

    def _event_body(self, event: CorrelatedEvent) -> dict[str, Any]:
        pod = self.pod
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event.name, "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            },
            "reason": event.reason,
            "message": event.message[:MAX_MESSAGE],
            "type": event.type,
            "source": {"component": COMPONENT},
            "count": event.count,
            "firstTimestamp": rfc3339(event.first_timestamp),
            "lastTimestamp": rfc3339(event.last_timestamp),
            "reportingComponent": COMPONENT,
            "reportingInstance": pod.name[:128],
        }

    # -- the sender's side -----------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (a daemon: it never holds the process at exit)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kube-reporter", daemon=True)
            self._thread.start()

    def step(self) -> float | None:
        """Send the next report that is due, if any. Returns 0 when more may be due now, the
        seconds until the next retry, or None when nothing waits. The sender thread loops on
        it; tests call it directly."""
        with self._lock:
            self._dirty = False
            now = self.monotonic()
            if now < self._retry_at and (self._condition is not None or self._events):
                return self._retry_at - now
            work: _EventWork | _ConditionWork
            if self._condition is not None:
                work, self._condition = self._condition, None
            elif self._events:
                work = self._events.popleft()
                if self._queued.get(work.name) is work:
                    del self._queued[work.name]
            else:
                return None
            self._in_flight = True
        try:
            if isinstance(work, _EventWork):
                self._send_event(work)
            else:
                self._send_condition(work)
        except KubeApiError as exc:
            self._failed(work, exc)
        except Exception as exc:  # a bug, not the API: never retried, never fatal
            self._failed(work, KubeApiError(-1, f"{type(exc).__name__}: {exc}"))
        else:
            self._succeeded(work)
        finally:
            with self._lock:
                self._in_flight = False
        return 0.0

    def _send_event(self, work: _EventWork) -> None:
        # The loop replaces a queued body, never changes one: this one is ours to read.
        body, namespace = work.body, self.pod.namespace
        if work.repeat:
            patch = {k: body[k] for k in ("count", "lastTimestamp", "message")}
            try:
                self.api.patch_event(namespace, work.name, patch, self.call_timeout)
                self.events_updated += 1
                return
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                # The Event is gone (expired, or its creation was dropped): create it whole.
        try:
            self.api.create_event(namespace, body, self.call_timeout)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            # Already there: a retry of a creation whose answer was lost.
        self.events_created += 1

    def _send_condition(self, work: _ConditionWork) -> None:
        pod = self.pod
        if not self._pod_read:
            self._known = self._read_condition()
            self._pod_read = True
        known = self._known
        spec = work.spec
        if known is not None and known.status == spec.status:
            last_transition = known.last_transition
        else:
            last_transition = rfc3339(work.changed_at)
        condition = {
            "type": self.condition_type,
            "status": "True" if spec.status else "False",
            "reason": spec.reason,
            "message": spec.message[:MAX_MESSAGE],
            "lastTransitionTime": last_transition,
            "lastProbeTime": None,
        }
        patch = {"status": {"conditions": [condition]}}
        self.api.patch_pod_status(pod.namespace, pod.name, patch, self.call_timeout)
        self._known = _Known(spec.status, last_transition)
        self.condition_patches += 1

    def _read_condition(self) -> _Known | None:
        """The condition as the pod has it (a sidecar restarted beside a running worker must
        not move its lastTransitionTime). Unreadable (forbidden, say): None, and patch anyway."""
        try:
            pod = self.api.read_pod_status(self.pod.namespace, self.pod.name, self.call_timeout)
        except KubeApiError as exc:
            if exc.retryable:
                raise
            self._warn_once("read", f"cannot read the pod's status: {exc}; patching anyway")
            return None
        status = pod.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        for condition in conditions if isinstance(conditions, list) else []:
            if isinstance(condition, dict) and condition.get("type") == self.condition_type:
                when = condition.get("lastTransitionTime")
                value = condition.get("status")
                if isinstance(when, str) and value in ("True", "False"):
                    return _Known(value == "True", when)
        return None

    def _succeeded(self, work: _EventWork | _ConditionWork) -> None:
        kind = "events" if isinstance(work, _EventWork) else "condition"
        with self._lock:
            self._failures_in_row = 0
            self._retry_at = 0.0
        if self._failing.get(kind):
            self._failing[kind] = False
            what = "Events" if kind == "events" else f"The pod condition {self.condition_type}"
            logger.info("%s reach the Kubernetes API again", what)

    def _failed(self, work: _EventWork | _ConditionWork, exc: KubeApiError) -> None:
        self.failures += 1
        kind = "events" if isinstance(work, _EventWork) else "condition"
        retry = exc.retryable
        with self._lock:
            if retry:
                work.attempts += 1
                self._failures_in_row += 1
                delay = self.backoff.delay(self._failures_in_row, self.rand, exc.retry_after)
                self._retry_at = self.monotonic() + delay
                retry = self._put_back(work)
        if isinstance(work, _EventWork):
            what = f"cannot record the event {work.body['reason']} on pod {self._pod_name()}"
        else:
            what = f"cannot set the condition {self.condition_type} of pod {self._pod_name()}"
        then = "retrying with backoff" if retry else "not retrying it"
        self._warn_once(
            kind,
            f"{what}: {exc}; {then}; further failures are only counted "
            "(dynamo_sidecar_kube_failures_total)",
        )

    def _put_back(self, work: _EventWork | _ConditionWork) -> bool:
        """Put a report that may work later back in front; False when it is given up."""
        if isinstance(work, _ConditionWork):
            if self._condition is None:  # else a newer condition replaced it
                self._condition = work
            return True
        if work.attempts >= EVENT_ATTEMPTS:
            self.abandoned += 1
            return False
        if work.name in self._queued:
            return True  # a newer count of the same Event waits: it carries this one
        if len(self._events) >= self.queue_size:
            self.dropped += 1  # the queue filled meanwhile: this is its oldest report
            return False
        self._events.appendleft(work)
        self._queued[work.name] = work
        return True

    def _warn_once(self, kind: str, message: str) -> None:
        if not self._failing.get(kind):
            logger.warning(message)
        else:
            logger.debug(message)
        self._failing[kind] = True

    def _pod_name(self) -> str:
        return f"{self.pod.namespace}/{self.pod.name}"

    def _run(self) -> None:
        while True:
            delay = self.step()
            with self._lock:
                now = self.monotonic()
                if self._closing and (now >= self._close_deadline or self._idle_locked()):
                    return
                if delay == 0.0 or self._dirty:
                    continue
                if self._closing:
                    limit = self._close_deadline - now
                    delay = limit if delay is None else min(delay, limit)
                self._idle_waiting = delay is None
                self._wake.wait(delay)
                self._idle_waiting = False

    def _idle_locked(self) -> bool:
        return not self._events and self._condition is None and not self._in_flight

    # -- stopping ----------------------------------------------------------------------------

    def close(self, timeout: float) -> bool:
        """Let the sender send what waits for at most `timeout` seconds, then stop it.
        Returns whether everything was sent. Blocks: use `aclose` on the event loop."""
        self._begin_close(timeout)
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0))
        return self._finish_close()

    async def aclose(self, timeout: float) -> bool:
        """`close` for the event loop: waits without blocking it (a 10 ms poll)."""
        self._begin_close(timeout)
        deadline = time.monotonic() + max(timeout, 0.0)
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._finish_close()

    def _begin_close(self, timeout: float) -> None:
        with self._lock:
            self._closing = True
            self._close_deadline = self.monotonic() + max(timeout, 0.0)
            self._wake.notify()

    def _finish_close(self) -> bool:
        with self._lock:
            left = len(self._events) + (self._condition is not None) + self._in_flight
        if left:
            logger.warning("%d report(s) to the Kubernetes API were not sent before exit", left)
        return not left


def rfc3339(seconds: float) -> str:
    """A Kubernetes `Time`: UTC, whole seconds, `Z`."""
    moment = datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
