"""The image and the chart's pod, run for real with Podman (issue 8).

The project's image is built from the real Dockerfile (on a local Debian base, see runtime.py);
the chart is rendered with real Helm and its Deployment run with `podman kube play --network
host`, so the sidecar runs with the rendered security context, env, volumes and command, and
answers on the machine's 127.0.0.1. The test kubelet prober (tests/chart/kubelet.py) follows the
worker container's rendered probes against it, with kubelet time divided by TIME_SCALE (every
probe period, delay and timeout, and the grace period of a probe-triggered restart; the
sidecar's own clocks, the worker's load, the heartbeat timeout and the drain run in real time).

Two pods are played: the chart with the stand-in worker (standin_worker.py, the project's client;
it can be made to hang or die) and heartbeats on, and `manifests/deployment.yaml` as it is (the
chart's example worker, a `python -c` script), its load shortened with EXAMPLE_LOAD_SECONDS.
What Podman 4.3 does differently from the kubelet, and what the played copy changes for it, is
in pods.py; the pod's end is `podman pod stop --time <terminationGracePeriodSeconds>` (the
kubelet's SIGTERM, grace, SIGKILL) then `podman kube down`, because Podman 4.3's `kube down`
stops with a timeout of 0 (SIGKILL at once).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import runtime
import yaml
from chart_render import MANIFESTS_DIR, container, env, objects, render
from kubelet import ContainerProber, Kind, Result
from pods import PlayedPod, deployment_of, for_podman, pod_exists, with_port
from runtime import podman

pytestmark = pytest.mark.container

TIME_SCALE = 10.0
LOAD_SECONDS = 4.0
HEARTBEAT_TIMEOUT = 2.0
HEARTBEAT_INTERVAL = 0.5
STANDIN_TERM_SECONDS = 7.0
WORKER, SIDECAR = "worker", "health-sidecar"
SOCKET_MODE = 0o660


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def get(port: int, path: str, timeout: float = 0.5) -> tuple[int | None, bytes]:
    """One GET on a new connection: (status, body), or (None, b"") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "kube-probe/1.31", "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None, b""
    finally:
        conn.close()


@dataclass
class Running:
    """A played pod, the rendering it came from, and the test kubelet watching its worker."""

    pod: PlayedPod
    objs: list[dict[str, Any]]  # as rendered (before the Podman changes of pods.for_podman)
    kubelet: ContainerProber
    tmp: Path
    label: str

    @property
    def worker_spec(self) -> dict[str, Any]:
        return container(self.objs, WORKER)

    @property
    def sidecar_env(self) -> dict[str, Any]:
        return env(container(self.objs, SIDECAR))

    @property
    def port(self) -> int:
        return int(self.sidecar_env["DYN_SYSTEM_PORT"])

    @property
    def drain_seconds(self) -> float:
        return float(self.sidecar_env["DYN_SIDECAR_DRAIN_SECONDS"])

    @property
    def grace(self) -> float:
        spec = deployment_of(self.objs)["spec"]["template"]["spec"]
        return float(spec.get("terminationGracePeriodSeconds", 30))

    def probe_seconds(self, kind: Kind) -> tuple[float, int]:
        """(scaled period, failureThreshold) of a worker probe."""
        spec = self.worker_spec[kind.value]
        return spec["periodSeconds"] / TIME_SCALE, int(spec["failureThreshold"])

    def logs(self) -> str:
        return (
            "\n".join(f"--- {name} ---\n{self.pod.logs(name)}" for name in (WORKER, SIDECAR))
            + f"\n--- kubelet events ---\n{self.kubelet.events}"
        )

    def wait_ready(self, timeout: float) -> None:
        assert self.kubelet.run(lambda k: k.ready, timeout=timeout), self.logs()


def play(objs: list[dict[str, Any]], tmp: Path, run_id: str, label: str, **names: str) -> Running:
    played = for_podman(deployment_of(objs), run_id, **names)
    try:
        pod = PlayedPod.play(played, tmp / "played.yaml")
    except runtime.SetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    spec = deployment_of(objs)["spec"]["template"]["spec"]
    grace = float(spec.get("terminationGracePeriodSeconds", 30)) / TIME_SCALE
    try:
        # The kubelet restarts a container as `podman restart` does: SIGTERM, the grace period
        # (scaled like the probes), SIGKILL, start again.
        kubelet = ContainerProber(
            container(objs, WORKER),
            now=pod.played_at,
            time_scale=TIME_SCALE,
            on_restart=lambda: pod.restart(WORKER, grace),
        )
    except BaseException:
        pod.remove()
        raise
    return Running(pod, objs, kubelet, tmp, label)


