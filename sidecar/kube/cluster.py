"""Whether Kubernetes reporting runs, decided once at startup from the settings and what
discovery finds (docs/protocol.md section 7.5).

`DYN_SIDECAR_KUBE=on` without everything reporting needs stops the sidecar with exit code 2
and one line, as a bad setting does; `auto` turns reporting on exactly when everything is
there, and says why not when the pod is inside a cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sidecar.kube.discovery import InCluster, client_installed, find_in_cluster, refusal
from sidecar.setting_kinds import Kube
from sidecar.setting_parsers import SettingsError, reshown
from sidecar.settings import Settings


@dataclass(frozen=True)
class Discovery:
    """What `discover` found: the cluster reporting talks to (None: reporting is off), and
    why `auto` left it off inside a cluster ("" when it did not, or outside one)."""

    cluster: InCluster | None
    off_reason: str = ""


def discover(
    settings: Settings,
    environ: Mapping[str, str],
    installed: Callable[[], bool] = client_installed,
) -> Discovery:
    """The cluster for `settings.kube`; `SettingsError` when `on` lacks something, naming
    the setting as it was given."""
    if settings.kube is Kube.OFF:
        return Discovery(None)
    found = find_in_cluster(
        environ, settings.kube_service_account_dir, settings.kube_api_url, installed
    )
    if found.complete:
        return Discovery(found)
    if settings.kube is Kube.ON:
        source, text = settings.given["kube"]
        raise SettingsError(reshown(refusal(source, text, found), source, text, text))
    inside = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    return Discovery(None, found.describe_missing() if inside else "")
