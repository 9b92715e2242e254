"""`kubectl apply -f manifests/` on a real Kubernetes (issue 13): the chart's default rendering,
applied without Helm by the real kubectl, runs as the chart does."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kubernetes.client import V1Pod

from cluster.workload import (
    REPO,
    RESULTS,
    SIDECAR,
    WORKER,
    Kube,
    condition,
    container_status,
    is_ready,
    restarts,
    worker_running,
)

pytestmark = pytest.mark.cluster


def test_applied_manifests_run_the_example_worker_to_ready(kube: Kube, namespace: str) -> None:
    applied = kube.kubectl("apply", "-n", namespace, "-f", str(REPO / "manifests"))
    assert "deployment.apps/dynamo-health-sidecar created" in applied, applied
    pods = kube.wait(
        "a pod of the manifests",
        lambda: (
            kube.core.list_namespaced_pod(
                namespace, label_selector="app.kubernetes.io/name=dynamo-health-sidecar"
            ).items
        ),
        60,
    )
    name = pods[0].metadata.name

    def pod_when(check: Callable[[V1Pod], bool]) -> Callable[[], V1Pod | None]:
        def read() -> V1Pod | None:
            found = kube.core.read_namespaced_pod(name, namespace)
            return found if check(found) else None

        return read

    kube.wait("the example worker running", pod_when(worker_running), 120)
    ready = kube.wait("the pod Ready", pod_when(is_ready), 150)
    started = container_status(ready, WORKER).state.running.started_at
    RESULTS["manifests_start_to_ready_s"] = (
        condition(ready, "Ready").last_transition_time - started
    ).total_seconds()
    assert restarts(ready, WORKER) == 0 and restarts(ready, SIDECAR) == 0
    logs = kube.kubectl("logs", "-n", namespace, name, "-c", WORKER)
    assert "ready: the generate endpoint is served" in logs, logs
