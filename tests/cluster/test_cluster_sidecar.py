"""The sidecar's own life on a real Kubernetes: a native sidecar, the sidecar killed, the pod
deleted (issue 13). Installed with real Helm, read through the real API server."""

from __future__ import annotations

import datetime
import signal
import threading
import time
from typing import Any

import pytest

from cluster.workload import (
    RESULTS,
    SIDECAR,
    WORKER,
    Kube,
    Release,
    container_status,
    is_ready,
    now,
    restarts,
    seconds_since,
    signal_container,
    standin_release,
)

pytestmark = pytest.mark.cluster


def test_native_sidecar_starts_before_the_worker_and_outlives_its_restarts(
    kube: Kube, namespace: str
) -> None:
    release = standin_release(kube, namespace, {"sidecar": {"native": True}})
    pod = release.pod()
    (init,) = pod.spec.init_containers
    assert (init.name, init.restart_policy) == (SIDECAR, "Always")
    assert [c.name for c in pod.spec.containers] == [WORKER]
    # Which started first, by each container's first log line as the runtime stamped it
    # (startedAt is in whole seconds, too coarse for this).
    first_line = {
        name: kube.follow_logs(namespace, pod.metadata.name, name, follow=False).wait(30)[0][0]
        for name in (SIDECAR, WORKER)
    }
    assert first_line[SIDECAR] < first_line[WORKER], first_line
    sidecar_id = container_status(pod, SIDECAR).container_id
    signal_container(pod, WORKER, signal.SIGKILL)
    release.wait_pod("the worker restarted", lambda p: restarts(p, WORKER) >= 1, 60)
    ready = release.wait_pod("the pod Ready again", is_ready, 60)
    assert restarts(ready, SIDECAR) == 0
    assert container_status(ready, SIDECAR).container_id == sidecar_id


def test_killed_sidecar_is_restarted_alone_and_readiness_returns_from_the_state_file(
    kube: Kube, namespace: str
) -> None:
    # The chart's default liveness (3 x 5 s) outlasts the sidecar's restart, as it must.
    release = standin_release(
        kube, namespace, {"probes": {"liveness": {"periodSeconds": 5, "failureThreshold": 3}}}
    )
    pod = release.pod()
    began = time.monotonic()
    signal_container(pod, SIDECAR, signal.SIGKILL)
    release.wait_pod("the sidecar restarted", lambda p: restarts(p, SIDECAR) >= 1, 60)
    ready = release.wait_pod("the pod Ready again", is_ready, 60)
    RESULTS["sidecar_sigkill_to_ready_s"] = seconds_since(began)
    assert restarts(ready, WORKER) == 0
    logs = kube.kubectl("logs", "-n", namespace, ready.metadata.name, "-c", SIDECAR)
    assert "restored from the state file" in logs, logs


class EndpointWatch(threading.Thread):
    """Polls the release's EndpointSlices; records when the pod stops being ready, then serving."""

    def __init__(self, release: Release, pod_name: str) -> None:
        super().__init__(daemon=True)
        self.release, self.pod_name = release, pod_name
        self.not_ready_at: datetime.datetime | None = None
        self.not_serving_at: datetime.datetime | None = None
        self.stop = threading.Event()

    def endpoint(self) -> Any:
        slices = self.release.kube.discovery.list_namespaced_endpoint_slice(self.release.namespace)
        for found in slices.items:
            for endpoint in found.endpoints or []:
                ref = endpoint.target_ref
                if ref is not None and ref.name == self.pod_name:
                    return endpoint
        return None

    def run(self) -> None:
        while not self.stop.is_set() and self.not_serving_at is None:
            endpoint = self.endpoint()
            conditions = endpoint.conditions if endpoint is not None else None
            if self.not_ready_at is None and not (conditions and conditions.ready):
                self.not_ready_at = now()
            if not (conditions and conditions.serving):
                self.not_serving_at = now()
            time.sleep(0.05)


def test_deleted_pod_leaves_its_service_before_the_worker_exits_and_the_sidecar_exits_0(
    kube: Kube, namespace: str
) -> None:
    pre_stop, drain = 4, 2
    release = standin_release(
        kube,
        namespace,
        {
            "worker": {
                "ports": [{"name": "http", "containerPort": 8000}],
                "preStopSleepSeconds": pre_stop,
            },
            "service": {"enabled": True},
            "sidecar": {"drainSeconds": drain},
            "terminationGracePeriodSeconds": 20,
        },
    )
    pod = release.pod()
    endpoints = EndpointWatch(release, pod.metadata.name)

    def in_service() -> bool:
        found = endpoints.endpoint()
        return bool(found and found.conditions.ready and found.conditions.serving)

    kube.wait("the pod ready and serving in its Service's endpoints", in_service, 30)
    endpoints.start()
    sidecar_log = kube.follow_logs(namespace, pod.metadata.name, SIDECAR)
    deleted_at = now()
    kube.core.delete_namespaced_pod(pod.metadata.name, namespace)
    unready_at, last = None, pod
    for version in kube.watch_pod(namespace, pod.metadata.name, timeout=60):
        if unready_at is None and not is_ready(version):
            unready_at = now()
        if container_status(version, WORKER) is not None:
            last = version
    endpoints.join(timeout=10)
    endpoints.stop.set()
    assert unready_at is not None and endpoints.not_serving_at is not None
    assert endpoints.not_ready_at is not None
    assert deleted_at <= endpoints.not_ready_at <= endpoints.not_serving_at
    RESULTS["delete_to_not_ready_s"] = (unready_at - deleted_at).total_seconds()
    RESULTS["delete_to_endpoint_not_ready_s"] = (
        endpoints.not_ready_at - deleted_at
    ).total_seconds()
    RESULTS["delete_to_endpoint_not_serving_s"] = (
        endpoints.not_serving_at - deleted_at
    ).total_seconds()
    sidecar, worker = container_status(last, SIDECAR), container_status(last, WORKER)
    assert sidecar.state.terminated is not None, f"the sidecar's end was not seen: {sidecar}"
    assert worker.state.terminated is not None, f"the worker's end was not seen: {worker}"
    assert sidecar.state.terminated.exit_code == 0
    # (metadata.deletionTimestamp is the grace period's end, not the request: time from ours.)
    sidecar_took = (sidecar.state.terminated.finished_at - deleted_at).total_seconds()
    worker_took = (worker.state.terminated.finished_at - deleted_at).total_seconds()
    left_service = RESULTS["delete_to_endpoint_not_serving_s"]
    RESULTS["delete_to_sidecar_exit_s"] = sidecar_took
    RESULTS["delete_to_worker_exit_s"] = worker_took
    # The drain, from the sidecar's own lines as the runtime stamped them (to the nanosecond).
    lines = sidecar_log.wait(timeout=30)
    drain_began = next((at for at, line in lines if "draining: readiness fails" in line), None)
    stopped = next((at for at, line in reversed(lines) if line.endswith("stopped")), None)
    assert drain_began is not None and stopped is not None, lines
    drained = (stopped - drain_began).total_seconds()
    RESULTS["sidecar_drain_to_exit_s"] = drained
    # The worker outlives the drain (its preStop), so the drain runs its whole length.
    assert drain - 0.2 <= drained <= drain + 0.5, lines
    # finishedAt is in whole seconds: a second of slack where it matters.
    assert worker_took >= pre_stop - 1, f"the preStop sleep did not run: {worker_took}"
    assert left_service < worker_took - 1, (left_service, worker_took)
