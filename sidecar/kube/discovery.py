"""Where the pod and the API server are: found once at startup, after the settings are
loaded and before anything is bound, from the pod's environment and its service account.
`sidecar/kube/cluster.py` decides from it whether reporting runs.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.kube.reports import join_names
from sidecar.kube.rules import DEFAULT_SERVICE_ACCOUNT_DIR

logger = logging.getLogger("dynamo_health_sidecar")

CLIENT_MISSING = "the kubernetes Python package (pip install 'dynamo-health-sidecar[kube]')"
POD_VARIABLES = ("POD_NAME", "POD_NAMESPACE", "POD_UID")
SERVICE_VARIABLES = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


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
