"""Kubernetes reporting on a real API server, with the chart's own RBAC (issue 13): the
readiness-gate condition, the sidecar's events, what the real `kubectl describe pod` shows, and
what a Role that forbids the patch does."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from cluster.workload import (
    RESULTS,
    SIDECAR,
    WORKER,
    Kube,
    condition,
    container_status,
    fast_standin_values,
    is_ready,
    restarts,
    seconds_since,
    signal_container,
    standin_release,
)

pytestmark = pytest.mark.cluster

GATE = "dynamo-health-sidecar.io/worker-ready"
REPORTING: dict[str, Any] = {"sidecar": {"kubeReporting": {"enabled": True, "readinessGate": True}}}


def gate_is(status: str) -> Any:
    def check(pod: Any) -> bool:
        found = condition(pod, GATE)
        return found is not None and found.status == status

    return check


def sidecar_reasons(events: list[Any]) -> list[str]:
    return [e.reason for e in events if e.source and e.source.component == "dynamo-health-sidecar"]


def test_readiness_gate_follows_the_worker_and_describe_shows_the_sidecars_events(
    kube: Kube, namespace: str
) -> None:
    release = standin_release(kube, namespace, REPORTING)
    pod = release.wait_pod("the condition True", gate_is("True"), 30)
    assert [g.condition_type for g in pod.spec.readiness_gates] == [GATE]
    # The chart's Role: namespaced, the verbs it needs and no wildcards.
    (role,) = kube.rbac.list_namespaced_role(namespace).items
    assert {(tuple(r.api_groups), tuple(r.resources), tuple(r.verbs)) for r in role.rules} == {
        (("",), ("events",), ("create", "patch")),
        (("",), ("pods/status",), ("get", "patch")),
    }
    began = time.monotonic()
    signal_container(pod, WORKER, signal.SIGKILL)
    dropped = release.wait_pod("the condition False", gate_is("False"), 30)
    RESULTS["reporting_sigkill_to_condition_false_s"] = seconds_since(began)
    assert condition(dropped, GATE).reason == "WorkerExited", condition(dropped, GATE)
    back = release.wait_pod("the pod Ready again", lambda p: is_ready(p) and gate_is("True")(p), 60)
    reasons = kube.wait(
        "the sidecar's events",
        lambda: (r := sidecar_reasons(release.events(back))) and "WorkerRestarted" in r and r,
        30,
    )
    assert {"WorkerReady", "WorkerExited", "WorkerRestarted"} <= set(reasons), reasons
    described = kube.kubectl("describe", "pod", "-n", namespace, back.metadata.name)
    assert "Readiness Gates:" in described
    gate_rows = [line.split() for line in described.splitlines() if GATE in line]
    assert ["True"] in [row[1:] for row in gate_rows], gate_rows
    events = described[described.index("Events:") :]
    for reason in ("WorkerReady", "WorkerExited", "WorkerRestarted"):
        assert any(
            reason in line and "dynamo-health-sidecar" in line for line in events.splitlines()
        ), (reason, events)


def test_forbidden_condition_patch_keeps_the_pod_out_of_service_and_events_still_flow(
    kube: Kube, namespace: str
) -> None:
    values = {**REPORTING, "replicas": 0}
    release = kube.install(namespace, fast_standin_values(values))
    (role,) = kube.rbac.list_namespaced_role(namespace).items
    role.rules = [r for r in role.rules if r.resources != ["pods/status"]]
    kube.rbac.replace_namespaced_role(role.metadata.name, namespace, role)
    (deployment,) = kube.apps.list_namespaced_deployment(namespace).items
    kube.apps.patch_namespaced_deployment_scale(
        deployment.metadata.name, namespace, {"spec": {"replicas": 1}}
    )
    pod = release.wait_pod(
        "the worker's container ready",
        lambda p: bool(getattr(container_status(p, WORKER), "ready", False)),
        120,
    )
    # The documented outcome: the worker's probes pass, the gate's condition is never set, so
    # the pod is never Ready; the sidecar says why once, and its events still arrive.
    refusal = f"cannot set the condition {GATE}"

    def sidecar_logs() -> str:
        return kube.kubectl("logs", "-n", namespace, pod.metadata.name, "-c", SIDECAR)

    logs = kube.wait(
        "the sidecar's refusal line", lambda: (t := sidecar_logs()) and refusal in t and t, 30
    )
    time.sleep(3)  # the condition patch is retried with backoff meanwhile
    pod = release.pod()
    assert condition(pod, "ContainersReady").status == "True"
    assert condition(pod, GATE) is None and not is_ready(pod)
    assert restarts(pod, WORKER) == 0
    assert "WorkerReady" in kube.wait(
        "the sidecar's events", lambda: sidecar_reasons(release.events(pod)), 30
    )
    logs = sidecar_logs()
    (line,) = [line for line in logs.splitlines() if refusal in line]
    assert "forbidden" in line.lower(), line