@pytest.fixture(scope="class")
def tmp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pod")


def ended(running: Running) -> Iterator[Running]:
    """Yield the pod; remove it, its containers and volumes afterwards, whatever happened."""
    try:
        yield running
    finally:
        running.pod.remove()
        assert not pod_exists(running.pod.pod_id)


# --- the checks, shared by both pods ---------------------------------------------------------


def check_waits_for_the_load_then_ready(running: Running, load_seconds: float) -> None:
    """Not started, not ready and never restarted while the model loads; started and ready
    after, well within the startup probe's budget (failureThreshold x periodSeconds)."""
    kubelet = running.kubelet
    kubelet.run(lambda k: False, timeout=load_seconds * 0.75)
    assert (kubelet.started, kubelet.ready, kubelet.restarts) == (False, False, 0), running.logs()
    running.wait_ready(load_seconds + 30)
    ready_at = time.monotonic()
    assert kubelet.restarts == 0, running.logs()
    assert [e.what for e in kubelet.events] == ["started", "ready"]
    started = kubelet.events[0].at - running.pod.played_at
    period, threshold = running.probe_seconds(Kind.STARTUP)
    budget = period * threshold
    assert load_seconds <= started < budget
    startup = kubelet.workers[Kind.STARTUP].attempts
    failures = [a for a in startup if a.result is Result.FAILURE]
    assert len(failures) < threshold
    # While loading, the sidecar itself answered: the live path's 503, not a refused connection.
    assert any("statuscode: 503" in a.detail for a in failures), startup
    runtime.RESULTS[f"{running.label}_kube_play_command_s"] = running.pod.play_seconds
    runtime.RESULTS[f"{running.label}_kube_play_to_ready_s"] = ready_at - running.pod.played_at
    runtime.RESULTS[f"{running.label}_startup_budget_s"] = budget * TIME_SCALE


