"""What goes to the Kubernetes API and what is read back, as data: the Event on the pod, the
patch that raises its count, the patch of the pod condition, and the condition as the pod
has it (docs/protocol.md section 7.5). Pure: the sender decides when, this module what.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.kube.api import COMPONENT
from sidecar.kube.correlator import CorrelatedEvent
from sidecar.kube.discovery import PodRef
from sidecar.kube.reports import ConditionSpec

# Messages are cut here (events.k8s.io's limit for a note; core/v1 has none but etcd's).
MAX_MESSAGE = 1024
# What a strategic merge patch of an Event already there changes, as the kubelet's recorder.
REPEAT_FIELDS = ("count", "lastTimestamp", "message")


@dataclass(frozen=True)
class Known:
    """The pod's condition as last read or written: keeps lastTransitionTime across patches."""

    status: bool
    last_transition: str


def event_body(pod: PodRef, event: CorrelatedEvent) -> dict[str, Any]:
    """The core/v1 Event, whole: what a creation sends."""
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


def repeat_patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an Event's body that a repeat changes."""
    return {field: body[field] for field in REPEAT_FIELDS}


def condition_patch(
    condition_type: str, spec: ConditionSpec, last_transition: str
) -> dict[str, Any]:
    """A strategic merge patch of `pods/status`: conditions merge by type, so the kubelet's own
    are left as they are."""
    condition = {
        "type": condition_type,
        "status": "True" if spec.status else "False",
        "reason": spec.reason,
        "message": spec.message[:MAX_MESSAGE],
        "lastTransitionTime": last_transition,
        "lastProbeTime": None,
    }
    return {"status": {"conditions": [condition]}}


def known_condition(pod: Mapping[str, Any], condition_type: str) -> Known | None:
    """The condition of that type in a pod read from the API, if it has a usable one."""
    status = pod.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, dict) and condition.get("type") == condition_type:
            when = condition.get("lastTransitionTime")
            value = condition.get("status")
            if isinstance(when, str) and value in ("True", "False"):
                return Known(value == "True", when)
    return None


def rfc3339(seconds: float) -> str:
    """A Kubernetes `Time`: UTC, whole seconds, `Z`."""
    moment = datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
