"""The process watch in a real sidecar: a real worker process, found, measured and killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from conftest import Sidecar, wait_until


@pytest.fixture
def worker() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    marker = f"fake-worker-{uuid.uuid4().hex}"
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    yield process, marker
    if process.poll() is None:
        process.kill()
    process.wait(timeout=5)


def watched_sidecar(run_sidecar: Callable[..., Sidecar], marker: str, **env: str) -> Sidecar:
    return run_sidecar(
        {
            "DYN_SIDECAR_WATCH_PROCESS": marker,
            "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "generate",
            **env,
        }
    )


def found(sidecar: Sidecar, pid: int) -> bool:
    return sidecar.control("GET", "/v1/worker").json()["pid"] == pid


def test_watch_sigkilled_worker_fails_the_live_path_within_a_second(
    run_sidecar: Callable[..., Sidecar], worker: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, marker = worker
    sidecar = watched_sidecar(run_sidecar, marker)
    assert wait_until(lambda: found(sidecar, process.pid), timeout=3.0)
    sidecar.control("POST", "/v1/endpoints/generate/ready")
    assert sidecar.probe("/live").status_code == 200
    killed_at = time.monotonic()
    process.send_signal(signal.SIGKILL)
    assert wait_until(lambda: sidecar.probe("/live").status_code == 503, timeout=3.0)
    assert time.monotonic() - killed_at < 1.0
    body = sidecar.probe("/live").json()
    assert body["reason"] == f"worker life 1 ended: its process {process.pid} exited"
    assert body["endpoints"] == {"generate": "notready"}


def test_watch_reports_the_workers_pid_cpu_and_memory(
    run_sidecar: Callable[..., Sidecar], worker: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, marker = worker
    sidecar = watched_sidecar(run_sidecar, marker)
    assert wait_until(lambda: found(sidecar, process.pid), timeout=3.0)
    info = sidecar.control("GET", "/v1/worker").json()["process"]
    assert info["pid"] == process.pid
    assert info["rss_bytes"] > 1_000_000
    assert marker in info["cmdline"]
    metrics = sidecar.probe("/metrics").text
    assert f"dynamo_sidecar_worker_pid {float(process.pid)}" in metrics
    assert "dynamo_sidecar_worker_resident_memory_bytes " in metrics
    assert "dynamo_sidecar_worker_cpu_percent " in metrics


def test_watch_new_worker_process_begins_a_new_life(
    run_sidecar: Callable[..., Sidecar], worker: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, marker = worker
    sidecar = watched_sidecar(run_sidecar, marker)
    assert wait_until(lambda: found(sidecar, process.pid), timeout=3.0)
    process.kill()
    process.wait(timeout=5)
    assert wait_until(lambda: sidecar.probe("/live").status_code == 503, timeout=3.0)
    second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
    try:
        assert wait_until(lambda: found(sidecar, second.pid), timeout=3.0)
        assert sidecar.control("GET", "/v1/worker").json()["life"] == 2
    finally:
        second.kill()
        second.wait(timeout=5)


def test_watch_drain_ends_when_the_watched_worker_exits(
    run_sidecar: Callable[..., Sidecar], worker: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, marker = worker
    sidecar = watched_sidecar(run_sidecar, marker, DYN_SIDECAR_DRAIN_SECONDS="30")
    assert wait_until(lambda: found(sidecar, process.pid), timeout=3.0)
    sidecar.process.send_signal(signal.SIGTERM)
    assert wait_until(lambda: sidecar.probe("/health").json().get("draining") is True)
    process.send_signal(signal.SIGTERM)
    assert sidecar.process.wait(timeout=5) == 0


def test_watch_state_file_of_a_gone_process_is_from_another_life(
    run_sidecar: Callable[..., Sidecar], worker: tuple[subprocess.Popen[bytes], str]
) -> None:
    process, marker = worker
    first = watched_sidecar(run_sidecar, marker)
    assert wait_until(lambda: found(first, process.pid), timeout=3.0)
    first.control("POST", "/v1/endpoints/generate/ready")
    state_file = first.socket_path.with_name("health.state.json")
    assert wait_until(lambda: state_file.exists() and b'"ready"' in state_file.read_bytes())
    first.stop(signal.SIGKILL)
    process.kill()
    process.wait(timeout=5)
    second = watched_sidecar(run_sidecar, marker, DYN_SIDECAR_SOCKET=str(first.socket_path))
    assert second.probe("/health").json()["endpoints"] == {"generate": "notready"}
    assert f"it is from another worker life (process {process.pid} is gone)" in second.logs()
