"""What the Kubernetes settings accept: pure checks, each returning the line that refuses a
value (the settings show it as it is), and the names the API server accepts."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_CONDITION = "dynamo-health-sidecar.io/worker-ready"
DEFAULT_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
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
_NAME_PART = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


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
