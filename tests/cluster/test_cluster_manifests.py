"""`kubectl apply -f manifests/` on a real Kubernetes (issue 13): the chart's default rendering,
applied without Helm by the real kubectl, runs as the chart does."""

from __future__ import annotations

import pytest

from cluster.workload import (
    REPO,
    RESULTS,
    SIDECAR,
    WORKER,
    Kube,
    Release,
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
    # manifests/ is the chart rendered as the release "dynamo-health-sidecar".
    release = Release(kube, namespace, "dynamo-health-sidecar")
    release.wait_pod("the example worker running", worker_running, 120)
    ready = release.wait_pod("the pod Ready", is_ready, 150)
    name = ready.metadata.name
    started = container_status(ready, WORKER).state.running.started_at
    RESULTS["manifests_start_to_ready_s"] = (
        condition(ready, "Ready").last_transition_time - started
    ).total_seconds()
    assert restarts(ready, WORKER) == 0 and restarts(ready, SIDECAR) == 0
    logs = kube.kubectl("logs", "-n", namespace, name, "-c", WORKER)
    assert "ready: the generate endpoint is served" in logs, logs
