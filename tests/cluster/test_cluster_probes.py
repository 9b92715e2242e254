"""The chart on a real Kubernetes: what the kubelet does with the sidecar's answers (issue 13).

Each test installs the chart with real Helm into a namespace of its own, as a user would, and
reads the outcome through the real API server: the pod's conditions, its containers' restart
counts and states, its events. The worker is the chart's example worker (the default install) or
the stand-in worker (tests/container/standin_worker.py), which loads, reports ready, sends
heartbeats, and hangs, spins or dies on a signal sent to its process from the host.
"""

from __future__ import annotations

import signal
import time

import pytest

from cluster.workload import (
    RESULTS,
    SIDECAR,
    WORKER,
    Kube,
    condition,
    container_status,
    is_ready,
    restarts,
    seconds_since,
    signal_container,
    standin_release,
    worker_running,
)

pytestmark = pytest.mark.cluster


def test_default_install_is_not_ready_while_loading_and_ready_after_without_restart(
    kube: Kube, namespace: str
) -> None:
    release = kube.install(namespace, {})
    pod = release.wait_pod("the worker running", worker_running, 120)
    loading = release.pod()
    assert not is_ready(loading), "the pod is Ready while the example worker loads (30 s)"
    liveness = next(c for c in pod.spec.containers if c.name == WORKER).liveness_probe
    liveness_alone = liveness.period_seconds * liveness.failure_threshold
    pod = release.wait_pod("the pod Ready after the load", is_ready, 150)
    started = container_status(pod, WORKER).state.running.started_at
    ready_at = condition(pod, "Ready").last_transition_time
    load_to_ready = (ready_at - started).total_seconds()
    RESULTS["default_install_start_to_ready_s"] = load_to_ready
    # The load outlasted what liveness alone would allow, and the startup probe held it off.
    assert load_to_ready > liveness_alone, (load_to_ready, liveness_alone)
    assert restarts(pod, WORKER) == 0 and restarts(pod, SIDECAR) == 0
    startup_failures = [
        e for e in release.events(pod) if e.reason == "Unhealthy" and "Startup probe" in e.message
    ]
    assert startup_failures, "the startup probe never saw the worker loading"
    assert not [e for e in release.events(pod) if "Liveness probe failed" in (e.message or "")]


def test_killed_worker_is_restarted_by_the_kubelet_and_ready_again(
    kube: Kube, namespace: str
) -> None:
    release = standin_release(kube, namespace)
    pod = release.pod()
    sidecar_id = container_status(pod, SIDECAR).container_id
    began = time.monotonic()
    signal_container(pod, WORKER, signal.SIGKILL)
    restarted = release.wait_pod("the worker restarted", lambda p: restarts(p, WORKER) >= 1, 60)
    RESULTS["worker_sigkill_to_restart_s"] = seconds_since(began)
    assert container_status(restarted, WORKER).last_state.terminated.exit_code == 137  # SIGKILL
    ready = release.wait_pod("the pod Ready again", is_ready, 60)
    RESULTS["worker_sigkill_to_ready_s"] = seconds_since(began)
    assert restarts(ready, SIDECAR) == 0
    assert container_status(ready, SIDECAR).container_id == sidecar_id


def test_hung_worker_is_restarted_after_its_heartbeats_stop(kube: Kube, namespace: str) -> None:
    release = standin_release(kube, namespace)
    pod = release.pod()
    began = time.monotonic()
    signal_container(pod, WORKER, signal.SIGUSR1)
    not_ready = release.wait_pod("the pod not Ready", lambda p: not is_ready(p), 30)
    RESULTS["worker_hang_to_not_ready_s"] = seconds_since(began)
    assert restarts(not_ready, WORKER) == 0
    restarted = release.wait_pod("the worker restarted", lambda p: restarts(p, WORKER) >= 1, 60)
    RESULTS["worker_hang_to_restart_s"] = seconds_since(began)
    assert restarts(restarted, SIDECAR) == 0
    liveness = [
        e for e in release.events(restarted) if "Liveness probe failed" in (e.message or "")
    ]
    assert liveness, "the restart was not the liveness probe's"
    release.wait_pod("the pod Ready again", is_ready, 60)


def test_busy_worker_is_never_restarted(kube: Kube, namespace: str) -> None:
    busy_seconds = 15
    release = standin_release(kube, namespace, busy_seconds=busy_seconds)
    pod = release.pod()
    signal_container(pod, WORKER, signal.SIGHUP)
    deadline = time.monotonic() + busy_seconds + 5
    while time.monotonic() < deadline:
        now = release.pod()
        assert restarts(now, WORKER) == 0, "a busy worker was restarted"
        assert is_ready(now), "a busy worker lost readiness"
        time.sleep(0.5)
    logs = kube.kubectl("logs", "-n", namespace, pod.metadata.name, "-c", WORKER)
    assert "busy: spinning the CPU" in logs and "idle again" in logs, logs
