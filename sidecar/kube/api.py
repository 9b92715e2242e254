"""The API as the sender needs it: four calls behind a protocol, and the adapter that makes
them with the official `kubernetes` client, imported only when reporting is on, so that a
sidecar without it costs nothing more than the standard library (docs/protocol.md section 7.5).

Events are core/v1 (`create_namespaced_event`, `patch_namespaced_event`), as the kubelet's
own recorder writes them: `kubectl describe pod` lists them beside the kubelet's ("Liveness
probe failed ... 503") with the same `count`, `firstTimestamp` and `lastTimestamp` that make
its "3m (x4 over 20m)"; events.k8s.io/v1 would store the same objects but count in
`series`, need `eventTime`, and an RBAC rule on another API group.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sidecar.kube.discovery import InCluster

COMPONENT = "dynamo-health-sidecar"
CONNECT_TIMEOUT = 2.0


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
    """The four calls the sender makes. Each raises `KubeApiError` when it fails."""

    def create_event(self, namespace: str, body: Mapping[str, Any], timeout: float) -> None: ...

    def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float
    ) -> None: ...

    def read_pod_status(self, namespace: str, name: str, timeout: float) -> Mapping[str, Any]: ...

    def patch_pod_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], timeout: float
    ) -> None: ...


def official_api(
    found: InCluster,
    clock: Callable[[], float] = time.monotonic,
    user_agent: str = COMPONENT,
) -> KubeApi:
    """The calls, made by the official `kubernetes` client (imported here, and only here);
    `clock` times the token's re-reading."""
    if found.api_url is None:
        raise ValueError(f"no API server to talk to: {found.describe_missing()}")
    return _OfficialApi(found.api_url, found.token_path, found.ca_path, user_agent, clock)


class _OfficialApi:
    """`kubernetes.client.CoreV1Api` without its own retries, re-reading the token every minute
    (bound service account tokens rotate), answers read as raw JSON (no model classes)."""

    TOKEN_REFRESH_SECONDS = 60.0

    def __init__(
        self,
        api_url: str,
        token_path: Path,
        ca_path: Path,
        user_agent: str,
        clock: Callable[[], float],
    ) -> None:
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
        self._clock = clock
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
        now = self._clock()
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
