"""What the cluster tests do to the cluster: install the chart with real Helm, read pods through
the real API server, signal a container's process, run the real kubectl.

Every wait polls the API server (or watches it) with a deadline, and a timeout fails with what
was last seen, so a failing test says where the pod got stuck.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import helm_python as helm
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from cluster import cluster

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "dynamo-health-sidecar"
STANDIN_REPOSITORY = "localhost/dhs-standin-worker"
STANDIN_TAG = "test"
# Measured durations, printed at the end of the run (conftest) and kept in the state directory.
RESULTS: dict[str, float] = {}

T = TypeVar("T")


def standin_values(**env: str | float) -> dict[str, Any]:
    """The stand-in worker (tests/container/standin_worker.py) as the chart's worker."""
    return {
        "worker": {
            "image": {"repository": STANDIN_REPOSITORY, "tag": STANDIN_TAG, "pullPolicy": "Never"},
            "command": [],
            "args": [],
            "env": [{"name": f"STANDIN_{k.upper()}", "value": str(v)} for k, v in env.items()],
        },
        "sidecar": {"image": {"pullPolicy": "Never"}},
    }


def merge(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """Values merged as Helm merges several `-f` files: maps deeply, everything else replaced."""
    merged = dict(base)
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class Release:
    """The objects of one release in a namespace of its own: a `helm install`, or
    `manifests/`, which is the chart rendered as one."""

    kube: Kube
    namespace: str
    name: str

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"

    def pods(self) -> list[client.V1Pod]:
        listed = self.kube.core.list_namespaced_pod(self.namespace, label_selector=self.selector)
        return [pod for pod in listed.items if pod.metadata.deletion_timestamp is None]

    def pod(self, timeout: float = 60) -> client.V1Pod:
        """The release's one pod (not being deleted), waiting for it to exist."""
        return self.kube.wait(f"a pod of {self.name}", lambda: (self.pods() or [None])[0], timeout)

    def wait_pod(
        self, what: str, check: Callable[[client.V1Pod], bool], timeout: float
    ) -> client.V1Pod:
        seen: list[client.V1Pod] = []

        def probe() -> client.V1Pod | None:
            pods = self.pods()
            if not pods:
                return None
            seen[:] = [pods[0]]
            return pods[0] if check(pods[0]) else None

        try:
            return self.kube.wait(what, probe, timeout)
        except AssertionError as exc:
            last = describe_status(seen[0]) if seen else "no pod"
            raise AssertionError(f"{exc}; last seen: {last}") from None

    def events(self, pod: client.V1Pod) -> list[client.CoreV1Event]:
        selector = f"involvedObject.uid={pod.metadata.uid}"
        listed = self.kube.core.list_namespaced_event(self.namespace, field_selector=selector)
        return list(listed.items)


def condition(pod: client.V1Pod, kind: str) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def is_ready(pod: client.V1Pod) -> bool:
    found = condition(pod, "Ready")
    return found is not None and found.status == "True"


def container_status(pod: client.V1Pod, name: str) -> client.V1ContainerStatus | None:
    statuses = [*(pod.status.container_statuses or []), *(pod.status.init_container_statuses or [])]
    return next((s for s in statuses if s.name == name), None)


def restarts(pod: client.V1Pod, name: str) -> int:
    found = container_status(pod, name)
    return found.restart_count if found is not None else 0


def describe_status(pod: client.V1Pod) -> str:
    conditions = ", ".join(f"{c.type}={c.status}" for c in pod.status.conditions or [])
    statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
    containers = ", ".join(
        f"{s.name}(ready={s.ready}, restarts={s.restart_count}, state={state_word(s)})"
        for s in statuses
    )
    return f"phase {pod.status.phase}; {conditions}; {containers}"


def state_word(status: client.V1ContainerStatus) -> str:
    if status.state.running:
        return "running"
    if status.state.terminated:
        return f"terminated({status.state.terminated.exit_code})"
    if status.state.waiting:
        return f"waiting({status.state.waiting.reason})"
    return "unknown"


@dataclass
class Kube:
    """The API server through the administrator's kubeconfig, Helm and kubectl beside it."""

    kubeconfig: Path
    api: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @property
    def discovery(self) -> client.DiscoveryV1Api:
        return client.DiscoveryV1Api(self.api)

    @staticmethod
    def wait(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g}s")
            time.sleep(every)

    @contextlib.contextmanager
    def namespace(self, prefix: str) -> Iterator[str]:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        try:
            yield name
        finally:
            with contextlib.suppress(ApiException):
                self.core.delete_namespace(name, grace_period_seconds=0)

    def install(self, namespace: str, values: dict[str, Any], name: str = "llm") -> Release:
        """`helm install` of the repository's chart, values as a user passes them."""
        with helm.Config(kubeconfig_path=self.kubeconfig, namespace=namespace) as cfg:
            cfg.install(str(CHART_DIR), name, values, namespace=namespace, timeout=60)
        return Release(self, namespace, name)

    def _kubectl(self, *args: str) -> tuple[list[str], dict[str, str]]:
        """The built kubectl's command line, and its environment, for this kubeconfig."""
        binary = cluster.kubectl_dir() / "kubectl"
        return [str(binary), *args], {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        argv, env = self._kubectl(*args)
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def follow_logs(
        self, namespace: str, pod: str, container: str, follow: bool = True
    ) -> LogFollower:
        """`kubectl logs --timestamps` of one container; with `follow`, read until it ends."""
        flags = ["-f"] if follow else []
        argv, env = self._kubectl(
            "logs", *flags, "--timestamps", "-n", namespace, pod, "-c", container
        )
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        return LogFollower(process)

    def watch_pod(self, namespace: str, name: str, timeout: float) -> Iterator[client.V1Pod]:
        """Every version of one pod until it is deleted (or the timeout)."""
        stream = watch.Watch()
        for event in stream.stream(
            self.core.list_namespaced_pod,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=int(timeout),
        ):
            yield event["object"]
            if event["type"] == "DELETED":
                stream.stop()


@dataclass
class LogFollower:
    """A `kubectl logs -f --timestamps`: each line with the runtime's time stamp."""

    process: subprocess.Popen[str]

    def wait(self, timeout: float) -> list[tuple[datetime.datetime, str]]:
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        lines = []
        for line in out.splitlines():
            stamp, _, text = line.partition(" ")
            # RFC 3339 with nanoseconds: Python's datetime takes microseconds.
            whole, _, fraction = stamp.rstrip("Z").partition(".")
            at = datetime.datetime.fromisoformat(f"{whole}.{fraction[:6].ljust(6, '0')}+00:00")
            lines.append((at, text.rstrip()))
        return lines


def task_pids() -> dict[str, int]:
    """containerd's container id -> the host pid of the container's first process."""
    listed = cluster.ctr("tasks", "ls")
    pids = {}
    for line in listed.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            pids[parts[0]] = int(parts[1])
    return pids


def signal_container(pod: client.V1Pod, name: str, sig: signal.Signals) -> int:
    """Send `sig` to a container's first process from the host; returns its pid."""
    found = container_status(pod, name)
    assert found is not None and found.container_id, (
        f"{name} has no container: {describe_status(pod)}"
    )
    container_id = found.container_id.removeprefix("containerd://")
    pid = task_pids()[container_id]
    os.kill(pid, sig)
    return pid


WORKER = "worker"
SIDECAR = "health-sidecar"

# Fast probes for the stand-in, so that a restart takes seconds: liveness fails after 2 x 1 s,
# a probe-triggered restart waits 2 s for the worker to stop, the heartbeat deadline is 3 s.
FAST_PROBES: dict[str, Any] = {
    "probes": {
        "startup": {"periodSeconds": 1, "failureThreshold": 120},
        "liveness": {
            "periodSeconds": 1,
            "failureThreshold": 2,
            "timeoutSeconds": 1,
            "terminationGracePeriodSeconds": 2,
        },
        "readiness": {"periodSeconds": 1, "failureThreshold": 1, "timeoutSeconds": 1},
    },
    "sidecar": {"heartbeat": {"enabled": True, "timeoutSeconds": 3}, "drainSeconds": 1},
    "terminationGracePeriodSeconds": 10,
}


def seconds_since(began: float) -> float:
    return round(time.monotonic() - began, 2)


def worker_running(pod: Any) -> bool:
    status = container_status(pod, WORKER)
    return status is not None and status.state.running is not None


def fast_standin_values(extra: dict[str, Any] | None = None, **env: str | float) -> dict[str, Any]:
    """The stand-in (loading 3 s, exiting at once on SIGTERM) with fast probes, and `extra`."""
    env = {"load_seconds": 3, "term_seconds": 0, **env}
    return merge(standin_values(**env), FAST_PROBES, extra or {})


def standin_release(
    kube: Kube, namespace: str, extra: dict[str, Any] | None = None, **env: str | float
) -> Release:
    """`fast_standin_values` installed, and its pod Ready."""
    release = kube.install(namespace, fast_standin_values(extra, **env))
    release.wait_pod("the stand-in's pod Ready", is_ready, 120)
    return release
