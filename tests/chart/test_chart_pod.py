"""The chart's pod, run for real as far as this machine allows: the rendered sidecar container
(its command and env) as a real process, the rendered example worker (its command, args and
env) as a real process, and the test kubelet prober following the worker container's rendered
probes. Kubelet time is scaled down by TIME_SCALE; the probes' logic is intact.

What the kubelet must decide: not ready and no restart while the model loads, started and ready
after, not ready but not restarted while the worker is busy, and restarted once the worker is
gone (SIGKILL), after which the new worker loads and is ready again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from chart_render import container, objects, render
from conftest import free_port, short_socket_path, start_sidecar
from kubelet import ContainerProber

TIME_SCALE = 20.0
LOAD_SECONDS = 2.0
WORKER, SIDECAR = "worker", "health-sidecar"


def env_of(spec: Mapping[str, Any], socket_path: Path) -> dict[str, str]:
    """A rendered container's literal env, with the socket moved to this test's directory."""
    values = {item["name"]: item["value"] for item in spec.get("env", []) if "value" in item}
    values["DYN_SIDECAR_SOCKET"] = str(socket_path)
    return values


class Pod:
    """The two rendered containers as processes; the worker can be killed and restarted."""

    def __init__(self, objs: list[dict[str, Any]], tmp_path: Path) -> None:
        self.worker_spec = container(objs, WORKER)
        self.sidecar_spec = container(objs, SIDECAR)
        self.socket_path = short_socket_path()
        self.tmp_path = tmp_path
        self.sidecar = start_sidecar(tmp_path, env_of(self.sidecar_spec, self.socket_path))
        assert self.sidecar_spec["args"] == ["serve"]
        self.workers: list[subprocess.Popen[bytes]] = []
        self.start_worker()

    @property
    def worker(self) -> subprocess.Popen[bytes]:
        return self.workers[-1]

    def start_worker(self) -> None:
        spec = self.worker_spec
        command = [sys.executable if spec["command"][0] == "python" else spec["command"][0]]
        env = {
            **os.environ,
            **env_of(spec, self.socket_path),
            "EXAMPLE_LOAD_SECONDS": str(LOAD_SECONDS),
        }
        self.workers.append(
            subprocess.Popen(
                [*command, *spec["command"][1:], *spec["args"]],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(self.tmp_path / f"worker-{len(self.workers)}.log").open("wb"),
            )
        )

    def kill_worker(self) -> None:
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=5)

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=5)
        self.sidecar.stop(signal.SIGKILL)


@pytest.fixture
def pod(chart: Any, tmp_path: Path) -> Iterator[Pod]:
    values = {"system": {"port": free_port(), "endpoints": ["generate"]}}
    running = Pod(objects(render(chart, values)), tmp_path)
    yield running
    running.close()


def test_pod_kubelet_waits_for_the_load_then_restarts_only_a_dead_worker(pod: Pod) -> None:
    began = time.monotonic()
    kubelet = ContainerProber(
        pod.worker_spec, now=began, time_scale=TIME_SCALE, on_restart=pod.start_worker
    )

    # Loading: neither started nor ready, and never restarted.
    kubelet.run(lambda k: False, timeout=LOAD_SECONDS * 0.75)
    assert (kubelet.started, kubelet.ready, kubelet.restarts) == (False, False, 0)

    # Loaded: started, then ready, within a few (scaled) probe periods.
    assert kubelet.run(lambda k: k.ready, timeout=LOAD_SECONDS + 3.0)
    assert kubelet.restarts == 0
    assert [e.what for e in kubelet.events] == ["started", "ready"]

    # Busy: the worker withdraws generate. Not ready, and not restarted.
    pod.sidecar.control("POST", "/v1/endpoints/generate/notready")
    assert kubelet.run(lambda k: not k.ready, timeout=3.0)
    kubelet.run(lambda k: k.restarts > 0, timeout=1.5)
    assert kubelet.restarts == 0
    pod.sidecar.control("POST", "/v1/endpoints/generate/ready")
    assert kubelet.run(lambda k: k.ready, timeout=3.0)

    # Dead: SIGKILL closes its session; liveness fails three times, then a restart.
    killed_at = time.monotonic()
    pod.kill_worker()
    assert kubelet.run(lambda k: k.restarts == 1, timeout=5.0)
    restart = next(e for e in kubelet.events if e.what == "restart")
    liveness = pod.worker_spec["livenessProbe"]
    bound = liveness["failureThreshold"] * liveness["periodSeconds"] / TIME_SCALE
    assert restart.at - killed_at < bound + 1.0
    assert "503" in restart.detail

    # The restarted worker loads again, and the kubelet sees it through to ready.
    assert kubelet.run(lambda k: k.ready, timeout=LOAD_SECONDS + 4.0)
    assert kubelet.restarts == 1
    assert pod.sidecar.probe("/live").json()["live"] is True
