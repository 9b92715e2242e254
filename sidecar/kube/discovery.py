"""Where the pod and the API server are: read once at startup from the pod's environment and
its service account, with the error line a user sees for each override."""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.kube.reports import join_names

logger = logging.getLogger("dynamo_health_sidecar")

DEFAULT_CONDITION = "dynamo-health-sidecar.io/worker-ready"
DEFAULT_SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CLIENT_MISSING = "the kubernetes Python package (pip install 'dynamo-health-sidecar[kube]')"
POD_VARIABLES = ("POD_NAME", "POD_NAMESPACE", "POD_UID")
SERVICE_VARIABLES = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
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
        return f"{join_names(self.missing, limit=len(self.missing))} {verb} missing"


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