def check_socket(running: Running, worker_uid: int) -> None:
    """The socket on the shared volume is the sidecar's, mode 0660, and the worker container
    (as its own user) can use it; a user outside the pod's group cannot."""
    path = running.sidecar_env["DYN_SIDECAR_SOCKET"]
    script = (
        "import json, os, sys; st = os.stat(sys.argv[1]); "
        "print(json.dumps([st.st_mode, st.st_uid, st.st_gid, os.getuid(), os.getgroups()]))"
    )
    done = running.pod.exec(WORKER, "python3", "-c", script, path)
    assert done.returncode == 0, done.stderr
    mode, uid, gid, worker_user, groups = json.loads(done.stdout)
    sidecar = container(running.objs, SIDECAR)["securityContext"]
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == SOCKET_MODE, oct(mode)
    assert (uid, gid) == (sidecar["runAsUser"], sidecar["runAsGroup"])
    assert worker_user == worker_uid
    assert gid in groups  # the pod's fsGroup: the only way in for another UID
    status = running.pod.exec(WORKER, "dynamo-health-sidecar", "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr  # 0: ready
    assert json.loads(status.stdout)["health"]["status"] == "ready"
    outsider = running.pod.exec(WORKER, "dynamo-health-sidecar", "status", user="4242:4242")
    assert outsider.returncode == 1 and "Permission denied" in outsider.stderr, outsider


def check_restart_after_death(running: Running) -> None:
    """SIGKILL: the kernel closes the worker's session, the live path fails, and the kubelet
    restarts the worker after failureThreshold x periodSeconds; the new worker loads again."""
    kubelet = running.kubelet
    running.wait_ready(30)
    restarts = kubelet.restarts
    killed_at = time.monotonic()
    running.pod.kill(WORKER, "KILL")
    assert kubelet.run(lambda k: k.restarts == restarts + 1, timeout=10), running.logs()
    restart = [e for e in kubelet.events if e.what == "restart"][-1]
    period, threshold = running.probe_seconds(Kind.LIVENESS)
    assert restart.at - killed_at < period * threshold + 1.0
    assert "statuscode: 503" in restart.detail
    assert "its session connection closed" in running.pod.logs(SIDECAR), running.logs()
    running.wait_ready(LOAD_SECONDS + 30)
    assert kubelet.restarts == restarts + 1


def check_stop_drains(running: Running, worker_outlives_drain: bool) -> None:
    """The pod's end as the kubelet does it: SIGTERM to every container, the grace period,
    SIGKILL (`podman pod stop --time`), then `podman kube down` removes it. The sidecar answers
    503 on the health path at once, keeps the live path while the worker lives, and exits 0
    within its drain time, saying so in its logs."""
    pod = running.pod
    running.wait_ready(30)
    health_path = running.sidecar_env["DYN_SYSTEM_HEALTH_PATH"]
    live_path = running.sidecar_env["DYN_SYSTEM_LIVE_PATH"]
    log_file = running.tmp / "sidecar.log"
    follower = pod.follow_logs(SIDECAR, log_file)
    waiter = pod.wait_exit(SIDECAR)
    time.sleep(0.5)  # both are attached before the signal
    began = time.monotonic()
    stopper = pod.stop(running.grace)
    samples: list[tuple[float, int | None, bytes, int | None]] = []
    exited_at = None
    while time.monotonic() - began < running.drain_seconds + 10:
        health, body = get(running.port, health_path)
        live, _ = get(running.port, live_path)
        samples.append((time.monotonic() - began, health, body, live))
        if waiter.poll() is not None:
            exited_at = time.monotonic() - began
            break
        time.sleep(0.05)
    exit_code = waiter.communicate(timeout=30)[0].strip()
    _, stop_err = stopper.communicate(timeout=running.grace + 30)
    follower.wait(timeout=30)
    logs = log_file.read_text()
    context = f"{samples}\n{logs}\n{stop_err}"
    assert exited_at is not None, context
    assert exit_code == "0", context
    assert stopper.returncode == 0, context
    assert "draining: " in logs and logs.rstrip().endswith("stopped"), logs
    # From the first answer that is not 200 on, the health path never says ready again.
    draining = [s for s in samples if s[1] is not None and s[1] != 200]
    first = draining[0][0] if draining else exited_at
    after = [s for s in samples if s[0] >= first and s[1] is not None]
    assert all(s[1] == 503 for s in after), context
    if worker_outlives_drain:
        assert first < 1.5, context  # at once (the signal's delivery included)
        assert all(b'"draining":true' in s[2] for s in after), context
        # The live path holds for the whole drain (a last sample may find the port closed).
        lives = [s[3] for s in after if s[3] is not None]
        assert lives and all(code == 200 for code in lives), context
        assert "draining: readiness fails, liveness holds; exiting in " in logs, logs
        assert running.drain_seconds - 0.5 <= exited_at - first <= running.drain_seconds + 1.5
    else:
        # The example worker exits on SIGTERM at once: its session closes, its life ends, and
        # the drain ends with it (so soon that a 503 may not even be seen).
        assert re.search(r"draining: the worker's life has (already )?ended", logs), logs
        assert exited_at < running.drain_seconds + 1.5, context
    runtime.RESULTS[f"{running.label}_health_503_after_sigterm_s"] = first
    runtime.RESULTS[f"{running.label}_sidecar_exit_after_sigterm_s"] = exited_at
    down = pod.kube_down()
    assert down.returncode == 0, down.stderr
    assert not pod_exists(pod.pod_id)


# --- the image -------------------------------------------------------------------------------


def test_image_has_no_compiler_no_pip_cache_and_no_build_secret(images: dict[str, str]) -> None:
    config = json.loads(podman("image", "inspect", images["project"]).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["dynamo-health-sidecar"]
    assert config["Cmd"] == ["serve"]
    assert config["User"] == "65532:65532"
    root = Path(podman("image", "mount", images["project"]).stdout.strip())
    try:
        bins = ["usr/bin", "usr/local/bin", "usr/sbin", "bin", "sbin", "opt/venv/bin"]
        compilers = [
            f"/{d}/{entry.name}"
            for d in bins
            if (root / d).is_dir()
            for entry in (root / d).iterdir()
            if re.fullmatch(r"(.*-)?(gcc|cc|c\+\+|g\+\+|clang|tcc|make)(-[\d.]+)?", entry.name)
        ]
        assert compilers == []
        found_caches = [
            str(Path(top).relative_to(root))
            for top, dirs, _files in os.walk(root)
            for name in dirs
            if name in ("pip", "pip-cache") and Path(top).name == ".cache"
        ]
        assert found_caches == []
        assert not (root / "root" / ".cache").exists()
        assert list((root / "opt" / "venv" / "lib").glob("python3*/site-packages/pip")) == []
        assert not (root / "src").exists()
        assert not (root / "run" / "secrets").exists() or not any(
            (root / "run" / "secrets").iterdir()
        )
        cert = runtime.pip_cert()
        if cert is not None:
            wanted = cert.read_bytes()
            copies = [
                str(path)
                for top, _dirs, files in os.walk(root)
                for path in (Path(top) / f for f in files)
                if path.is_file()
                and not path.is_symlink()
                and path.stat().st_size == len(wanted)
                and path.read_bytes() == wanted
            ]
            assert copies == []  # the build secret is in no layer
    finally:
        podman("image", "unmount", images["project"], check=False)
    print(f"image {images['project']}: {runtime.RESULTS['image_size_mb']} MB")


# --- the chart, with the stand-in worker -----------------------------------------------------


@pytest.fixture(scope="class")
def chart_pod(images: dict[str, str], chart: helm.Chart, tmp_dir: Path) -> Iterator[Running]:
    run_id = secrets.token_hex(3)
    project, standin = (image.rsplit(":", 1) for image in (images["project"], images["standin"]))
    values = {
        "system": {"port": free_port(), "endpoints": ["generate"]},
        "worker": {
            "image": {"repository": standin[0], "tag": standin[1], "pullPolicy": "Never"},
            "command": [],  # the stand-in image's entrypoint
            "args": [],
            "env": [
                {"name": "STANDIN_LOAD_SECONDS", "value": str(LOAD_SECONDS)},
                {"name": "STANDIN_HEARTBEAT_SECONDS", "value": str(HEARTBEAT_INTERVAL)},
                {"name": "STANDIN_TERM_SECONDS", "value": str(STANDIN_TERM_SECONDS)},
            ],
        },
        "sidecar": {
            "image": {"repository": project[0], "tag": project[1], "pullPolicy": "Never"},
            "heartbeat": {"enabled": True, "timeoutSeconds": HEARTBEAT_TIMEOUT},
        },
    }
    objs = objects(render(chart, values, name=f"dhs-ct-{run_id}"))
    yield from ended(play(objs, tmp_dir, run_id, "chart"))


class TestChartPod:
    """In order: load, the sidecar's hardening, the socket, a hang, a death, the pod's end."""

    def test_not_ready_while_loading_then_ready_within_the_startup_budget(
        self, chart_pod: Running
    ) -> None:
        check_waits_for_the_load_then_ready(chart_pod, LOAD_SECONDS)
        worker_log = chart_pod.pod.logs(WORKER)
        assert "uid 1000" in worker_log and "ready: generate" in worker_log, worker_log

    def test_sidecar_runs_as_the_chart_uid_read_only_without_capabilities(
        self, chart_pod: Running
    ) -> None:
        wanted = container(chart_pod.objs, SIDECAR)["securityContext"]
        uid, gid = wanted["runAsUser"], wanted["runAsGroup"]
        info = chart_pod.pod.inspect(SIDECAR)
        assert info["State"]["Running"]
        assert info["Config"]["User"] == f"{uid}:{gid}"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert not info["EffectiveCaps"] and not info["BoundingCaps"]
        assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
        # The running process, as the kernel sees it.
        status = Path(f"/proc/{info['State']['Pid']}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split() == [str(uid)] * 4
        assert fields["Gid"].split() == [str(gid)] * 4
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(fields[cap], 16) == 0, cap
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Seccomp"].strip() == "2"  # a filter: the runtime's default profile
        # Read-only everywhere but the shared volume, and the sidecar wrote nowhere else.
        script = (
            "import os\n"
            "for d in ('/', '/tmp', '/var/tmp', '/opt/venv'):\n"
            "    try: open(os.path.join(d, 'probe-write'), 'w')\n"
            "    except OSError as e: print(d, e.errno)\n"
            "print('tmp', sorted(os.listdir('/tmp')), sorted(os.listdir('/var/tmp')))\n"
        )
        done = chart_pod.pod.exec(SIDECAR, "python3", "-c", script)
        assert done.stdout.split("\n")[:4] == ["/ 30", "/tmp 30", "/var/tmp 30", "/opt/venv 30"]
        assert "tmp [] []" in done.stdout, done.stdout

    def test_socket_is_0660_on_the_shared_volume_and_the_worker_uses_it(
        self, chart_pod: Running
    ) -> None:
        check_socket(chart_pod, worker_uid=1000)

    def test_liveness_fails_and_restarts_a_hung_worker(self, chart_pod: Running) -> None:
        kubelet = chart_pod.kubelet
        chart_pod.wait_ready(30)
        restarts = kubelet.restarts
        hung_at = time.monotonic()
        chart_pod.pod.kill(WORKER, "USR1")  # heartbeats stop; the process and session stay
        period, threshold = chart_pod.probe_seconds(Kind.LIVENESS)
        bound = HEARTBEAT_TIMEOUT + period * threshold
        assert kubelet.run(lambda k: k.restarts == restarts + 1, timeout=bound + 10), (
            chart_pod.logs()
        )
        restart = [e for e in kubelet.events if e.what == "restart"][-1]
        assert HEARTBEAT_TIMEOUT <= restart.at - hung_at < bound + 1.0
        assert "statuscode: 503" in restart.detail
        assert "hanging: heartbeats stopped" in chart_pod.pod.logs(WORKER)
        assert f"no heartbeat for {HEARTBEAT_TIMEOUT:g}s" in chart_pod.pod.logs(SIDECAR)
        chart_pod.wait_ready(LOAD_SECONDS + 30)
        assert kubelet.restarts == restarts + 1

    def test_liveness_fails_and_restarts_a_dead_worker(self, chart_pod: Running) -> None:
        check_restart_after_death(chart_pod)

    def test_pod_stop_drains_the_sidecar_then_kube_down_removes_the_pod(
        self, chart_pod: Running
    ) -> None:
        check_stop_drains(chart_pod, worker_outlives_drain=True)


# --- manifests/, as a user applies them ------------------------------------------------------


@pytest.fixture(scope="class")
def manifests_pod(images: dict[str, str], tmp_dir: Path) -> Iterator[Running]:
    run_id = secrets.token_hex(3)
    objs = [
        doc for doc in yaml.safe_load_all((MANIFESTS_DIR / "deployment.yaml").read_text()) if doc
    ]
    deployment = deployment_of(objs)
    # The example worker's load, shortened by its own knob (the chart's worker.env).
    containers = deployment["spec"]["template"]["spec"]["containers"]
    worker = next(c for c in containers if c["name"] == WORKER)
    load = {"name": "EXAMPLE_LOAD_SECONDS", "value": str(LOAD_SECONDS)}
    worker.setdefault("env", []).append(load)
    port = int(env(container(objs, SIDECAR))["DYN_SYSTEM_PORT"])
    if not port_is_free(port):  # the host network: another program has the manifests' port
        with_port(deployment, port, free_port())
    name = f"{deployment['metadata']['name']}-ct-{run_id}"
    yield from ended(play(objs, tmp_dir, run_id, "manifests", name=name))


class TestManifestsPod:
    """manifests/deployment.yaml with the project's image: the example worker, the defaults."""

    def test_not_ready_while_loading_then_ready_within_the_startup_budget(
        self, manifests_pod: Running
    ) -> None:
        check_waits_for_the_load_then_ready(manifests_pod, LOAD_SECONDS)
        assert "ready: the generate endpoint is served" in manifests_pod.pod.logs(WORKER)

    def test_socket_is_0660_on_the_shared_volume_and_the_worker_uses_it(
        self, manifests_pod: Running
    ) -> None:
        check_socket(manifests_pod, worker_uid=65532)

    def test_liveness_fails_and_restarts_a_dead_worker(self, manifests_pod: Running) -> None:
        check_restart_after_death(manifests_pod)

    def test_pod_stop_drains_the_sidecar_then_kube_down_removes_the_pod(
        self, manifests_pod: Running
    ) -> None:
        check_stop_drains(manifests_pod, worker_outlives_drain=False)
