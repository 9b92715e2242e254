"""A Deployment played with `podman kube play --network host`, and what it takes to do that.

`for_podman` turns a rendered Deployment into the copy that is played. Each change stands in for
something the kubelet does and Podman 4.3 (Debian bookworm's) does not, or keeps concurrent runs
apart; nothing else of the rendering is touched:

- `restartPolicy: Never`: restarts are the test kubelet's decisions (`ContainerProber`'s
  `on_restart` restarts the worker container); Podman's own restart-on-exit would race it.
- container `ports` dropped: Podman 4.3 turns every `containerPort` into a host port mapping,
  which it refuses on the host network. On the host network the sidecar's port is the machine's
  anyway, and the test kubelet reads the probes (and their named port) from the rendering.
- the kubelet's `emptyDir` with `fsGroup`: Podman 4.3 ignores `fsGroup` and hands a new volume to
  the first container that mounts it (mode 0755). The kubelet makes an emptyDir world-writable,
  group-owned by `fsGroup` with the setgid bit, and adds `fsGroup` to every container's groups:
  an init container (root, the base image) does the first (`chown 0:GID`, `chmod 2777`) and
  `supplementalGroups: [GID]` the second.
- unique names: Podman 4.3 makes a volume named after the pod's volume, shared machine-wide by
  every pod that uses the name; the volumes (and, for `manifests/`, the Deployment) get this run's
  names, and the pod a label (`runtime.LABEL`) that `runtime.py clean` finds.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from runtime import BASE_IMAGE, LABEL, SetupError, podman, podman_env

VOLUME_SHIM = "podman-emptydir-like-kubelet"


def deployment_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [obj for obj in objs if obj["kind"] == "Deployment"]
    return found


def for_podman(deployment: dict[str, Any], run_id: str, name: str | None = None) -> dict[str, Any]:
    """The copy of a rendered Deployment that `podman kube play` runs (see the module's text)."""
    played = copy.deepcopy(deployment)
    if name is not None:
        played["metadata"]["name"] = name
    template = played["spec"]["template"]
    key, value = LABEL.split("=")
    template["metadata"].setdefault("labels", {})[key] = value
    spec = template["spec"]
    spec["restartPolicy"] = "Never"
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    for container in containers:
        container.pop("ports", None)
    renamed = {v["name"]: f"{v['name']}-{run_id}" for v in spec.get("volumes", [])}
    for volume in spec.get("volumes", []):
        volume["name"] = renamed[volume["name"]]
    for container in containers:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
    context = spec.setdefault("securityContext", {})
    group = context.get("fsGroup")
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    if group is not None and empty_dirs:
        context["supplementalGroups"] = sorted({*context.get("supplementalGroups", []), group})
        mounts = [{"name": n, "mountPath": f"/emptydir/{n}"} for n in sorted(empty_dirs)]
        dirs = " ".join(m["mountPath"] for m in mounts)
        spec["initContainers"] = [
            {
                "name": VOLUME_SHIM,
                "image": BASE_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", f"chown 0:{int(group)} {dirs} && chmod 2777 {dirs}"],
                "securityContext": {"runAsUser": 0, "runAsGroup": 0},
                "volumeMounts": mounts,
            },
            *spec.get("initContainers", []),
        ]
    return played


def with_port(deployment: dict[str, Any], old: int, new: int) -> None:
    """Move the probe port from `old` to `new` everywhere it is written (DYN_SYSTEM_PORT, the
    containers' ports, numeric probe ports): for manifests/ when its port is taken on the host."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for item in container.get("env", []):
            if item["name"] == "DYN_SYSTEM_PORT" and int(item.get("value", 0)) == old:
                item["value"] = str(new)
        for port in container.get("ports", []):
            if port["containerPort"] == old:
                port["containerPort"] = new
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = container.get(kind, {}).get("httpGet", {})
            if action.get("port") == old:
                action["port"] = new


@dataclass
class PlayedPod:
    """One played Deployment (one replica): its pod, its containers, and how to end it."""

    yaml_path: Path
    volumes: list[str]
    pod_id: str = ""
    pod_name: str = ""
    containers: dict[str, str] = field(default_factory=dict)  # container name -> podman name
    played_at: float = 0.0  # time.monotonic() as `podman kube play` began
    play_seconds: float = 0.0  # how long `podman kube play` took (the containers are started)
    down: bool = False

    @classmethod
    def play(cls, played: dict[str, Any], path: Path) -> PlayedPod:
        path.write_text(yaml.safe_dump(played, sort_keys=False))
        volumes = [v["name"] for v in played["spec"]["template"]["spec"].get("volumes", [])]
        pod = cls(path, volumes)
        pod.played_at = time.monotonic()
        done = podman("kube", "play", "--network", "host", str(path), check=False, timeout=180)
        pod.play_seconds = time.monotonic() - pod.played_at
        found = re.search(r"^Pod:\s*\n([0-9a-f]{64})", done.stdout, re.M)
        # Podman names a Deployment's pod NAME-pod-0: enough to remove what a failure left.
        pod.pod_id = found.group(1) if found else f"{played['metadata']['name']}-pod-0"
        if done.returncode != 0 or not found:
            pod.remove()
            raise SetupError(f"podman kube play failed: {done.stderr.strip()[-2000:]}")
        info = json.loads(podman("pod", "inspect", pod.pod_id).stdout)
        info = info[0] if isinstance(info, list) else info
        pod.pod_name = info["Name"]
        prefix = f"{pod.pod_name}-"
        for ctr in info["Containers"]:
            if ctr["Name"].startswith(prefix):
                pod.containers[ctr["Name"][len(prefix) :]] = ctr["Name"]
        return pod

    def name(self, container: str) -> str:
        return self.containers[container]

    def inspect(self, container: str) -> dict[str, Any]:
        found = json.loads(podman("inspect", self.name(container)).stdout)
        return dict(found[0])

    def exec(
        self, container: str, *command: str, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        extra = ["--user", user] if user else []
        return podman("exec", *extra, self.name(container), *command, check=False, timeout=60)

    def logs(self, container: str) -> str:
        done = podman("logs", self.name(container), check=False)
        return done.stdout + done.stderr

    def kill(self, container: str, signal: str) -> None:
        podman("kill", "--signal", signal, self.name(container))

    def restart(self, container: str, grace: float) -> None:
        """What the kubelet does to restart a container: SIGTERM, `grace` seconds, SIGKILL,
        then start it again (the same container: its logs go on)."""
        podman("restart", "--time", str(max(0, round(grace))), self.name(container), timeout=300)

    def follow_logs(self, container: str, path: Path) -> subprocess.Popen[bytes]:
        """`podman logs --follow` into a file: it ends when the container does, and what it
        wrote stays readable after `kube down` has removed the container."""
        with path.open("wb") as out:
            return subprocess.Popen(
                ["podman", "logs", "--follow", self.name(container)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=podman_env(),
            )

    def wait_exit(self, container: str) -> subprocess.Popen[str]:
        """`podman wait`: prints the container's exit code when it stops."""
        return subprocess.Popen(
            ["podman", "wait", self.name(container)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=podman_env(),
        )

    def stop(self, grace: float) -> subprocess.Popen[str]:
        """The pod's end as the kubelet does it: SIGTERM to every container, `grace` seconds,
        then SIGKILL (`podman pod stop --time`; Podman 4.3's `kube down` stops with a timeout
        of 0, a SIGKILL at once)."""
        return subprocess.Popen(
            ["podman", "pod", "stop", "--time", str(round(grace)), self.pod_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=podman_env(),
        )

    def kube_down(self) -> subprocess.CompletedProcess[str]:
        """`podman kube down` of the played file: removes the pod and its containers."""
        done = podman("kube", "down", str(self.yaml_path), check=False, timeout=120)
        self.down = done.returncode == 0
        return done

    def remove(self) -> None:
        """Remove the pod, its containers and its volumes, whatever state they are in."""
        if self.pod_id:
            podman("pod", "rm", "--force", "--time", "0", self.pod_id, check=False, timeout=120)
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume, check=False)
        self.down = True


def pod_exists(pod_id: str) -> bool:
    return podman("pod", "exists", pod_id, check=False).returncode == 0


def containers_of(played: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = played["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]
