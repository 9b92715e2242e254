"""The pod the Kubernetes tests run as: its Downward API variables and its service account."""

from __future__ import annotations

import uuid
from pathlib import Path

from sidecar.kube.discovery import PodRef

NAMESPACE = "llm"
POD = PodRef("rel-dynamo-health-sidecar-7d9f8c6b5-x2x7k", NAMESPACE, str(uuid.uuid4()))


def service_account(tmp_path: Path, ca: bool = True) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(f"token-{uuid.uuid4().hex}")
    if ca:
        (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return directory


POD_ENV = {"POD_NAME": POD.name, "POD_NAMESPACE": POD.namespace, "POD_UID": POD.uid}
SERVICE_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
